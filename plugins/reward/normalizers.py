"""Normalizers: reward functions that wrap a ``base`` reward function (from any plugin).

- ``DeltaReward``: base(prompt + completion) - base(prompt + reference), one call to ``base``
  with both halves so batching stays full (trlX summarize_rlhf's "Gotcha 1").
- ``RunningNorm``: (score - running mean) / running std over every score seen so far
  (``rlhf_plugins.torch_helpers.RunningMoments``: the sample std, as ``ppo``'s ``scale_reward``), the
  moments summed over all processes when running distributed (every rank must call it the
  same number of times, as a training loop does). A base that fails on one rank still lets
  that rank take part in the sum, and the failure is raised on every rank.
- ``Clip``: scores clamped to [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlhf_plugins import RewardFunction, RewardUnavailable, StageFailed, UserError, checked_scores
from rlhf_plugins.torch_helpers import RunningMoments


def base_scores(
    base: RewardFunction, prompts: list[str], completions: list[str], **columns: list
) -> list[float]:
    """``base``'s scores, checked by ``rlhf_plugins.checked_scores``: one number
    per completion, else ``StageFailed`` (a wrapper cannot skip a batch); NaN and inf pass
    through to the trainer or evaluator, which skips or rejects them."""
    scores, problem = checked_scores(
        base(prompts, completions, **columns), len(completions), finite=False
    )
    if scores is None:
        raise StageFailed(f"reward function {base!r} {problem}")
    return scores


OF_THE_COMPLETIONS = ("completion_ids",)
"""Keyword arguments that describe the completions themselves (TRL passes their token ids):
the reference half of ``DeltaReward``'s call has none, so ``base`` does not get them."""


@dataclass
class DeltaReward:
    """One call to ``base`` with the completions, then the references, after them. A keyword
    argument with one entry per completion (a dataset column) is doubled to match; any other
    (TRL's ``trainer_state``, ``log_extra``, ``log_metric``) goes to ``base`` unchanged, and
    ``OF_THE_COMPLETIONS`` are left out."""

    base: RewardFunction
    reference_column: str = "reference"

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        if self.reference_column not in columns:
            raise UserError(
                f"delta-reward needs the reference summary in a column "
                f"'{self.reference_column}'; columns given: "
                f"{', '.join(columns) or 'none'} (use a 'prompts' view)"
            )
        count = len(completions)
        references = list(columns[self.reference_column])
        doubled = {
            name: list(values) * 2 if is_column(values, count) else values
            for name, values in columns.items()
            if name not in OF_THE_COMPLETIONS
        }
        scores = base_scores(
            self.base, list(prompts) * 2, list(completions) + references, **doubled
        )
        return [s - r for s, r in zip(scores[:count], scores[count:], strict=True)]


def is_column(values: Any, count: int) -> bool:
    """True for a keyword argument holding one entry per completion (a list or tuple)."""
    return isinstance(values, (list, tuple)) and len(values) == count


@dataclass
class Sums:
    """What ``global_sums`` adds up over the processes."""

    count: float
    total: float
    squares: float
    unavailable: int = 0
    """Processes whose base raised ``RewardUnavailable``."""
    failed: int = 0
    """Processes whose base raised anything else."""


def global_sums(values: list[float], *, unavailable: bool = False, failed: bool = False) -> Sums:
    """``values``' count, sum and sum of squares summed over all processes, with how many
    processes had no scores: ``unavailable`` (their base raised ``RewardUnavailable``) or
    ``failed`` (it raised anything else). Every process calls it, failed or not, so that the
    collective pairs up. Non-finite values are left out (the trainer skips their batch)."""
    finite = [v for v in values if math.isfinite(v)]
    sums = (
        float(len(finite)),
        math.fsum(finite),
        math.fsum(v * v for v in finite),
        float(unavailable),
        float(failed),
    )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch

        device = "cpu"
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        tensor = torch.tensor(sums, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        sums = tuple(tensor.tolist())
    count, total, squares, unavailable_ranks, failed_ranks = sums
    return Sums(count, total, squares, int(unavailable_ranks), int(failed_ranks))


@dataclass
class RunningNorm:
    """``base`` scores normalised by running moments summed over every process. When the base
    fails on some process, every process raises and none adds to the moments: when each
    failure was ``RewardUnavailable``, ``RewardUnavailable`` (the trainer skips the batch on
    every rank together); else ``StageFailed`` (a process whose base raised something else
    re-raises that)."""

    base: RewardFunction
    center: bool = True
    epsilon: float = 1e-8
    moments: RunningMoments = field(default_factory=RunningMoments)

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        scores: list[float] = []
        error: Exception | None = None
        try:
            scores = base_scores(self.base, prompts, completions, **columns)
        except Exception as exc:  # re-raised below, after the collective
            error = exc
        unavailable = isinstance(error, RewardUnavailable)
        sums = global_sums(
            scores, unavailable=unavailable, failed=error is not None and not unavailable
        )
        if error is not None and (not unavailable or not sums.failed):
            raise error
        if sums.failed:  # a failure elsewhere fails the stage here too, not a skipped batch
            raise StageFailed(
                f"running-norm: the reward function failed on {sums.failed} other process(es)"
            )
        if sums.unavailable:
            raise RewardUnavailable(
                f"running-norm: the reward function is unavailable on {sums.unavailable} "
                "other process(es)"
            )
        self.moments.add(sums.count, sums.total, sums.squares)
        shift = self.moments.mean if self.center else 0.0
        scale = self.moments.std + self.epsilon
        return [(s - shift) / scale for s in scores]


@dataclass
class Clip:
    """``base`` scores clamped to [``low``, ``high``]; a bound left None does not clamp
    (``ClipSettings`` checks them)."""

    base: RewardFunction
    low: float | None = None
    high: float | None = None

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        return [
            min(max(s, low), high) for s in base_scores(self.base, prompts, completions, **columns)
        ]
