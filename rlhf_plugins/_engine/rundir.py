"""The run directory ``runs/<recipe>/``, the one owner of its layout: each stage's
``stage_state.json`` and ``resolved_stage.json``, checkpoint directories and their completion
markers, atomic JSON writes, listing runs (``rlhf runs``) and clearing a stage directory."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.console import format_metrics
from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.runlock import lock_holder

CHECKPOINT_PREFIX = "checkpoint-"


CHECKPOINT_MARKER = "checkpoint_complete.json"


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename, so a reader
    sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` directory."""
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


STATE_FILE = "stage_state.json"


METRICS_FILE = "metrics.jsonl"
"""Each stage's metrics, one JSON record per logged step."""

RESOLVED_FILE = "resolved_stage.json"


RESUMABLE = ("running", "interrupted", "failed")


def read_state(stage_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((stage_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(stage_dir: Path, state: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(stage_dir / STATE_FILE, state)


def record_stop(stage_dir: Path, state: dict[str, Any]) -> None:
    """Record how a stage stopped, if the disk lets us: on a full disk the state stays
    ``running``, which resumes the same way."""
    with contextlib.suppress(OSError):
        write_state(stage_dir, state)


def clear_stage_dir(out: Path) -> None:
    """Make ``out`` an empty stage directory. Only a directory this project made (it holds a
    state file) is ever emptied; anything else there stops the run with a ``UserError``."""
    if out.is_symlink():
        raise UserError(
            f"{out} is a symbolic link; rlhf neither writes through nor deletes links. "
            "Remove the link or set recipe.output_dir to another directory"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a stage directory; move it away")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not (out / STATE_FILE).is_file():
        raise UserError(
            f"{out} holds files that rlhf did not write (no {STATE_FILE}); it will not delete "
            "them: move them away or set recipe.output_dir to another directory"
        )
    shutil.rmtree(out)
    out.mkdir(parents=True)


def stage_states(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The stage directories of a run (those with a state file) with their states, in the
    recipe's order (each state records its stage's ``position`` in the recipe that last ran
    it); stages without one come last, in the order they started."""
    found = [(p, read_state(p)) for p in run_dir.iterdir() if (p / STATE_FILE).is_file()]

    def order(pair: tuple[Path, dict[str, Any]]) -> tuple[float, float, str]:
        position = pair[1].get("position")
        known = isinstance(position, int) and not isinstance(position, bool)
        return (position if known else math.inf, pair[1].get("started_at") or 0, pair[0].name)

    return sorted(found, key=order)


def run_overview(directory: Path) -> list[tuple[str, str, str, str, str, str]]:
    """One row per stage of every run under ``directory``: run, stage, status (``running
    (pid N)`` for a live run, ``killed, resumes`` for a stage left running by a dead one),
    steps, wall time and the first final metrics."""
    rows = []
    for run_dir in sorted(p for p in directory.glob("*") if p.is_dir()):
        holder = lock_holder(run_dir)
        for stage_dir, state in stage_states(run_dir):
            status = state.get("status", "?")
            if status == "running":
                status = f"running (pid {holder['pid']})" if holder else "killed, resumes"
            metrics = state.get("metrics") or {}
            seconds = state.get("seconds")
            rows.append(
                (
                    run_dir.name,
                    stage_dir.name,
                    status,
                    str(metrics.get("steps", "-")),
                    f"{seconds:.0f}s" if isinstance(seconds, (int, float)) else "-",
                    format_metrics({k: v for k, v in metrics.items() if k != "steps"}, 3),
                )
            )
    return rows


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it came from says the disk (or quota) is full;
    torch's writer reports it only as an ``unexpected pos`` failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "unexpected pos" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"
