"""The ``reward-model`` stage: pairwise training with a transformers ``Trainer``.

Rows are tokenized once by ``model.encode_groups``, the function scoring uses too; each
batch holds the chosen rows then the rejected rows, right-padded to the longest row of that
batch. Per-token rewards come from the head's forward hook, the loss is ``loss.pair_loss``.
Metrics (accuracy, chosen/rejected reward means, margin) are logged with every training log
record, summed exactly over the processes, and computed over the whole eval set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from rlhf_builtins.reward import RewardModelSettings
from rlhf_builtins.reward.maths import LossType, pair_loss
from rlhf_builtins.reward.models import (
    HeadOutputs,
    encode_groups,
    freeze_fraction,
    load_reward_model,
    pad_right,
)
from rlhf_plugins import (
    EpochTrainingSettings,
    Policy,
    StageContext,
    fit_max_length,
    model_context,
    require_columns,
)
from rlhf_plugins.torch_helpers import (
    StageCallback,
    ensure_pad_token,
    run_trainer,
    save_final,
    training_arguments,
)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
TRAINING_ARGUMENTS = set(EpochTrainingSettings.model_fields)
"""The ``reward-model`` settings passed on to ``TrainingArguments``: the shared ones."""


def tokenize_comparisons(data: Any, tokenizer: Any, max_length: int) -> Any:
    """``chosen_ids``/``rejected_ids`` (``model.encode_groups`` of each pair) and ``length``."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        groups = list(zip(batch["chosen"], batch["rejected"], strict=True))
        pairs = encode_groups(tokenizer, batch["prompt"], groups, max_length)
        return {
            "chosen_ids": [c for c, _ in pairs],
            "rejected_ids": [r for _, r in pairs],
            "length": [max(len(c), len(r)) for c, r in pairs],
        }

    return data.map(
        encode, batched=True, remove_columns=data.column_names, desc="tokenizing comparisons"
    )


@dataclass
class PairCollator:
    """A batch of ``2 * pairs`` rows: chosen rows first, then rejected rows, right-padded."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        input_ids, attention_mask = pad_right(rows, self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def pair_sums(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``[pairs, correct, sum of chosen rewards, sum of rejected rewards]``."""
    return torch.stack(
        [
            torch.tensor(float(len(chosen)), device=chosen.device),
            (chosen > rejected).float().sum(),
            chosen.sum(),
            rejected.sum(),
        ]
    )


def pair_metrics(sums: list[float]) -> dict[str, float]:
    """Accuracy, reward means and margin from ``pair_sums`` (possibly summed over batches)."""
    count, correct, chosen, rejected = sums
    count = max(count, 1.0)
    return {
        "accuracy": correct / count,
        "chosen_reward": chosen / count,
        "rejected_reward": rejected / count,
        "margin": (chosen - rejected) / count,
    }


def eval_metrics(prediction: EvalPrediction) -> dict[str, float]:
    scores = torch.as_tensor(prediction.predictions)
    return pair_metrics(pair_sums(scores[:, 0], scores[:, 1]).tolist())


class PairwiseRewardTrainer(Trainer):
    """A ``Trainer`` whose loss is the pairwise loss of ``loss_type``."""

    def __init__(self, *args: Any, loss_type: LossType, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_type = loss_type
        self.model_accepts_loss_kwargs = False
        self.head_outputs = HeadOutputs(self.model)
        self._train_sums: torch.Tensor | None = None

    def pair_outputs(
        self, model: Any, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rewards = self.head_outputs(model, inputs["input_ids"], inputs["attention_mask"])
        return pair_loss(self.loss_type, inputs["input_ids"], inputs["attention_mask"], rewards)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss, chosen, rejected = self.pair_outputs(model, inputs)
        if model.training:
            sums = pair_sums(chosen.detach(), rejected.detach())
            self._train_sums = sums if self._train_sums is None else self._train_sums + sums
        loss = loss.mean()
        return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, chosen, rejected = self.pair_outputs(model, inputs)
        if prediction_loss_only:
            return loss.mean(), None, None
        return loss.mean(), torch.stack([chosen, rejected], dim=1), torch.zeros_like(chosen)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_sums is not None:
            sums = self.accelerator.reduce(self._train_sums, reduction="sum")
            logs.update(pair_metrics(sums.tolist()))
            self._train_sums = None
        super().log(logs, start_time)


@dataclass
class RewardModelStage:
    """Train ``policy``'s trunk with a scalar head on comparisons; save it with the tokenizer.
    The shared training settings go to ``TrainingArguments`` under their own names."""

    policy: Policy
    dataset: Any
    eval_dataset: Any | None
    settings: RewardModelSettings

    def __post_init__(self) -> None:
        for slot, data in (("dataset", self.dataset), ("eval_dataset", self.eval_dataset)):
            require_columns(
                data, REQUIRED_COLUMNS, component="reward-model", slot=slot, view="comparisons"
            )

    def __call__(self, stage: StageContext) -> dict[str, float]:
        s = self.settings
        tokenizer = ensure_pad_token(self.policy.load_tokenizer())
        model = load_reward_model(self.policy, tokenizer)
        max_length = fit_max_length(
            s.max_length,
            model_context(model),
            policy=self.policy.name,
            component="reward-model",
        )
        frozen = freeze_fraction(model, s.freeze_fraction)
        has_eval = self.eval_dataset is not None
        args = training_arguments(
            stage,
            TrainingArguments,
            **s.model_dump(include=TRAINING_ARGUMENTS),
            eval_strategy="steps" if has_eval and s.eval_steps else "no",
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if s.group_by_length else "random",
            ddp_find_unused_parameters=False,
        )
        with args.main_process_first(desc="tokenizing comparisons"):
            train = tokenize_comparisons(self.dataset, tokenizer, max_length)
            held_out = (
                tokenize_comparisons(self.eval_dataset, tokenizer, max_length) if has_eval else None
            )
        trainer = PairwiseRewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=held_out,
            data_collator=PairCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            compute_metrics=eval_metrics,
            callbacks=[StageCallback(stage)],
            loss_type=s.loss_type,
        )
        metrics = run_trainer(stage, trainer)
        save_final(stage, trainer, tokenizer)
        metrics["frozen_layers"] = frozen
        train_logs = [r for r in trainer.state.log_history if "accuracy" in r]
        if train_logs:
            metrics["train_accuracy"] = train_logs[-1]["accuracy"]
        if has_eval:
            evaluation = trainer.evaluate()
            metrics.update(
                {
                    k: v
                    for k, v in evaluation.items()
                    if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
                }
            )
        return metrics
