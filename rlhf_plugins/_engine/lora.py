"""LoRA through peft for the trainers that wrap TRL (their ``peft_config``): the settings,
declared once with the names and defaults of TRL's ``ModelConfig`` (``use_peft``,
``lora_r``, ...); ``rlhf_plugins.torch_helpers.peft_config`` builds peft's config from them.

peft is optional: a recipe that turns ``use_peft`` on without it fails at ``rlhf validate``.
This module imports pydantic only.
"""

from __future__ import annotations

import importlib.util

from pydantic import Field, model_validator

from rlhf_plugins._engine.training import TrainingSettings


class LoraSettings(TrainingSettings):
    """``TrainingSettings`` plus LoRA adapters: with ``use_peft`` only the adapters train, and
    the stage saves them merged into the policy's weights (a plain ``from_pretrained``
    model). Combine it with another ``TrainingSettings`` class by inheriting from both, this one
    last so that the other's defaults win."""

    use_peft: bool = Field(
        False, description="train LoRA adapters through peft instead of every weight"
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank (with use_peft)")
    lora_alpha: float = Field(
        32, gt=0, description="LoRA alpha: adapter updates are scaled by lora_alpha / lora_r"
    )
    lora_dropout: float = Field(
        0.05, ge=0, lt=1, description="dropout on the input of each LoRA adapter"
    )
    lora_target_modules: list[str] | None = Field(
        None,
        description='modules that get adapters, e.g. ["q_proj", "v_proj"] (unset: peft\'s '
        "choice for the architecture)",
    )

    @model_validator(mode="after")
    def _peft_installed(self) -> LoraSettings:
        if self.use_peft and importlib.util.find_spec("peft") is None:
            raise ValueError("use_peft needs peft, which is not installed (pip install peft)")
        return self
