"""The ``sft`` stage: TRL's SFTTrainer configured from the recipe and the stage."""

from __future__ import annotations

import math
from typing import Any

from rlhf_plugins.torch_helpers import TrainerStage


class SFTStage(TrainerStage):
    """``TrainerStage`` that also reports the evaluation's perplexity (``eval_perplexity``)."""

    def evaluated(self, trainer: Any) -> dict[str, float]:
        metrics = super().evaluated(trainer)
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
        return metrics
