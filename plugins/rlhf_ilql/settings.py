"""The ``ilql`` trainer's settings as one value, checked before anything heavy is imported.

The defaults live in the factory's signature (``rlhf_ilql.ilql_trainer``), the one place a
recipe reads them from; this module only holds and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rlhf_plugins import UserError


@dataclass(frozen=True)
class ILQLSettings:
    tau: float
    gamma: float
    cql_scale: float
    awac_scale: float
    awac_beta: float
    alpha: float
    target_sync_steps: int
    two_qs: bool
    num_layers_unfrozen: int
    normalize_rewards: bool
    learning_rate: float
    min_learning_rate: float
    lr_scheduler_type: str
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    weight_decay: float
    max_grad_norm: float | None
    num_train_epochs: float
    max_steps: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    max_length: int | None
    logging_steps: int
    eval_steps: int | None
    save_steps: int
    save_total_limit: int | None

    @classmethod
    def from_values(cls, values: dict) -> ILQLSettings:
        """The settings among ``values`` (a factory's ``locals()``); raise one ``UserError``
        listing every out-of-range value."""
        settings = cls(**{f.name: values[f.name] for f in fields(cls)})
        problems = settings.problems()
        if problems:
            raise UserError("ilql trainer settings:\n" + "\n".join(f"  - {p}" for p in problems))
        return settings

    def problems(self) -> list[str]:
        problems = []
        intervals = (
            ("tau", "(", ")"),
            ("alpha", "(", "]"),
            ("gamma", "[", "]"),
            ("adam_beta1", "[", ")"),
            ("adam_beta2", "[", ")"),
        )
        for name, left, right in intervals:
            value = getattr(self, name)
            above = value >= 0 if left == "[" else value > 0
            below = value <= 1 if right == "]" else value < 1
            if not (above and below):
                problems.append(f"'{name}' must be in {left}0, 1{right}, got {value}")
        for name in (
            "target_sync_steps",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "logging_steps",
            "save_steps",
        ):
            if getattr(self, name) < 1:
                problems.append(f"'{name}' must be at least 1, got {getattr(self, name)}")
        for name in (
            "cql_scale",
            "awac_scale",
            "learning_rate",
            "min_learning_rate",
            "weight_decay",
            "adam_epsilon",
            "num_train_epochs",
        ):
            if getattr(self, name) < 0:
                problems.append(f"'{name}' must not be negative, got {getattr(self, name)}")
        if self.num_layers_unfrozen < -1:
            problems.append(
                f"'num_layers_unfrozen' must be -1 (all) or more, got {self.num_layers_unfrozen}"
            )
        if self.max_length is not None and self.max_length < 2:
            problems.append(f"'max_length' must be at least 2, got {self.max_length}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            problems.append("set 'max_steps' or a positive 'num_train_epochs'")
        for name in ("max_grad_norm", "eval_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"'{name}' must be positive when set, got {value}")
        return problems
