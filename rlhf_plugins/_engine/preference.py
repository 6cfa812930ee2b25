"""Settings shared by the trainers that wrap TRL's preference trainers against a reference
policy (``dpo``, ``kto``): the shared training settings at TRL's learning rate for them, LoRA,
``max_length`` in the project's meaning, and the rules of TRL's configs that both share.

A trainer declares ``Annotated[Subclass, FromDataclass("trl:DPOConfig", exclude=EXCLUDED,
exclude_fields_of=TRAINING_ARGUMENTS, constraints=REFERENCE_BOUNDS | {...})]``: TRL's own
fields come from TRL's dataclass, the shared ones keep this project's spelling. Imports
pydantic only.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rlhf_plugins._engine.lora import LoraSettings
from rlhf_plugins._engine.training import EpochTrainingSettings

TRAINING_ARGUMENTS = "transformers:TrainingArguments"
"""Whose fields a TRL config's settings leave to ``TrainingSettings`` (``exclude_fields_of``)."""

EXCLUDED = ("model_init_kwargs", "trust_remote_code", "pad_token", "padding_free")
"""TRL fields that do not apply here: the policy plugin loads the model (and owns
``trust_remote_code``), the tokenizer brings its pad token, and TRL 1.16 ignores
``padding_free`` (it warns and pads)."""

REFERENCE_BOUNDS = {
    "beta": Field(gt=0),
    "dataset_num_proc": Field(ge=1),
    "precompute_ref_batch_size": Field(ge=1),
    "ref_model_mixup_alpha": Field(ge=0, le=1),
    "ref_model_sync_steps": Field(ge=1),
}
"""Bounds on TRL fields that ``DPOConfig`` and ``KTOConfig`` share but do not check."""


class PreferenceSettings(EpochTrainingSettings.with_defaults(learning_rate=1e-6), LoraSettings):
    """The shared training settings (learning rate at TRL's 1e-6 for these trainers), LoRA, and
    ``max_length``; TRL's fields are added by ``FromDataclass``. Rules across fields are
    collected by ``problems`` (a subclass adds its own with ``super().problems()``) and
    reported together."""

    max_length: int | None = Field(
        None,
        ge=1,
        description="tokens per row, prompt and completion together; longer rows are cut at the "
        "end (unset: the model's context)",
    )

    def problems(self) -> list[str]:
        """Each rule of TRL's config and trainer that these settings break (TRL raises them
        when the trainer is built); the fields named come from TRL's dataclass."""
        found = []
        if self.sync_ref_model and self.precompute_ref_log_probs:
            found.append(
                "sync_ref_model updates the reference, so its log-probabilities cannot be "
                "precomputed: turn off precompute_ref_log_probs or sync_ref_model"
            )
        if self.sync_ref_model and self.use_peft:
            found.append(
                "sync_ref_model needs a separate reference model; with use_peft the reference "
                "is the policy with its adapters off"
            )
        return found

    @model_validator(mode="after")
    def _trl_rules(self) -> PreferenceSettings:
        if found := self.problems():
            raise ValueError("; ".join(found))
        return self
