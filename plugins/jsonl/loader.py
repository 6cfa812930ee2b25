"""Loading local data files through ``datasets``.

Every problem with the data is a ``UserError`` naming the file and, where there is one, the
line (JSON Lines) or row and the column: an empty file, a line that is not a JSON object, and
a view column holding the wrong kind of value (``TEXT_COLUMNS`` need strings, or for
``prompt`` and the completions chat messages in TRL's conversational format, ``reward`` needs
numbers; every row is checked before shuffling and ``limit``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from rlhf_plugins import COMPLETION_COLUMNS, TEXT_COLUMNS, UserError, as_score, is_conversation

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def data_files(path: Path) -> tuple[str, list[Path]]:
    """The ``datasets`` builder name and the files for a file or a directory of files."""
    files = sorted(p for p in path.iterdir() if p.suffix in BUILDERS) if path.is_dir() else [path]
    suffixes = {p.suffix for p in files}
    if not files or not suffixes <= set(BUILDERS):
        raise UserError(f"{path}: expected .jsonl, .json, .csv or .parquet data")
    if len({BUILDERS[s] for s in suffixes}) > 1:
        raise UserError(f"{path}: mixes data formats ({', '.join(sorted(suffixes))})")
    return BUILDERS[files[0].suffix], files


@dataclass(frozen=True)
class Kind:
    """What a view column holds: ``fits`` tells a value; a column of one of the Arrow
    ``dtypes`` without nulls fits without reading a row into Python."""

    name: str
    fits: Callable[[Any], bool]
    dtypes: tuple[str, ...]


TEXT = Kind("text", lambda value: isinstance(value, str), ("string", "large_string"))
NUMBER = Kind(
    "a number",
    lambda value: as_score(value) is not None,
    tuple(f"{t}{b}" for t in ("int", "uint", "float") for b in (8, 16, 32, 64)),
)
CHAT = Kind(
    "text or chat messages",
    lambda value: isinstance(value, str) or is_conversation(value),
    ("string", "large_string"),
)
COLUMN_KINDS = {
    **dict.fromkeys(TEXT_COLUMNS, TEXT),
    **dict.fromkeys(("prompt", *COMPLETION_COLUMNS), CHAT),
    "reward": NUMBER,
}


def value_problem(column: str, value: Any, columns: dict[str, str]) -> str | None:
    """None when ``value`` fits view column ``column`` (a key of ``COLUMN_KINDS``); else what
    is wrong, naming the source column (``columns`` maps view names to source names) and the
    view's."""
    kind = COLUMN_KINDS[column]
    if kind.fits(value):
        return None
    got = "null" if value is None else f"{type(value).__name__} {value!r}"
    source = columns.get(column, column)
    name = f"'{source}'" + (f" (the {column} column)" if source != column else "")
    return f"column {name} is {got}, not {kind.name}"


def json_lines(file: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a JSON Lines file, as ``datasets``
    reads them (blank lines are no rows)."""
    try:
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as exc:
        raise UserError(f"{file}: not UTF-8 text ({exc})") from None


def json_problem(file: Path, columns: dict[str, str]) -> str | None:
    """Why ``file`` (JSON Lines, or one JSON array in a ``.json`` file) is not readable data:
    the first line that is not a JSON object or whose view column holds the wrong kind of
    value (``value_problem``), or that it has no rows; None if none of these."""
    if file.suffix == ".json":
        text = file.read_text(encoding="utf-8", errors="replace")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                return f"{file}: not valid JSON ({exc})"
            return None if rows else f"{file}: the file is empty (an empty JSON array)"
    rows = 0
    for number, line in json_lines(file):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"{file}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
        if not isinstance(row, dict):
            return f"{file}: line {number} is not a JSON object (got {type(row).__name__})"
        for column in COLUMN_KINDS:
            source = columns.get(column, column)
            if source in row and (problem := value_problem(column, row[source], columns)):
                return f"{file}: line {number}: {problem}"
        rows += 1
    return None if rows else f"{file}: the file is empty (only blank lines)"


def read(builder: str, files: list[Path], columns: dict[str, str]) -> datasets.Dataset:
    """All ``files`` as one dataset; an empty or unreadable file is a ``UserError`` naming it
    (for JSON the line too, see ``json_problem``). A JSON view column of mixed types (which
    ``datasets`` decodes, turning ``"0.5"`` into ``0.5``) is checked in the files themselves."""
    for file in files:
        if file.stat().st_size == 0:
            raise UserError(f"{file}: the file is empty")
    problems = (json_problem(f, columns) for f in files) if builder == "json" else iter(())
    try:
        data = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as exc:
        where = files[0] if len(files) == 1 else files[0].parent
        cause = exc.__cause__ or exc
        reason = next(filter(None, problems), f"{where}: could not be read as {builder}: {cause}")
        raise UserError(reason) from None
    sources = [columns.get(c, c) for c in COLUMN_KINDS]
    mixed = any(
        not isinstance(data.features[c], datasets.Value) for c in sources if c in data.features
    )
    if mixed and (reason := next(filter(None, problems), None)):
        raise UserError(reason)
    return data


def row_location(path: Path, builder: str, files: list[Path], row: int) -> str:
    """Where row ``row`` (0-based, over every file in order) comes from: ``<file>: line N`` for
    JSON Lines files, ``<file or directory>: row N`` otherwise."""
    if builder == "json" and all(f.suffix == ".jsonl" for f in files):
        lines = ((file, number) for file in files for number, _ in json_lines(file))
        for index, (file, number) in enumerate(lines):
            if index == row:
                return f"{file}: line {number}"
    return f"{files[0] if len(files) == 1 else path}: row {row + 1}"


def first_bad_row(data: datasets.Dataset, column: str, kind: Kind) -> int | None:
    """The index of the first row whose ``column`` value is not of ``kind``, or None."""
    dtype = getattr(data.features[column], "dtype", None)
    if dtype in kind.dtypes and data.data.column(column).null_count == 0:
        return None
    return next((i for i, value in enumerate(data[column]) if not kind.fits(value)), None)


def check_values(
    data: datasets.Dataset, columns: dict[str, str], locate: Callable[[int], str]
) -> None:
    """Raise a ``UserError`` at the first row whose view column holds the wrong kind of value
    (``value_problem``), naming where it is (``locate``)."""
    for column, kind in COLUMN_KINDS.items():
        if column in data.column_names and (row := first_bad_row(data, column, kind)) is not None:
            problem = value_problem(column, data[row][column], columns)
            raise UserError(f"{locate(row)}: {problem}")


def load_local(
    path: Path, *, columns: dict[str, str], limit: int | None, shuffle_seed: int | None
) -> datasets.Dataset:
    """Load, rename ``columns`` (view name -> source name), check the view columns' values,
    shuffle, then cut to ``limit``."""
    builder, files = data_files(path)
    data = read(builder, files, columns)
    missing = [source for source in columns.values() if source not in data.column_names]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(data.column_names)})"
        )
    renames = {source: target for target, source in columns.items() if source != target}
    clashes = [t for t in renames.values() if t in data.column_names and t not in renames]
    data = data.remove_columns(clashes).rename_columns(renames)
    check_values(data, columns, lambda row: row_location(path, builder, files, row))
    if shuffle_seed is not None:
        data = data.shuffle(seed=shuffle_seed)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return data
