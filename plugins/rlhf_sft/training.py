"""The ``sft`` stage: TRL's SFTTrainer configured from the recipe and the stage."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from rlhf_plugins import Policy, StageContext, require_columns
from rlhf_plugins.context import fit_max_length, model_context
from rlhf_plugins.hf import StageCallback, run_trainer, save_final, training_arguments
from rlhf_sft import SFTSettings

REQUIRED_COLUMNS = ("prompt", "completion")


@dataclass
class SFTStage:
    """Train ``policy`` on ``dataset`` with ``SFTTrainer``; every setting goes to ``SFTConfig``
    under its own name, ``max_length`` fitted to the model's context first."""

    policy: Policy
    dataset: Any
    eval_dataset: Any
    settings: SFTSettings

    def __call__(self, stage: StageContext) -> dict[str, float]:
        for slot, data in (("dataset", self.dataset), ("eval_dataset", self.eval_dataset)):
            require_columns(data, REQUIRED_COLUMNS, component="sft", slot=slot, view="sft")
        tokenizer = self.policy.load_tokenizer()
        model = self.policy.load_model()
        settings = self.settings.model_dump()
        settings["max_length"] = fit_max_length(
            settings["max_length"], model_context(model), policy=self.policy.name, component="sft"
        )
        has_eval = self.eval_dataset is not None
        args = training_arguments(
            stage,
            SFTConfig,
            **settings,
            eval_strategy="steps" if has_eval and settings["eval_steps"] else "no",
            packing=False,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=self._columns(self.dataset),
            eval_dataset=self._columns(self.eval_dataset) if has_eval else None,
            processing_class=tokenizer,
            callbacks=[StageCallback(stage)],
        )
        metrics = run_trainer(stage, trainer)
        save_final(stage, trainer, tokenizer)
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        if losses:
            metrics["first_loss"], metrics["last_loss"] = losses[0], losses[-1]
        if has_eval:
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
        return metrics

    @staticmethod
    def _columns(data: Any) -> Any:
        extra = [c for c in data.column_names if c not in REQUIRED_COLUMNS]
        return data.remove_columns(extra) if extra else data
