"""TL;DR datasets: ``tldr`` (the real data in every shape it comes in) and ``tldr-synthetic``
(the project's deterministic, learnable stand-in for offline runs).

Both give the same views: ``sft`` (prompt, completion), ``prompts`` (prompt, reference),
``comparisons`` (prompt, chosen, rejected) and ``offline`` (prompt, completion, reward).
See docs/datasets.md. This hook module imports nothing heavy.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rlhf_plugins import Dataset, StageContext, hookimpl

View = Literal["sft", "prompts", "comparisons", "offline"]


@hookimpl
def register_datasets(register):
    register(
        "tldr",
        tldr,
        description="Reddit TL;DR: CarperAI hub sets, OpenAI raw jsonl or flattened samples.",
    )
    register(
        "tldr-synthetic",
        tldr_synthetic,
        description="Deterministic, learnable TL;DR-shaped data with held-out splits.",
    )


def tldr(
    stage: StageContext | None = None,
    source: Annotated[
        str | None,
        Field(description="hub id, local directory or .jsonl/.json file (unset: CarperAI's sets)"),
    ] = None,
    view: Annotated[
        View, Field(description="columns to give: sft, prompts, comparisons, offline")
    ] = "sft",
    split: Annotated[str | None, Field(description="split to read (hub: train when unset)")] = None,
    limit: Annotated[
        int | None, Field(ge=1, description="posts or pairs kept (unset: all)")
    ] = None,
    shuffle: Annotated[
        bool, Field(description="shuffle with the recipe seed before limit")
    ] = False,
    max_prompt_tokens: Annotated[
        int | None,
        Field(
            ge=1, description="prompt tokens of tokenizer kept, TL;DR: suffix included (unset: all)"
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        Field(description="tokenizer counting max_prompt_tokens (unset: whitespace words)"),
    ] = None,
    min_summary_words: Annotated[
        int, Field(ge=0, description="comparison pairs with a shorter summary are dropped")
    ] = 5,
) -> Dataset:
    """The TL;DR data from ``source``: a hub id (default: CarperAI's summarize_tldr for the
    sft/prompts views, summarize_comparisons for comparisons/offline), a local directory or a
    ``.jsonl``/``.json`` file. ``split`` picks a split (hub: ``train`` when unset; OpenAI
    comparison batches: their ``split`` field; a directory: ``<split>.jsonl``). Comparison
    pairs with identical summaries or a summary under ``min_summary_words`` words are dropped.
    ``shuffle`` uses the recipe seed; ``limit`` keeps that many posts or pairs. Prompts are cut
    to ``max_prompt_tokens`` tokens of ``tokenizer`` (whitespace words without one), keeping
    the ``TL;DR:`` suffix. Relative local paths are relative to the recipe file."""
    from rlhf_builtins.tldr.loader import load_tldr

    if stage is not None:
        source = stage.local_or_hub(source)
        tokenizer = stage.local_or_hub(tokenizer)
    return load_tldr(
        source=source,
        view=view,
        split=split,
        limit=limit,
        shuffle=shuffle,
        seed=stage.seed if stage is not None else 0,
        max_prompt_tokens=max_prompt_tokens,
        tokenizer=tokenizer,
        min_summary_words=min_summary_words,
    )


def tldr_synthetic(
    view: Annotated[
        View, Field(description="columns to give: sft, prompts, comparisons, offline")
    ] = "sft",
    split: Annotated[
        Literal["train", "valid", "test"], Field(description="held-out splits never share a post")
    ] = "train",
    num_examples: Annotated[int, Field(ge=1, description="posts generated")] = 2000,
    seed: Annotated[int, Field(description="seed of the corpus (not the recipe's)")] = 0,
) -> Dataset:
    """``num_examples`` generated posts of ``split`` (one row each; two rows in the offline
    view). The corpus depends only on ``seed``, never on the recipe seed, so every stage and
    recipe sees the same data; train, valid and test never share a post."""
    from rlhf_builtins.tldr.synthetic import synthetic_dataset

    return synthetic_dataset(view, split, num_examples, seed)
