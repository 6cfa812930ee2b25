"""The running stage, as trainers and evaluators see it.

Imports of torch and accelerate happen inside methods, never at import time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from rlhf_plugins.settings import LocalPath, Settings, problems_of

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


MULTI_MACHINE_PORT = 29500
"""The port of the main machine when several machines run and none is given (Accelerate's)."""


class Machines(Settings):
    """The machines and processes of a run: the part of ``[launch]`` that an Accelerate
    config file can supply instead."""

    num_processes: int = Field(
        1,
        ge=1,
        description="processes (ranks) in all, across every machine as in accelerate launch: "
        "num_machines x the processes on each",
    )
    num_machines: int = Field(1, ge=1, description="machines (nodes) the processes run on")
    machine_rank: int = Field(
        0,
        ge=0,
        description="this machine's rank, 0 to num_machines - 1 (0: the main machine); it "
        "differs per machine: rlhf run --machine-rank N",
    )
    main_process_ip: str | None = Field(
        None,
        description="address of machine rank 0 that every machine reaches (needed when "
        "num_machines > 1)",
    )
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=f"port on machine rank 0 (default: a free port on one machine, "
        f"{MULTI_MACHINE_PORT} on several)",
    )

    def topology_problems(self) -> list[str]:
        """What is wrong across the fields (checked on the merge with a config file)."""
        problems = []
        if self.machine_rank >= self.num_machines:
            problems.append(
                f"machine_rank ({self.machine_rank}) must be less than num_machines "
                f"({self.num_machines}): machines are ranked 0 to {self.num_machines - 1}"
            )
        if self.num_processes % self.num_machines:
            problems.append(
                f"num_processes ({self.num_processes}) counts the processes of every machine "
                f"and must be a multiple of num_machines ({self.num_machines})"
            )
        if self.num_machines > 1 and not self.main_process_ip:
            problems.append(
                f"num_machines = {self.num_machines} needs main_process_ip, the address of "
                "machine rank 0 that every machine reaches"
            )
        return problems

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines


class LaunchConfig(Machines):
    """``[launch]``: how many processes on how many machines, precision, an optional DeepSpeed
    config or Accelerate config file.

    With ``config_file`` the file supplies the ``Machines`` fields that ``[launch]`` leaves
    unset, and a field the recipe (or ``--set``, ``--num-processes``, ``--machine-rank``) sets
    wins over the file, as a flag wins over the file on Accelerate's command line;
    ``resolved()`` is that merge. Precision and DeepSpeed are read by the stages, so they come
    from ``[launch]`` only. No ``[launch]`` field enters a stage's hash: machines with
    different ``machine_rank`` (or config files) run the same stages."""

    config_file: LocalPath | None = Field(
        None,
        description="an Accelerate config file (YAML), relative to the recipe, passed to "
        "accelerate launch --config_file; fields set here win over it",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="autocast precision of every stage"
    )
    deepspeed: LocalPath | None = Field(
        None, description="a DeepSpeed config file (JSON), relative to the recipe"
    )

    @model_validator(mode="after")
    def _machines_fit(self) -> LaunchConfig:
        try:
            problems = self.config_file_problems() or self.resolved().topology_problems()
        except ValueError as exc:
            problems = [str(exc)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def accelerate_file(self) -> dict[str, Any]:
        """The Accelerate config file's settings ({} without one); ``ValueError`` when it is
        not a YAML (or JSON) mapping."""
        if self.config_file is None:
            return {}
        import yaml

        try:
            data = yaml.safe_load(self.config_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(
                f"cannot read the Accelerate config file {self.config_file}: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.config_file} is not an Accelerate config (a YAML mapping)")
        return data

    def config_file_problems(self) -> list[str]:
        """What in the Accelerate config file contradicts how the stages run."""
        data = self.accelerate_file()
        name = self.config_file.name if self.config_file else ""
        kind = str(data.get("distributed_type", "")).upper()
        problems = []
        if kind == "DEEPSPEED" or "deepspeed_config" in data:
            problems.append(
                f"{name} configures DeepSpeed; set [launch] deepspeed to a DeepSpeed config "
                "instead (the stages build their DeepSpeed engine from it)"
            )
        elif kind in ("FSDP", "MEGATRON_LM"):
            problems.append(f"{name}: distributed_type {kind} is not supported by the stages")
        file_precision = data.get("mixed_precision", self.mixed_precision)
        if file_precision is False:  # YAML reads an unquoted `no` as false
            file_precision = "no"
        if file_precision != self.mixed_precision:
            problems.append(
                f"{name} sets mixed_precision = {file_precision!r} but [launch] has "
                f"{self.mixed_precision!r}; the stages read [launch]: set it there"
            )
        return problems

    def resolved(self) -> LaunchConfig:
        """This ``[launch]`` with the ``Machines`` fields it leaves unset taken from the
        Accelerate config file (itself without one); ``ValueError`` naming the file's bad
        values."""
        data = self.accelerate_file()
        taken = {
            key: data[key]
            for key in Machines.model_fields
            if key not in self.model_fields_set and data.get(key) is not None
        }
        if not taken:
            return self
        try:
            machines = Machines.model_validate(taken)
        except ValidationError as exc:
            problems = "; ".join(f"{key}: {message}" for key, message in problems_of(exc, Machines))
            raise ValueError(f"{self.config_file}: {problems}") from None
        return self.model_copy(update=machines.model_dump(include=set(taken)))


class LoggingConfig(Settings):
    """``[logging]``: ``metrics.jsonl`` is always written; ``loggers`` adds others."""

    loggers: list[dict[str, Any]] = Field(
        [],
        description='logger components, e.g. [{ use = "tensorboard" }, { use = "wandb" }]',
    )


def process_index() -> int:
    return int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_index() == 0


def wait_for_everyone() -> None:
    """A barrier across ranks when running under a launcher; a no-op otherwise."""
    if num_processes() > 1:
        process_state().wait_for_everyone()


def checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` directory."""
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def deepspeed_launched() -> bool:
    """True in a rank that ``accelerate launch --use_deepspeed`` started."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def process_state() -> Any:
    """Accelerate's ``PartialState`` for this rank, configured once.

    Without CUDA, ranks need it spelled out: plain ranks get ``cpu=True`` (otherwise each sees a
    single process and collectives do nothing), DeepSpeed ranks get a gloo process group
    (otherwise Accelerate counts one process and DeepSpeed's batch-size check fails).
    """
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        return PartialState()
    if deepspeed_launched():
        return PartialState(backend="gloo")
    return PartialState(cpu=True)


def forget_stage_configuration() -> None:
    """Forget what the stage that just ended configured in Accelerate and transformers, keeping
    the process group: the accelerator state (its DeepSpeed plugin, mixed precision), the
    gradient-accumulation state and the DeepSpeed config registered with transformers. The
    next stage in this process then configures its own; otherwise Accelerate refuses a second
    accelerator with a DeepSpeed plugin, and a ZeRO-3 registration left behind would make
    every later ``from_pretrained`` partition its model. Uses Accelerate's
    ``AcceleratorState._reset_state`` / ``GradientState._reset_state`` (what its own tests
    call between accelerators); a no-op before accelerate is imported."""
    if "accelerate" not in sys.modules:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if "transformers" in sys.modules:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def free_memory() -> None:
    """Collect the objects of a stage that has returned (a DeepSpeed engine holds reference
    cycles, so its memory would wait for the cyclic collector) and hand CUDA's cached blocks
    back, so the next stage in this process starts with the device's memory free."""
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class StageContext:
    """What a trainer or evaluator gets when its stage runs.

    ``output_dir`` is ``runs/<recipe>/<stage>/``: write the final ``save_pretrained`` output
    there and checkpoints under ``checkpoint-<step>/``. ``inputs`` maps each stage this one needs
    to its output directory. ``resume`` is True when the same stage, unchanged, was interrupted
    earlier: trainers continue from ``latest_checkpoint()``. ``components`` holds the built
    components of this stage by slot name. ``recipe_dir`` is where relative input paths start.
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

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

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
        line every half minute in a log (``rlhf_plugins.console``)."""
        from rlhf_plugins.console import progress_bar

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
