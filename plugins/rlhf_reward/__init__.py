"""Reward modelling: trainer ``reward-model``, reward function ``gptj-reward-head`` and the
normalizers ``delta-reward``, ``running-norm`` and ``clip`` (see docs/reward.md).

The reward model is a causal-LM trunk (GPT-J, GPT-2, GPT-NeoX, ...) with a scalar head, saved
as an ``AutoModelForSequenceClassification`` directory that ``from_pretrained`` reloads
exactly. This hook module imports nothing heavy; the factories import the implementation.
"""

from __future__ import annotations

from typing import Literal

from rlhf_plugins import Dataset, Policy, RewardFunction, StageContext, StageFn, UserError, hookimpl
from rlhf_plugins.context import max_length_setting

LossType = Literal["divergence", "last-token"]


@hookimpl
def register_trainers(register):
    register(
        "reward-model",
        reward_model,
        description="Pairwise reward-model training (trunk + scalar head) on comparisons.",
    )


@hookimpl
def register_reward_functions(register):
    register(
        "gptj-reward-head",
        gptj_reward_head,
        description="Scores prompt + completion with a trained reward model (or trlX's).",
    )
    register(
        "delta-reward",
        delta_reward,
        description="base(prompt + completion) - base(prompt + reference summary).",
    )
    register(
        "running-norm",
        running_norm,
        description="base scores normalised by their running mean and std (all processes).",
    )
    register("clip", clip, description="base scores clamped to [min, max].")


def reward_model(
    policy: Policy,
    dataset: Dataset,
    eval_dataset: Dataset | None = None,
    loss_type: LossType = "divergence",
    freeze_fraction: float = 0.7,
    learning_rate: float = 1e-5,
    adam_beta2: float = 0.999,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    per_device_train_batch_size: int = 8,
    per_device_eval_batch_size: int = 16,
    gradient_accumulation_steps: int = 1,
    max_length: int | None = None,
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear",
    warmup_steps: float = 0,
    weight_decay: float = 0.0,
    group_by_length: bool = True,
    gradient_checkpointing: bool = False,
    logging_steps: int = 10,
    save_steps: int = 500,
    eval_steps: int | None = None,
) -> StageFn:
    """Train ``policy``'s trunk plus a scalar head on ``dataset`` (view ``comparisons``:
    prompt/chosen/rejected) with ``-log sigmoid(r_chosen - r_rejected)``: over the tokens after
    the two sequences diverge (``divergence``, trlX's summarize_rlhf) or at the last token
    (``last-token``, TRL's). The embeddings and the bottom ``freeze_fraction`` of the layers
    are frozen. ``eval_dataset`` is scored every ``eval_steps`` (when set) and at the end.
    Rows are cut to ``max_length`` tokens (unset: the trunk's context; above it: an error).
    Batches are padded to their longest row; ``group_by_length`` batches rows of similar
    length. Saves the model and tokenizer into the stage directory."""
    training = dict(locals())
    from rlhf_reward.training import STAGE_FIELDS, RewardModelStage

    own = {name: training.pop(name) for name in STAGE_FIELDS}
    return RewardModelStage(**own, training=training)


reward_model.sequence_length = max_length_setting


def gptj_reward_head(
    stage: StageContext | None = None,
    from_stage: str | None = None,
    path: str | None = None,
    base_model: str | None = None,
    batch_size: int = 16,
    max_length: int = 550,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> RewardFunction:
    """The score of prompt + completion at its last token, from the reward model saved by a
    ``reward-model`` stage (``from_stage``) or at ``path`` (a local directory or hub id). With
    ``base_model`` (the trunk's model id or directory), ``path`` is a trlX ``GPTRewardModel``
    checkpoint (``pytorch_model.bin``), scored on the text trlX trained it on:
    ``"<|startoftext|>" + prompt + completion + "<|endoftext|>"`` tokenized as one string, cut
    from the right at ``max_length``. ``device`` defaults to the stage's device. Relative
    local paths are relative to the recipe file."""
    if (from_stage is None) == (path is None):
        raise UserError("gptj-reward-head takes exactly one of 'from_stage' or 'path'")
    from rlhf_reward.scoring import RewardHead

    if stage is not None:
        path = str(stage.local_path(path) or path) if path else path
        base_model = str(stage.local_path(base_model) or base_model) if base_model else base_model
    return RewardHead(
        from_stage or path,
        base_model=base_model,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        device=device or (stage.device if stage is not None else None),
    )


def delta_reward(base: RewardFunction, reference_column: str = "reference") -> RewardFunction:
    """``base(prompt + completion) - base(prompt + reference)``; the reference summary comes
    from the dataset column ``reference_column``."""
    from rlhf_reward.normalizers import DeltaReward

    return DeltaReward(base, reference_column=reference_column)


def running_norm(
    base: RewardFunction, center: bool = True, epsilon: float = 1e-8
) -> RewardFunction:
    """``(score - mean) / std`` (without ``- mean`` when ``center`` is false), mean and std
    running over every score so far, across all processes."""
    from rlhf_reward.normalizers import RunningNorm

    return RunningNorm(base, center=center, epsilon=epsilon)


def clip(
    base: RewardFunction, min: float | None = None, max: float | None = None
) -> RewardFunction:
    """``base`` scores clamped to [``min``, ``max``] (either bound may be left out)."""
    from rlhf_reward.normalizers import Clip

    return Clip(base, low=min, high=max)
