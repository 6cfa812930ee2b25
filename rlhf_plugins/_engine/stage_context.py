"""The running stage, as trainers and evaluators see it.

Imports of torch and accelerate happen inside methods, never at import time.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.ranks import is_main_process, num_processes, process_index, process_state
from rlhf_plugins._engine.recipe_tables import LaunchConfig, LoggingConfig
from rlhf_plugins._engine.rundir import (
    CHECKPOINT_MARKER,
    CHECKPOINT_PREFIX,
    METRICS_FILE,
    checkpoint_step,
    write_json_atomically,
)


@dataclass
class StageContext:
    """What a trainer or evaluator gets when its stage runs.

    ``output_dir`` is ``runs/<recipe>/<stage>/``: write the final ``save_pretrained`` output
    there and checkpoints under ``checkpoint-<step>/``. ``inputs`` maps each stage this one needs
    to its output directory. ``resume`` is True when the same stage, unchanged, was interrupted
    earlier: trainers continue from ``latest_checkpoint()``. ``components`` holds the built
    components of this stage by slot name, ``registered`` what each declared. ``recipe_dir`` is where relative input paths start.
    """

    recipe_name: str
    name: str
    output_dir: Path
    seed: int
    config: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resume: bool = False
    components: dict[str, Any] = field(default_factory=dict)
    recipe_dir: Path | None = None
    hooks: Any = field(default=None, repr=False)
    """The lifecycle hooks (``Registry.hooks``); None outside a run."""
    registered: dict[str, Any] = field(default_factory=dict)
    """What the component of each single-component slot declared at registration, by slot
    name (``rlhf_plugins._engine.registry.Component``: ``kind``, ``name``, ``origin``, and its
    flags such as ``needs_critic``)."""
    _accelerator: Any = field(default=None, repr=False)
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def is_main_process(self) -> bool:
        return is_main_process()

    @property
    def process_index(self) -> int:
        return process_index()

    @property
    def num_processes(self) -> int:
        return num_processes()

    def local_path(self, value: str) -> Path | None:
        """``value`` as an existing local path, relative paths taken from the recipe's
        directory; None when nothing is there (e.g. a setting that also accepts a hub id)."""
        path = Path(value).expanduser()
        if not path.is_absolute() and self.recipe_dir is not None:
            path = self.recipe_dir / path
        return path.resolve() if path.exists() else None

    def local_or_hub(self, value: str | None) -> str | None:
        """A setting that names a local path or a hub id: the local path (see ``local_path``)
        when one is there, else ``value`` unchanged; None stays None."""
        if not value:
            return value
        return str(self.local_path(value) or value)

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one record to ``metrics.jsonl`` and pass it to the ``rlhf_metrics_logged``
        hook (loggers); main process only. Non-finite floats are written as null."""
        if not self.is_main_process:
            return
        record: dict[str, Any] = {"step": step, "time": round(time.monotonic() - self._started, 3)}
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            record[key] = value
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.hooks is not None:
            self.hooks.rlhf_metrics_logged(stage=self, step=step, metrics=record)

    def evaluation_written(self, path: Path, metrics: Mapping[str, Any]) -> None:
        """Tell the ``rlhf_evaluation_written`` hook that ``path`` holds this stage's
        evaluation results (headline ``metrics``); main process only."""
        if self.is_main_process and self.hooks is not None:
            self.hooks.rlhf_evaluation_written(stage=self, path=path, metrics=dict(metrics))

    def progress(
        self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = ""
    ) -> Any:
        """The stage's progress bar, shown on the main process only: tqdm on a terminal, a
        line every half minute in a log (``rlhf_plugins._engine.console``)."""
        from rlhf_plugins._engine.console import progress_bar

        return progress_bar(
            iterable,
            total=total,
            desc=f"{self.name}: {desc}".rstrip(": "),
            enabled=self.is_main_process,
        )

    def checkpoint_dir(self, step: int) -> Path:
        return self.output_dir / f"{CHECKPOINT_PREFIX}{step}"

    def _checkpoint_dirs(self) -> list[Path]:
        """Every ``checkpoint-<step>`` directory, complete or not, oldest step first."""
        found = [
            p
            for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        ]
        return sorted(found, key=checkpoint_step)

    def checkpoints(self) -> list[Path]:
        """The complete ``checkpoint-<step>`` directories (those holding the completion
        marker that ``complete_checkpoint`` writes last), oldest step first."""
        return [p for p in self._checkpoint_dirs() if (p / CHECKPOINT_MARKER).is_file()]

    def latest_checkpoint(self) -> Path | None:
        """The highest-numbered complete checkpoint, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def complete_checkpoint(self, path: Path, state: Mapping[str, Any] | None = None) -> None:
        """Mark ``path`` complete (main process only; call it once every file of the checkpoint
        is written, on every rank). The marker records the step, the size of
        ``metrics.jsonl`` at this point (a resume trims the file back to it) and ``state``,
        the trainer's own counters, returned by ``checkpoint_state``."""
        if not self.is_main_process:
            return
        size = self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0
        marker = {
            "step": checkpoint_step(path),
            "metrics_bytes": size,
            "state": dict(state or {}),
        }
        write_json_atomically(path / CHECKPOINT_MARKER, marker)
        if self.hooks is not None:
            self.hooks.rlhf_checkpoint_saved(stage=self, path=path, step=marker["step"])

    @staticmethod
    def checkpoint_state(path: Path) -> dict[str, Any]:
        """The ``state`` that ``complete_checkpoint`` recorded for the checkpoint ``path``."""
        return json.loads((path / CHECKPOINT_MARKER).read_text())["state"]

    def save_checkpoint(
        self, accelerator: Any, step: int, state: Mapping[str, Any], keep: int | None
    ) -> Path:
        """``accelerator.save_state`` into ``checkpoint-<step>/`` plus the trainer's ``state``
        (JSON), marked complete only after every rank has written its part; then keeps the
        newest ``keep`` complete checkpoints (None: all). Every rank calls it."""
        path = self.checkpoint_dir(step)
        if self.is_main_process and path.exists():
            shutil.rmtree(path)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        self.complete_checkpoint(path, state)
        if keep is not None:
            self.prune_checkpoints(keep)
        accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, accelerator: Any) -> tuple[int, dict[str, Any]] | None:
        """When the stage resumes from a complete checkpoint: load it into ``accelerator``'s
        objects and return ``(step, state)``; otherwise None."""
        path = self.latest_checkpoint() if self.resume else None
        if path is None:
            return None
        accelerator.load_state(str(path))
        return checkpoint_step(path), self.checkpoint_state(path)

    def prepare_resume(self) -> tuple[Path | None, list[Path]]:
        """Before a resumed stage starts (main process): drop the incomplete checkpoints (a kill
        or a full disk during a save) and trim ``metrics.jsonl`` to what was logged up to the
        newest complete checkpoint (all of it goes when there is none). Returns that
        checkpoint and the removed directories."""
        chosen = self.latest_checkpoint()
        removed = [p for p in self._checkpoint_dirs() if not (p / CHECKPOINT_MARKER).is_file()]
        for path in removed:
            shutil.rmtree(path)
        keep = (
            json.loads((chosen / CHECKPOINT_MARKER).read_text())["metrics_bytes"] if chosen else 0
        )
        if self.metrics_path.is_file():
            with self.metrics_path.open("r+b") as f:
                f.truncate(keep)
        return chosen, removed

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` (at least one) complete checkpoints, and every
        incomplete one older than the newest complete one; main process only."""
        if not self.is_main_process:
            return
        found = self.checkpoints()
        for old in found[: max(0, len(found) - max(keep, 1))]:
            shutil.rmtree(old, ignore_errors=True)
        if found:
            newest = checkpoint_step(found[-1])
            for path in self._checkpoint_dirs():
                step = checkpoint_step(path)
                if step < newest and not (path / CHECKPOINT_MARKER).is_file():
                    shutil.rmtree(path, ignore_errors=True)

    @cached_property
    def device(self) -> Any:
        """The torch device for this rank (the accelerator's when one exists)."""
        return process_state().device

    def accelerator(self, **kwargs: Any) -> Any:
        """An ``accelerate.Accelerator`` configured from ``[launch]`` (mixed precision,
        DeepSpeed; without CUDA it runs on a gloo process group). Created once per stage;
        ``kwargs`` (e.g. ``gradient_accumulation_steps``) apply on the first call."""
        if self._accelerator is not None:
            return self._accelerator
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin

        process_state()
        plugin = None
        if self.launch.deepspeed is not None:
            plugin = DeepSpeedPlugin(hf_ds_config=str(self.launch.deepspeed))
        self._accelerator = Accelerator(
            mixed_precision=self.launch.mixed_precision,
            deepspeed_plugin=plugin,
            cpu=plugin is None and not torch.cuda.is_available(),
            **kwargs,
        )
        return self._accelerator
