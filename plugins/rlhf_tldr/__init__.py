"""TL;DR datasets: ``tldr`` (the real data in every shape it comes in) and ``tldr-synthetic``
(the project's deterministic, learnable stand-in for offline runs).

Both give the same views: ``sft`` (prompt, completion), ``prompts`` (prompt, reference),
``comparisons`` (prompt, chosen, rejected) and ``offline`` (prompt, completion, reward).
See docs/datasets.md. This hook module imports nothing heavy.
"""

from __future__ import annotations

from typing import Literal

from rlhf_plugins import Dataset, UserError, hookimpl

View = Literal["sft", "prompts", "comparisons", "offline"]


@hookimpl
def register_datasets(register):
    register(
        "tldr-synthetic",
        tldr_synthetic,
        description="Deterministic, learnable TL;DR-shaped data with held-out splits.",
    )


def tldr_synthetic(
    view: View = "sft",
    split: Literal["train", "valid", "test"] = "train",
    num_examples: int = 2000,
    seed: int = 0,
) -> Dataset:
    """``num_examples`` generated posts of ``split`` (one row each; two rows in the offline
    view). The corpus depends only on ``seed``, never on the recipe seed, so every stage and
    recipe sees the same data; train, valid and test never share a post."""
    if num_examples < 1:
        raise UserError(f"tldr-synthetic: num_examples must be positive, got {num_examples}")
    from rlhf_tldr.synthetic import synthetic_dataset

    return synthetic_dataset(view, split, num_examples, seed)
