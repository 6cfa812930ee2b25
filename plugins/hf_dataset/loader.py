"""Loading ``hf-dataset``'s source: one split of whatever ``datasets`` reads.

``path`` is, in this order: an existing local ``save_to_disk`` folder (``load_from_disk``), a
local data file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, ``.arrow``, read by the builder
of its suffix), a local folder (``load_dataset(folder)``: ``train.jsonl``/``test.jsonl``,
``data/train-*.parquet``, ... as the hub lays them out), a packaged builder (``json``, ``csv``,
``parquet``, ``arrow``) whose ``data_files`` are relative to the recipe, or a hub id. Every
failure is one ``UserError`` naming the path (and the split).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_builtins.tldr.loader import pick_split
from rlhf_plugins import UserError

BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
"""Data file suffix -> the ``datasets`` builder reading it."""
PACKAGED = frozenset(BUILDERS.values())
"""Builder names a recipe can give as ``path`` with ``data_files``."""
DEFAULT_SPLIT = "train"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

DataFiles = str | list[str] | dict[str, str | list[str]] | None


@dataclass(frozen=True)
class Source:
    """One split of a loaded data set and how to name it in messages."""

    data: Any
    """A ``datasets.Dataset``."""
    where: str
    """``'trl-lib/tldr' (split 'train')``, ``/data/hh (split 'test')``, ``/data/pairs.jsonl``."""


def load_source(
    path: str,
    local_path: Callable[[str], Path | None] | None,
    *,
    name: str | None,
    split: str | None,
    data_dir: str | None = None,
    data_files: DataFiles = None,
) -> Source:
    """One split of ``path`` (see the module docstring); ``local_path`` resolves a recipe-relative
    path to an existing one (None: relative to the working directory)."""
    local = (local_path or _existing)(path)
    if local is not None and local.is_dir() and _saved(local):
        _refuse(local, "a save_to_disk folder", name=name, data_dir=data_dir, data_files=data_files)
        return _from_disk(local, split)
    if local is not None and local.is_file():
        _refuse(local, "a data file", name=name, data_dir=data_dir, data_files=data_files)
        builder = BUILDERS.get(Path(local.name.removesuffix(".gz")).suffix)
        if builder is None:
            raise UserError(f"{local}: expected a {', '.join(BUILDERS)} file (or .gz) or a folder")
        if split not in (None, DEFAULT_SPLIT):
            raise UserError(
                f"{local}: a single data file is one split ('train'); leave out 'split' or "
                "give a folder holding one file per split"
            )
        return _load(str(local), builder, {"data_files": str(local)}, DEFAULT_SPLIT)
    options = {"name": name, "data_dir": data_dir, "data_files": data_files}
    if local is not None:
        return _load(str(local), str(local), options, split or DEFAULT_SPLIT)
    if path in PACKAGED:
        if data_files is None:
            raise UserError(f"path {path!r} (a datasets builder) needs data_files")
        files = _beside_recipe(data_files, local_path or _existing)
        return _load(path, path, {"data_files": files}, split or DEFAULT_SPLIT)
    if Path(path).suffix in BUILDERS or not _HUB_ID.match(path):
        raise UserError(
            f"hf-dataset path {path!r}: no such file or folder (relative paths start at the "
            "recipe file)"
        )
    hint = "; no local file or folder has that name either (relative to the recipe file)"
    return _load(path, path, options, split or DEFAULT_SPLIT, hint)


def _existing(value: str) -> Path | None:
    path = Path(value).expanduser()
    return path.resolve() if path.exists() else None


def _saved(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _refuse(local: Path, what: str, **given: Any) -> None:
    """A ``UserError`` for settings that mean nothing for a local file or saved folder."""
    names = [key for key, value in given.items() if value is not None]
    if names:
        raise UserError(f"{local} is {what}: leave out {' and '.join(map(repr, names))}")


def _beside_recipe(data_files: DataFiles, local_path: Callable[[str], Path | None]) -> Any:
    """``data_files`` with each existing file resolved from the recipe's folder (globs and
    missing files as given, for ``datasets`` to report)."""
    if isinstance(data_files, dict):
        return {key: _beside_recipe(value, local_path) for key, value in data_files.items()}
    if isinstance(data_files, list):
        return [_beside_recipe(value, local_path) for value in data_files]
    found = local_path(data_files)
    return str(found) if found is not None else data_files


def _from_disk(folder: Path, split: str | None) -> Source:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise UserError(
            f"{folder}: could not be read with datasets.load_from_disk: {exc}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = split or DEFAULT_SPLIT
        return _nonempty(
            Source(pick_split(loaded, wanted, str(folder)), f"{folder} (split {wanted!r})")
        )
    if split is not None:
        raise UserError(f"{folder}: a single saved dataset has no splits; leave out 'split'")
    return _nonempty(Source(loaded, str(folder)))


def _load(label: str, path: str, options: dict[str, Any], split: str, hint: str = "") -> Source:
    """``datasets.load_dataset(path, split=split, **options)`` (None options left out); a
    ``UserError`` with the cause (and ``hint``) when it fails."""
    import datasets

    kwargs = {key: value for key, value in options.items() if value is not None}
    try:
        data = datasets.load_dataset(path, split=split, **kwargs)
    except Exception as exc:
        cause = str(exc.__cause__ or exc) or type(exc).__name__
        raise UserError(
            f"could not load {label!r} (split {split!r}) with datasets.load_dataset: {cause}{hint}"
        ) from None
    return _nonempty(Source(data, f"{label!r} (split {split!r})"))


def _nonempty(source: Source) -> Source:
    if len(source.data) == 0:
        raise UserError(f"{source.where}: no rows")
    return source
