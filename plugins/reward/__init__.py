"""Reward modelling: trainer ``reward-model``, reward function ``gptj-reward-head`` and the
normalizers ``delta-reward``, ``running-norm`` and ``clip`` (see docs/reward.md).

The reward model is a causal-LM trunk (GPT-J, GPT-2, GPT-NeoX, ...) with a scalar head, saved
as an ``AutoModelForSequenceClassification`` directory that ``from_pretrained`` reloads
exactly. This hook module imports nothing heavy; the factories import the implementation.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rlhf_plugins import (
    AttnImplementation,
    Dataset,
    EpochTrainingSettings,
    ModelDtype,
    Policy,
    RewardFunction,
    Settings,
    StageContext,
    StageFn,
    TokenizerSource,
    UserError,
    Views,
    hookimpl,
    max_length_setting,
)

LossType = Literal["divergence", "last-token"]


ComparisonsDataset = Annotated[Dataset, Views("comparisons")]
"""The dataset slots of ``reward-model``: the ``comparisons`` view (prompt, chosen,
rejected)."""


@hookimpl
def register_trainers(register):
    register(
        "reward-model",
        reward_model,
        description="Pairwise reward-model training (trunk + scalar head) on comparisons.",
        sequence_length=max_length_setting,
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


class RewardModelSettings(
    EpochTrainingSettings.with_defaults(learning_rate=1e-5, lr_scheduler_type="linear")
):
    """The shared training settings (passed on to ``TrainingArguments`` under the same names)
    plus the reward model's own."""

    loss_type: LossType = Field(
        "divergence",
        description="pairwise loss over the tokens after the pair diverges (trlX) or at the last token (TRL)",
    )
    freeze_fraction: float = Field(
        0.7, ge=0, le=1, description="bottom fraction of the layers frozen, embeddings too"
    )
    max_length: int | None = Field(
        None, ge=1, description="tokens per row, longer rows cut (unset: the trunk's context)"
    )
    group_by_length: bool = Field(True, description="batch rows of similar length (less padding)")


def reward_model(
    policy: Policy,
    dataset: ComparisonsDataset,
    eval_dataset: ComparisonsDataset | None = None,
    *,
    settings: RewardModelSettings,
) -> StageFn:
    """Train ``policy``'s trunk plus a scalar head on ``dataset`` (view ``comparisons``:
    prompt/chosen/rejected) with ``-log sigmoid(r_chosen - r_rejected)``: over the tokens after
    the two sequences diverge (``divergence``, trlX's summarize_rlhf) or at the last token
    (``last-token``, TRL's). The embeddings and the bottom ``freeze_fraction`` of the layers
    are frozen. ``eval_dataset`` is scored every ``eval_steps`` (when set) and at the end.
    Rows are cut to ``max_length`` tokens (unset: the trunk's context; above it: an error).
    Batches are padded to their longest row; ``group_by_length`` batches rows of similar
    length. Saves the model and tokenizer into the stage directory. ``settings`` were
    validated whole."""
    from rlhf_builtins.reward.trainer import RewardModelStage

    return RewardModelStage(policy, dataset, eval_dataset, settings)


def gptj_reward_head(
    stage: StageContext | None = None,
    from_stage: str | None = None,
    path: Annotated[
        str | None,
        Field(description="a reward model's directory or hub id (or from_stage instead)"),
    ] = None,
    base_model: Annotated[
        str | None,
        Field(description="with a trlX GPTRewardModel checkpoint at path: its trunk's model"),
    ] = None,
    batch_size: Annotated[int, Field(ge=1, description="texts scored per forward pass")] = 16,
    max_length: Annotated[
        int, Field(ge=1, description="tokens per scored text, longer ones cut")
    ] = 550,
    device: Annotated[
        str | None, Field(description="torch device of the model (unset: the stage's)")
    ] = None,
    dtype: Annotated[
        ModelDtype,
        Field(description="weights' dtype (auto: the checkpoint's)"),
    ] = "float32",
    attn_implementation: AttnImplementation = None,
    tokenizer: TokenizerSource = None,
) -> RewardFunction:
    """The score of prompt + completion at its last token, from the reward model saved by a
    ``reward-model`` stage (``from_stage``) or at ``path`` (a local directory or hub id). With
    ``base_model`` (the trunk's model id or directory), ``path`` is a trlX ``GPTRewardModel``
    checkpoint (``pytorch_model.bin``), scored on the text trlX trained it on:
    ``"<|startoftext|>" + prompt + completion + "<|endoftext|>"`` tokenized as one string, cut
    from the right at ``max_length``. ``device`` defaults to the stage's device. ``dtype``,
    ``attn_implementation`` and ``tokenizer`` (instead of the one saved with the model, or
    ``base_model``'s) load it as ``hf-causal-lm`` does. Relative local paths are relative to
    the recipe file."""
    if (from_stage is None) == (path is None):
        raise UserError("gptj-reward-head takes exactly one of 'from_stage' or 'path'")
    from rlhf_builtins.reward.scoring import RewardHead

    if stage is not None:
        path = stage.local_or_hub(path)
        base_model = stage.local_or_hub(base_model)
        tokenizer = stage.local_or_hub(tokenizer)
    device = device or (stage.device if stage is not None else None)
    loading = {"dtype": dtype, "attn_implementation": attn_implementation, "tokenizer": tokenizer}
    return RewardHead(from_stage or path, base_model, batch_size, max_length, device, **loading)


def delta_reward(
    base: RewardFunction,
    reference_column: Annotated[
        str, Field(description="dataset column holding the reference summary")
    ] = "reference",
) -> RewardFunction:
    """``base(prompt + completion) - base(prompt + reference)``; the reference summary comes
    from the dataset column ``reference_column``."""
    from rlhf_builtins.reward.normalizers import DeltaReward

    return DeltaReward(base, reference_column=reference_column)


def running_norm(
    base: RewardFunction,
    center: Annotated[
        bool, Field(description="subtract the running mean (else only scale)")
    ] = True,
    epsilon: Annotated[
        float, Field(gt=0, description="added to the running std before dividing")
    ] = 1e-8,
) -> RewardFunction:
    """``(score - mean) / std`` (without ``- mean`` when ``center`` is false), mean and std
    running over every score so far, across all processes."""
    from rlhf_builtins.reward.normalizers import RunningNorm

    return RunningNorm(base, center=center, epsilon=epsilon)


class ClipSettings(Settings):
    """The bounds of ``clip``: at least one, ``min`` not above ``max``."""

    min: float | None = Field(None, description="lower bound (unset: none)")
    max: float | None = Field(None, description="upper bound (unset: none)")

    @model_validator(mode="after")
    def _bounds(self) -> ClipSettings:
        if self.min is None and self.max is None:
            raise ValueError("clip needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


def clip(base: RewardFunction, *, settings: ClipSettings) -> RewardFunction:
    """``base`` scores clamped to [``min``, ``max``] (either bound may be left out);
    ``settings`` were validated whole."""
    from rlhf_builtins.reward.normalizers import Clip

    return Clip(base, low=settings.min, high=settings.max)
