"""Trainer ``sft``: supervised fine-tuning with TRL's ``SFTTrainer`` on prompt/completion data,
the loss on completion tokens only."""

from __future__ import annotations

from typing import Literal

from rlhf_plugins import Dataset, Policy, StageFn, hookimpl
from rlhf_plugins.context import max_length_setting


@hookimpl
def register_trainers(register):
    register("sft", sft, description="Supervised fine-tuning with TRL's SFTTrainer.")


def sft(
    policy: Policy,
    dataset: Dataset,
    eval_dataset: Dataset | None = None,
    learning_rate: float = 5e-5,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    per_device_train_batch_size: int = 8,
    per_device_eval_batch_size: int = 16,
    gradient_accumulation_steps: int = 1,
    max_length: int | None = None,
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine",
    warmup_steps: float = 0,
    weight_decay: float = 0.0,
    completion_only_loss: bool = True,
    gradient_checkpointing: bool = False,
    logging_steps: int = 10,
    save_steps: int = 500,
    eval_steps: int | None = None,
) -> StageFn:
    """Fine-tune ``policy`` on ``dataset`` (view ``sft``: prompt/completion; TRL appends EOS to
    each completion). Rows are cut to ``max_length`` tokens (unset: the model's context; above
    it: an error at validation when the policy's context is known, else before training).
    ``warmup_steps`` below 1 is a fraction of all steps. Saves the model and tokenizer into the
    stage directory."""
    settings = dict(locals())
    from rlhf_sft.training import SFTStage

    return SFTStage(
        policy=settings.pop("policy"),
        dataset=settings.pop("dataset"),
        eval_dataset=settings.pop("eval_dataset"),
        settings=settings,
    )


sft.sequence_length = max_length_setting
