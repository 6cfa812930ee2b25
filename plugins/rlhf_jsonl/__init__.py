"""Dataset ``jsonl``: a local jsonl/json/csv/parquet file (or a directory of them) loaded with
``datasets``, with columns renamed into a view (``columns = { prompt = "question" }``)."""

from __future__ import annotations

from pathlib import Path

from rlhf_plugins import Dataset, StageContext, hookimpl


@hookimpl
def register_datasets(register):
    register("jsonl", jsonl, description="Local jsonl/json/csv/parquet data with column mapping.")


def jsonl(
    stage: StageContext,
    path: Path,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    shuffle: bool = False,
) -> Dataset:
    """Rows of ``path`` (relative to the recipe). ``columns`` maps each view column to the source
    column it comes from; other columns are kept. ``shuffle`` uses the recipe seed and happens
    before ``limit``."""
    from rlhf_jsonl.loading import load_local

    return load_local(
        path, columns=columns or {}, limit=limit, shuffle_seed=stage.seed if shuffle else None
    )
