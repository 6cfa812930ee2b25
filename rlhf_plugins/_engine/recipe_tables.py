"""The fixed tables of a recipe besides its stages: ``[recipe]`` (``RecipeHead``), ``[launch]``
(``LaunchConfig``: processes, machines, DeepSpeed, mixed precision) and ``[logging]``
(``LoggingConfig``), each one settings model that validation, the schema and the docs read."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from rlhf_plugins._engine.settings import LocalPath, Settings
from rlhf_plugins._engine.typecheck import problems_of

STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
"""A stage or recipe name: it becomes a directory name."""

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


class RecipeHead(Settings):
    """``[recipe]``: the recipe's name, seed and where its runs go."""

    name: str | None = Field(
        None,
        description="the run directory's name: letters, digits, '_', '-', '.' (default: the file name)",
    )
    seed: int = Field(42, description="the random seed every stage starts from")
    output_dir: str = Field("runs", description="where runs/<name>/<stage>/ go")
    description: str = Field("", description="one line about the recipe")
    requires: str = Field(
        "", description="what it takes to run, for rlhf recipes (e.g. '2 CPU cores, 1 min')"
    )

    @field_validator("name")
    @classmethod
    def _a_directory_name(cls, name: str | None) -> str | None:
        if name is not None and not STAGE_NAME.match(name):
            raise ValueError(f"must be a name of letters, digits, '_', '-', '.', got {name!r}")
        return name
