"""Dataset ``hf-dataset``: any data set ``datasets`` reads (a hub id, a local folder or file, a
``save_to_disk`` folder), its columns mapped onto a view, as text or in TRL's conversational
format. It reads TRL's standard sets as they are laid out (``trl-lib/tldr``,
``trl-lib/tldr-preference``, ``trl-lib/ultrafeedback_binarized``, ``Anthropic/hh-rlhf``); see
docs/datasets.md. This hook module imports pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from rlhf_builtins.jsonl import Columns, Shuffle
from rlhf_plugins import Dataset, StageContext, did_you_mean, hookimpl

View = Literal["sft", "prompts", "comparisons", "offline"]
ROLES = ("prompt", "completion", "chosen", "rejected", "reference", "reward", "label", "messages")
"""The view columns ``columns`` can map (``rlhf_builtins.hf_dataset.views``)."""


def known_roles(columns: dict[str, str] | None) -> dict[str, str] | None:
    """``columns`` when each key is a view column (``ROLES``); else a ``ValueError``."""
    for role in columns or {}:
        if role not in ROLES:
            raise ValueError(
                f"{role!r} is no view column{did_you_mean(role, list(ROLES))} "
                f"(view columns: {', '.join(ROLES)})"
            )
    return columns


@hookimpl
def register_datasets(register):
    register(
        "hf-dataset",
        hf_dataset,
        description="A hub id, local folder or file through datasets, mapped onto a view.",
    )


def hf_dataset(
    path: Annotated[
        str,
        Field(
            description="hub id, local folder or data file, save_to_disk folder, or a builder "
            "(json, csv, parquet) with data_files; relative to the recipe"
        ),
    ],
    view: Annotated[View, Field(description="columns to give: sft, prompts, comparisons, offline")],
    stage: StageContext | None = None,
    name: Annotated[str | None, Field(description="configuration (load_dataset's name)")] = None,
    split: Annotated[str | None, Field(description="split to read (unset: train)")] = None,
    data_dir: Annotated[
        str | None, Field(description="load_dataset's data_dir: a folder of path's files")
    ] = None,
    data_files: Annotated[
        str | list[str] | dict[str, str | list[str]] | None,
        Field(description="load_dataset's data_files: within path, or beside the recipe"),
    ] = None,
    columns: Annotated[Columns, AfterValidator(known_roles)] = None,
    limit: Annotated[int | None, Field(ge=1, description="source rows kept (unset: all)")] = None,
    shuffle: Shuffle = False,
) -> Dataset:
    """Rows of ``path`` (read with ``datasets.load_dataset(path, name, split=split,
    data_dir=data_dir, data_files=data_files)``, or ``load_from_disk`` for a ``save_to_disk``
    folder; relative local paths start at the recipe file) in ``view``. ``columns`` maps view
    columns to the source's (unmapped: the same name). Text stays text and conversational
    columns (lists of ``{role, content}`` messages) stay conversational; without a ``prompt``
    column the prompt is what ``chosen`` and ``rejected`` share. ``shuffle`` uses the recipe
    seed, then ``limit`` keeps that many source rows (pairs: the offline view gives two rows
    each)."""
    from rlhf_builtins.hf_dataset.loader import load_source
    from rlhf_builtins.hf_dataset.views import make_view

    source = load_source(
        path,
        stage.local_path if stage is not None else None,
        name=name,
        split=split,
        data_dir=data_dir,
        data_files=data_files,
    )
    seed = (stage.seed if stage is not None else 0) if shuffle else None
    return make_view(source, view, columns=dict(columns or {}), limit=limit, seed=seed)
