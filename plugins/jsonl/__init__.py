"""Dataset ``jsonl``: a local jsonl/json/csv/parquet file (or a directory of them) loaded with
``datasets``, with columns renamed into a view (``columns = { prompt = "question" }``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import Dataset, LocalPath, StageContext, hookimpl

Columns = Annotated[
    dict[str, str] | None,
    Field(description='view column -> source column, e.g. { prompt = "question" }'),
]
"""The ``columns`` setting, shared with ``hf-dataset``: each view column -> the source column
it comes from."""

Shuffle = Annotated[bool, Field(description="shuffle with the recipe seed before limit")]
"""The ``shuffle`` setting, shared with ``hf-dataset``."""


@hookimpl
def register_datasets(register):
    register("jsonl", jsonl, description="Local jsonl/json/csv/parquet data with column mapping.")


def jsonl(
    stage: StageContext,
    path: Annotated[
        LocalPath, Field(description="a data file or a directory of them, relative to the recipe")
    ],
    columns: Columns = None,
    limit: Annotated[int | None, Field(ge=1, description="rows kept (unset: all)")] = None,
    shuffle: Shuffle = False,
) -> Dataset:
    """Rows of ``path`` (relative to the recipe). ``columns`` maps each view column to the source
    column it comes from; other columns are kept. ``shuffle`` uses the recipe seed and happens
    before ``limit``."""
    from rlhf_builtins.jsonl.loader import load_local

    return load_local(
        path, columns=columns or {}, limit=limit, shuffle_seed=stage.seed if shuffle else None
    )
