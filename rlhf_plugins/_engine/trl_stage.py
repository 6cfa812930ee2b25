"""One stage for the trainers that wrap a TRL trainer on a dataset (``sft``, ``dpo``, ``kto``,
and third-party ones such as ORPO): what a TRL example script does, from a recipe.

Import it inside a factory's body or a plugin's implementation module, never from a plugin's
hook module: it imports transformers.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from rlhf_plugins._engine.chat import check_chat_data
from rlhf_plugins._engine.components import Policy, require_columns
from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.hf import (
    StageCallback,
    peft_config,
    run_trainer,
    save_final,
    training_arguments,
)
from rlhf_plugins._engine.lengths import fit_max_length, model_context
from rlhf_plugins._engine.logprobs import trl_logprob_tiles
from rlhf_plugins._engine.lora import LoraSettings
from rlhf_plugins._engine.stage_context import StageContext
from rlhf_plugins._engine.training import TrainingSettings


@dataclass
class TrainerStage:
    """Train ``policy`` on ``dataset`` with ``trainer_class`` (a TRL trainer) configured by
    ``config_class`` from ``settings`` (a validated settings model), as a TRL example does:

    - the data: each dataset slot must hold ``columns`` (the ``view`` named in the error),
      and the trainer reads only those (``prepare``, which subclasses may extend);
    - the config (``training_arguments``): every shared training setting and every setting
      that is a field of ``config_class``, under its own name, plus ``config``; settings the
      config does not take stay with the wrapper (LoRA, a trainer's own). ``max_length``
      (unset: the model's context) is fitted to the model's context first;
    - the reference, for a trainer that takes ``ref_model``: ``reference`` loaded, else a
      frozen copy of the starting policy, as TRL would load it, except with LoRA (TRL turns
      the adapters off instead) or precomputed reference log-probabilities;
    - LoRA when ``use_peft`` is on (``rlhf_plugins.LoraSettings``);
    - ``run_trainer`` (resume, stop at ``max_steps``), ``save_final`` (a plain
      ``from_pretrained`` policy and its tokenizer in the stage directory).

    Returns ``steps``, ``train_loss``, ``first_loss``/``last_loss``, the last logged value
    of each key of ``summary`` and, with an ``eval_dataset``, ``eval_loss`` and
    ``eval_<key>`` for each ``summary`` key (one evaluation at the end, another every
    ``eval_steps`` when set)."""

    component: str
    trainer_class: type
    config_class: type
    view: str
    columns: tuple[str, ...]
    policy: Policy
    dataset: Any
    settings: Any
    eval_dataset: Any = None
    reference: Policy | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: tuple[str, ...] = ()

    def __call__(self, stage: StageContext) -> dict[str, float]:
        train = self.prepare(self.dataset, "dataset", stage)
        evaluation = self.prepare(self.eval_dataset, "eval_dataset", stage)
        tokenizer = self.policy.load_tokenizer()
        check_chat_data(train, tokenizer, f"{self.component}: dataset")
        check_chat_data(evaluation, tokenizer, f"{self.component}: eval_dataset")
        model = self.policy.load_model()
        options: dict[str, Any] = dict(
            model=model,
            args=self.arguments(stage, model, has_eval=evaluation is not None),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            callbacks=[StageCallback(stage)],
        )
        if "ref_model" in inspect.signature(self.trainer_class).parameters:
            options["ref_model"] = self.reference_model(model)
        lora = self.lora()
        if lora is not None:
            options["peft_config"] = lora
        trainer = self.trainer_class(**options)
        self.check_rows_left(trainer.train_dataset, train, "dataset")
        self.check_rows_left(trainer.eval_dataset, evaluation, "eval_dataset")
        metrics = run_trainer(stage, trainer)
        metrics.update(self.logged(trainer))
        # save_final merges LoRA adapters into the model in place: evaluate before that
        if evaluation is not None and lora is not None:
            metrics.update(self.evaluated(trainer))
        save_final(stage, trainer, tokenizer)
        if evaluation is not None and lora is None:
            metrics.update(self.evaluated(trainer))
        return metrics

    def prepare(self, data: Any, slot: str, stage: StageContext) -> Any:
        """``data`` of ``slot`` as the trainer reads it (None for an unset optional slot):
        checked to hold ``columns``, the other columns dropped."""
        if data is None:
            return None
        require_columns(data, self.columns, component=self.component, slot=slot, view=self.view)
        extra = [c for c in data.column_names if c not in self.columns]
        return data.remove_columns(extra) if extra else data

    def check_rows_left(self, prepared: Any, given: Any, slot: str) -> None:
        """A ``UserError`` when TRL's preparation of ``given`` (``slot``'s rows) left no row at
        all, instead of the sampler's error at the first step."""
        if given is None or prepared is None or len(prepared) > 0:
            return
        max_length = getattr(self.settings, "max_length", None)
        raise UserError(
            f"{self.component}: no row of {slot} is left after {self.trainer_class.__name__} "
            f"prepared its {len(given)} rows: TRL drops rows with no token left to learn from "
            f"once cut to max_length ({max_length}), e.g. a prompt that fills it alone; raise "
            "max_length, shorten the prompts, or use a tokenizer with more tokens per word"
        )

    def lora(self) -> Any | None:
        """peft's config when the settings turn ``use_peft`` on, else None."""
        if not isinstance(self.settings, LoraSettings):
            return None
        return peft_config(self.settings.model_dump())

    def arguments(self, stage: StageContext, model: Any, *, has_eval: bool) -> Any:
        """The trainer's config (see the class docstring)."""
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        values = {
            name: value
            for name, value in self.settings.model_dump().items()
            if name in fields or name in TrainingSettings.model_fields
        }
        if "max_length" in values:
            values["max_length"] = fit_max_length(
                values["max_length"],
                model_context(model),
                policy=self.policy.name,
                component=self.component,
            )
        evaluate_every = has_eval and values.get("eval_steps")
        values["eval_strategy"] = "steps" if evaluate_every else "no"
        return training_arguments(stage, self.config_class, **values, **self.config)

    def reference_model(self, model: Any) -> Any | None:
        """The frozen reference (see the class docstring), or None where TRL needs none."""
        if self.reference is not None:
            return self.reference.load_model().eval().requires_grad_(False)
        if self.lora() is not None or getattr(self.settings, "precompute_ref_log_probs", False):
            return None
        return copy.deepcopy(model).eval().requires_grad_(False)

    def logged(self, trainer: Any) -> dict[str, float]:
        """``first_loss``/``last_loss`` and the last value of each ``summary`` key, from the
        trainer's log history (what this call and a resumed run's checkpoint logged)."""
        history = trainer.state.log_history
        metrics = {}
        losses = [r["loss"] for r in history if "loss" in r]
        if losses:
            metrics["first_loss"], metrics["last_loss"] = losses[0], losses[-1]
        for key in self.summary:
            values = [r[key] for r in history if key in r]
            if values:
                metrics[key] = values[-1]
        return metrics

    def evaluated(self, trainer: Any) -> dict[str, float]:
        """``eval_loss`` and ``eval_<key>`` of each ``summary`` key, evaluated now."""
        with trl_logprob_tiles(trainer.accelerator.device):
            result = trainer.evaluate()
        keys = ("eval_loss", *(f"eval_{key}" for key in self.summary))
        return {key: result[key] for key in keys if key in result}
