"""Loading local data files through ``datasets``."""

from __future__ import annotations

from pathlib import Path

import datasets

from rlhf_plugins import UserError

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def data_files(path: Path) -> tuple[str, list[str]]:
    """The ``datasets`` builder name and the files for a file or a directory of files."""
    files = sorted(p for p in path.iterdir() if p.suffix in BUILDERS) if path.is_dir() else [path]
    suffixes = {p.suffix for p in files}
    if not files or not suffixes <= set(BUILDERS):
        raise UserError(f"{path}: expected .jsonl, .json, .csv or .parquet data")
    if len({BUILDERS[s] for s in suffixes}) > 1:
        raise UserError(f"{path}: mixes data formats ({', '.join(sorted(suffixes))})")
    return BUILDERS[files[0].suffix], [str(p) for p in files]


def load_local(
    path: Path, *, columns: dict[str, str], limit: int | None, shuffle_seed: int | None
) -> datasets.Dataset:
    """Load, rename ``columns`` (view name -> source name), shuffle, then cut to ``limit``."""
    builder, files = data_files(path)
    try:
        data = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as exc:
        raise UserError(f"{path}: could not be read as {builder}: {exc}") from exc
    missing = [source for source in columns.values() if source not in data.column_names]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(data.column_names)})"
        )
    renames = {source: target for target, source in columns.items() if source != target}
    clashes = [t for t in renames.values() if t in data.column_names and t not in renames]
    data = data.remove_columns(clashes).rename_columns(renames)
    if shuffle_seed is not None:
        data = data.shuffle(seed=shuffle_seed)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return data
