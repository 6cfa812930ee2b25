"""Pieces of a hand-written training loop, written once for every trainer that runs its own
(``ppo``, ``ilql``, a plugin's): the learning-rate schedule of ``TrainingSettings``, the
DeepSpeed config entries such a loop must fill, each process's share of an evaluation set and
running moments of a stream of numbers.

Pure Python: this module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlhf_plugins._engine.errors import UserError

GATHER_ON_SAVE = "stage3_gather_16bit_weights_on_model_save"


def warmup_count(warmup_steps: float, max_steps: int) -> int:
    """``TrainingSettings.warmup_steps`` as a number of steps, as ``TrainingArguments`` reads
    it: from 1 on a count, below 1 a fraction of ``max_steps`` (rounded up)."""
    return int(warmup_steps) if warmup_steps >= 1 else math.ceil(max_steps * warmup_steps)


def learning_rate_factor(
    step: int, *, schedule: str, warmup: int, max_steps: int, min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based), the curves of
    transformers' schedulers (``get_scheduler``) for ``lr_scheduler_type``:

    - ``"constant"``: 1 (no warmup);
    - ``"constant_with_warmup"``: ``step / warmup`` during the ``warmup`` steps, then 1;
    - ``"linear"`` and ``"cosine"``: the same warmup, then a linear or half-cosine decay from
      1 to ``min_ratio`` at ``max_steps`` (``cosine_with_min_lr``'s formula), ``min_ratio``
      after it.
    """
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr_scheduler_type {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def fill_deepspeed_config(
    accelerator: Any,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    num_processes: int,
    max_grad_norm: float | None,
) -> None:
    """Resolve the entries of ``accelerator``'s DeepSpeed config (no-op without DeepSpeed)
    that a loop with no dataloader in ``accelerator.prepare`` must set itself: the batch sizes
    (``micro_batch_size`` rows per process per forward, ``gradient_accumulation_steps``
    forwards per optimizer step, ``num_processes`` processes), ``gradient_clipping``
    (``max_grad_norm``; None: 0, no clipping) and, unless the config says otherwise,
    ``zero_allow_untested_optimizer`` (the loop's optimizer is torch's AdamW). Under ZeRO-3
    ``zero_optimization.stage3_gather_16bit_weights_on_model_save`` defaults to true (the loop
    saves a plain ``save_pretrained`` model through ``accelerator.get_state_dict``, which needs
    it); a config that sets it false is a ``UserError``."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        train_batch_size=micro_batch_size * gradient_accumulation_steps * num_processes,
        gradient_clipping=max_grad_norm or 0.0,
    )
    config.setdefault("zero_allow_untested_optimizer", True)
    zero = config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.setdefault(GATHER_ON_SAVE, True):
        raise UserError(
            f"the DeepSpeed config sets zero_optimization.{GATHER_ON_SAVE} = false: this "
            "trainer saves the final model whole (save_pretrained), which ZeRO-3 can only do "
            "with it true; remove the entry or set it true"
        )


def eval_shard(num_examples: int, rank: int, world: int) -> tuple[list[int], list[bool]]:
    """Process ``rank``'s evaluation rows among ``world``: a contiguous block of
    ``ceil(num_examples / world)`` rows, a short last block filled with row 0 marked not
    included, so every process runs as many batches and every row is counted exactly once.
    Returns ``(rows, included)``."""
    size = math.ceil(num_examples / world)
    rows = [rank * size + i for i in range(size)]
    return [r if r < num_examples else 0 for r in rows], [r < num_examples for r in rows]


@dataclass
class RunningMoments:
    """Mean and variance of every number added so far, merged batch by batch (Chan et al.'s
    parallel update). ``std`` is the **sample** standard deviation (``n - 1`` in the
    denominator, trlX's ``RunningMoments``), 1.0 until two numbers have been seen. Callers
    running on several processes add the sums of all processes (every process then holds the
    same moments)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    """Sum of squared deviations from ``mean``."""

    def add(self, count: float, total: float, total_squares: float) -> None:
        """Merge a batch given by its ``count``, sum and sum of squares."""
        if count <= 0:
            return
        batch_mean = total / count
        batch_m2 = max(0.0, total_squares - total * total / count)
        merged = self.count + count
        delta = batch_mean - self.mean
        self.mean += delta * count / merged
        self.m2 += batch_m2 + delta * delta * self.count * count / merged
        self.count = merged

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = (float(state[k]) for k in ("count", "mean", "m2"))
