"""The ``kto`` stage: TRL's KTOTrainer on labelled completions made from the dataset's view."""

from __future__ import annotations

from typing import Any

from datasets import Value
from trl.data_utils import unpair_preference_dataset

from rlhf_plugins import StageContext, UserError
from rlhf_plugins.torch_helpers import TrainerStage

UNPAIRED = ("prompt", "completion", "label")
SOURCES = {
    "offline": ("prompt", "completion", "reward"),
    "label": UNPAIRED,
    "comparisons": ("prompt", "chosen", "rejected"),
}
"""What ``kto`` makes labelled completions from, in the order it looks for them."""


class KTOStage(TrainerStage):
    """``TrainerStage`` whose data become prompt/completion/label rows, shuffled with the
    recipe seed (see ``rlhf_builtins.kto.kto``)."""

    def prepare(self, data: Any, slot: str, stage: StageContext) -> Any:
        if data is None:
            return None
        kind = next(
            (kind for kind, needs in SOURCES.items() if set(needs) <= set(data.column_names)),
            None,
        )
        if kind is None:
            options = "; ".join(f"{k}: {', '.join(c)}" for k, c in SOURCES.items())
            raise UserError(
                f"kto: {slot} needs labelled completions, the columns of one of ({options}); "
                f"it has {', '.join(data.column_names)}"
            )
        if kind == "offline":
            threshold = self.settings.reward_threshold
            data = data.add_column("label", [reward > threshold for reward in data["reward"]])
        elif kind == "label":
            data = checked_labels(data, slot)
        else:
            data = unpair_preference_dataset(data.select_columns(SOURCES["comparisons"]))
        return super().prepare(data, slot, stage).shuffle(seed=stage.seed)


def checked_labels(data: Any, slot: str) -> Any:
    """``data`` with its ``label`` column as booleans (true, false, 1 or 0 accepted); a
    ``UserError`` naming the first other value's row."""
    for row, label in enumerate(data["label"]):
        if isinstance(label, bool) or (isinstance(label, int) and label in (0, 1)):
            continue
        raise UserError(f"kto: {slot} row {row}: label must be true or false, got {label!r}")
    if data.features["label"].dtype != "bool":
        data = data.cast_column("label", Value("bool"))
    return data
