"""A quiet console for ``rlhf run``: one line per stage start and end, one progress bar per
stage, a summary table at the end. Library progress bars and known-noise warnings are off
unless ``rlhf run -v`` (``RLHF_VERBOSE=1``, inherited by launched ranks).

When stderr is not a terminal (a log file, a CI job), a progress bar becomes one line every
``LINE_SECONDS`` seconds instead of a stream of carriage returns.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

VERBOSE_ENV = "RLHF_VERBOSE"
LINE_SECONDS = 30.0
QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}
"""Environment that silences the libraries' bars and advice (read when they are imported);
``TQDM_DISABLE`` only changes tqdm's default, so the stage bars (``disable=`` given) stay."""
NOISY_LOGGERS = ("DeepSpeed", "accelerate", "torch.distributed", "datasets", "transformers")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    """Turn off library progress bars, advisory warnings and INFO chatter for this process
    and the ranks it launches, unless verbose. Call it before the libraries are imported."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def cpu_only_deepspeed() -> None:
    """Tell DeepSpeed it runs on the CPU when there is no CUDA, instead of letting it warn
    that it found no accelerator."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


class LineProgress:
    """A progress bar for a non-terminal: ``desc: n/total (rate/s, ETA), postfix`` every
    ``LINE_SECONDS`` seconds and when it closes. Implements the part of tqdm's interface
    that trainers use (``update``, ``set_postfix``, ``close``, iteration, context)."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, stream: Any):
        self.iterable, self.total, self.desc, self.stream = iterable, total, desc, stream
        self.n, self.postfix = 0, ""
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LINE_SECONDS:
            self.write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        line = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
        line += f" ({rate:.2f}/s"
        if self.total and rate > 0:
            line += f", ETA {max(0.0, (self.total - self.n) / rate):.0f}s"
        line += ")" + (f", {self.postfix}" if self.postfix else "")
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.n:
            self.write()
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable | None, *, total: int | None, desc: str, enabled: bool) -> Any:
    """tqdm on a terminal, ``LineProgress`` elsewhere; a disabled tqdm when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = sys.stderr
    if enabled and not stream.isatty():
        return LineProgress(iterable, total, desc, stream)
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def table_lines(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False
) -> list[str]:
    """``rows`` under ``header``, columns padded to align: for a terminal two spaces between
    columns and the last one unpadded; with ``markdown`` a ``| a | b |`` table with its
    ``---`` row. Every table the CLI and the benches print goes through here."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if markdown:
        return [
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            for row in [cells[0], ["-" * w for w in widths], *cells[1:]]
        ]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1]
        for row in cells
    ]


def summary_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Lines of the end-of-run table: stage, status, wall time, key figures."""
    return table_lines(("stage", "status", "time", "key figures"), rows)


def format_metrics(metrics: Mapping[str, Any], most: int = 8) -> str:
    parts = []
    for key, value in list(metrics.items())[:most]:
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)
