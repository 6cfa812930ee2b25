"""The ``tldr`` loader: every shape the TL;DR data comes in, read into records, then a view.

Row shapes, recognised by their keys:

========================  ===============================  ===========
shape                     keys                             records
========================  ===============================  ===========
OpenAI comparisons        ``info``, ``summaries``,         comparisons
                          ``choice`` (+ ``split``)
CarperAI comparisons      ``prompt``, ``chosen``,          comparisons
                          ``rejected``
flattened comparisons     ``post``, ``chosen``,            comparisons
                          ``rejected`` (+ subreddit/title)
CarperAI tldr             ``prompt``, ``label``            summaries
OpenAI tldr_3_filtered    ``post``, ``summary``            summaries
                          (+ subreddit/title/id)
========================  ===============================  ===========

Sources: a hub id (``datasets.load_dataset``), a ``.jsonl``/``.json`` file, or a directory
(``save_to_disk`` output, ``<split>.jsonl`` files, any ``*.jsonl``/``*.json`` files, or a
hub-shaped folder of data files that ``datasets.load_dataset`` reads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_builtins.tldr.views import (
    COMPARISON_VIEWS,
    Compared,
    PromptRenderer,
    Record,
    Summarized,
    check_view,
    clean_summary,
    comparison_is_valid,
    post_from_fields,
    post_from_prompt,
    record_kind,
    select,
    to_dataset,
    view_columns,
)
from rlhf_plugins import UserError, did_you_mean

HUB_DEFAULTS = {
    "summaries": "CarperAI/openai_summarize_tldr",
    "comparisons": "CarperAI/openai_summarize_comparisons",
}
DEFAULT_HUB_SPLIT = "train"
DATA_SUFFIXES = (".jsonl", ".json")
METADATA_FILES = {"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"}
"""JSON files in a dataset folder that describe the data rather than hold it."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Row = Mapping[str, Any]


class NotText(ValueError):
    """A field that must hold text holds something else (null, a number, a list)."""

    def __init__(self, key: str, value: Any):
        got = "null" if value is None else f"{type(value).__name__} {value!r}"
        super().__init__(f"column '{key}' is {got}, not text")


def _text(row: Row, key: str, label: str | None = None) -> str:
    """``row[key]``, which must be a string; ``label`` names the field in the error."""
    value = row[key]
    if not isinstance(value, str):
        raise NotText(label or key, value)
    return value


def _openai_comparison(row: Row) -> Record | None:
    info, summaries, choice = row["info"], row["summaries"], int(row["choice"])
    if not info.get("post"):
        return None  # a CNN/DM article batch, not a Reddit post
    texts = [
        clean_summary(_text(s, "text", f"summaries[{i}].text")) for i, s in enumerate(summaries)
    ]
    return Compared(
        post_from_fields(
            info.get("subreddit"), info.get("title"), _text(info, "post", "info.post")
        ),
        texts[choice],
        texts[1 - choice],
    )


def _prompt_comparison(row: Row) -> Record:
    return Compared(
        post_from_prompt(_text(row, "prompt")),
        clean_summary(_text(row, "chosen")),
        clean_summary(_text(row, "rejected")),
    )


def _post_comparison(row: Row) -> Record:
    return Compared(
        post_from_fields(row.get("subreddit"), row.get("title"), _text(row, "post")),
        clean_summary(_text(row, "chosen")),
        clean_summary(_text(row, "rejected")),
    )


def _prompt_summary(row: Row) -> Record:
    return Summarized(post_from_prompt(_text(row, "prompt")), clean_summary(_text(row, "label")))


def _post_summary(row: Row) -> Record:
    return Summarized(
        post_from_fields(row.get("subreddit"), row.get("title"), _text(row, "post")),
        clean_summary(_text(row, "summary")),
    )


@dataclass(frozen=True)
class Shape:
    """A row layout: its name, the keys that identify it, the kind of records it gives."""

    name: str
    keys: frozenset[str]
    kind: str
    convert: Callable[[Row], Record | None]


SHAPES = (
    Shape(
        "OpenAI comparisons",
        frozenset({"info", "summaries", "choice"}),
        "comparisons",
        _openai_comparison,
    ),
    Shape(
        "CarperAI comparisons",
        frozenset({"prompt", "chosen", "rejected"}),
        "comparisons",
        _prompt_comparison,
    ),
    Shape(
        "flattened comparisons",
        frozenset({"post", "chosen", "rejected"}),
        "comparisons",
        _post_comparison,
    ),
    Shape("CarperAI tldr", frozenset({"prompt", "label"}), "summaries", _prompt_summary),
    Shape("OpenAI tldr_3_filtered", frozenset({"post", "summary"}), "summaries", _post_summary),
)


def shape_of(keys: Iterable[str], where: str) -> Shape:
    """The shape whose identifying keys a row has; a UserError naming the keys otherwise."""
    keys = set(keys)
    for shape in SHAPES:
        if shape.keys <= keys:
            return shape
    known = "; ".join(f"{shape.name}: {', '.join(sorted(shape.keys))}" for shape in SHAPES)
    raise UserError(
        f"{where}: unknown TL;DR format with keys {', '.join(sorted(keys)) or '(none)'}"
        f" (expected one of: {known})"
    )


def to_records(
    rows: Iterable[Row],
    where: str,
    split: str | None = None,
    positions: Sequence[str] | None = None,
) -> list[Record]:
    """Convert rows of one shape. Rows carrying a ``split`` field (OpenAI comparison batches)
    are kept only when it equals ``split`` (all of them when ``split`` is None). A bad row is
    a ``UserError`` naming ``where``, its position (``positions[i]``, e.g. ``line 7``;
    ``row i+1`` without them) and the field."""
    records: list[Record] = []
    shape = None
    for index, row in enumerate(rows):
        if shape is None:
            shape = shape_of(row.keys(), where)
        if split is not None and row.get("split", split) != split:
            continue
        position = positions[index] if positions else f"row {index + 1}"
        try:
            record = shape.convert(row)
        except NotText as exc:
            raise UserError(f"{where}: {position}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UserError(
                f"{where}: {position} is malformed ({type(exc).__name__}: {exc})"
            ) from None
        if record is not None:
            records.append(record)
    return records


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSON Lines file, or of a file holding one JSON array of objects, and the
    position of each (``line N`` in JSON Lines, where blank lines are skipped; ``row N`` in an
    array). A line that is not a JSON object is a ``UserError`` naming its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not JSON Lines or a JSON array ({exc})") from None
        positions = [f"row {i}" for i in range(1, len(rows) + 1)]
    else:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        rows, positions = [], [f"line {n}" for n, _ in lines]
        for number, line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}: line {number} is not JSON ({exc.msg}, column {exc.colno}); "
                    "expected JSON Lines or a JSON array"
                ) from None
    for row, position in zip(rows, positions, strict=True):
        if not isinstance(row, dict):
            raise UserError(f"{path}: {position} is not a JSON object (every row must be one)")
    return rows, positions


def _has_split_field(rows: list[dict]) -> bool:
    return bool(rows) and "split" in rows[0]


def read_file(path: Path, split: str | None) -> list[Record]:
    rows, positions = read_rows(path)
    if not rows:
        raise UserError(f"{path}: the file is empty (no rows)")
    if split is not None and not _has_split_field(rows):
        raise UserError(
            f"{path}: this file has no splits; leave out 'split' (or use a directory "
            f"with a {split}.jsonl file)"
        )
    return to_records(rows, str(path), split, positions)


def pick_split(splits: Mapping[str, Any], split: str | None, where: str) -> Any:
    """One split of a ``DatasetDict`` (``train`` when ``split`` is None)."""
    wanted = split or DEFAULT_HUB_SPLIT
    if wanted not in splits:
        raise UserError(
            f"{where} has no split {wanted!r}{did_you_mean(wanted, list(splits))} "
            f"(splits: {', '.join(splits)})"
        )
    return splits[wanted]


def read_hub(source: str, split: str | None) -> list[Record]:
    """``datasets.load_dataset(source)`` (a hub id or a hub-shaped local folder), one split."""
    import datasets

    try:
        loaded = datasets.load_dataset(source)
    except Exception as exc:
        raise UserError(
            f"could not load dataset {source!r} with datasets.load_dataset "
            f"({type(exc).__name__}: {exc}); a local path must exist"
        ) from None
    return to_records(pick_split(loaded, split, source), source)


def read_saved(path: Path, split: str | None) -> list[Record]:
    """A ``save_to_disk`` folder: a ``DatasetDict`` (pick ``split``) or one ``Dataset``."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        return to_records(pick_split(loaded, split, str(path)), str(path))
    if split is not None:
        raise UserError(f"{path}: a single saved dataset has no splits; leave out 'split'")
    return to_records(loaded, str(path))


def read_directory(path: Path, split: str | None, wants: str) -> list[Record]:
    """A folder: saved dataset, ``<split>.jsonl``, the data files whose records give ``wants``
    (summaries or comparisons), or else a hub-shaped folder for ``datasets.load_dataset``."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return read_saved(path, split)
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in DATA_SUFFIXES and p.name not in METADATA_FILES
    )
    if not files:
        return read_hub(str(path), split)
    for suffix in DATA_SUFFIXES:
        if split is not None and (path / f"{split}{suffix}").is_file():
            return read_file(path / f"{split}{suffix}", None)
    found: dict[str, list[Record]] = {}
    for file in files:
        rows, positions = read_rows(file)
        if not rows:
            continue
        if split is not None and not _has_split_field(rows):
            raise UserError(
                f"{path} has no {split}.jsonl and {file.name} has no splits; "
                "leave out 'split' or name the file as the source"
            )
        kind = shape_of(rows[0].keys(), str(file)).kind
        found.setdefault(kind, []).extend(to_records(rows, str(file), split, positions))
    if wants not in found:
        kinds = ", ".join(sorted(found)) or "no rows"
        raise UserError(f"{path} holds {kinds} but no {wants}; view needs {wants}")
    return found[wants]


def read_source(source: str, split: str | None, wants: str) -> list[Record]:
    """Records of ``source``: a local file or folder when that path exists, else a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path.resolve(), split)
    if path.is_dir():
        return read_directory(path.resolve(), split, wants)
    if path.suffix in DATA_SUFFIXES or not _HUB_ID.match(source):
        raise UserError(
            f"tldr source {source!r}: no such file or directory "
            "(relative paths are relative to the recipe file)"
        )
    return read_hub(source, split)


def load_tokenizer(name: str | None) -> Any:
    """A fast Hugging Face tokenizer from a local path or hub id, or None."""
    if name is None:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise UserError(
            f"tldr: cannot load tokenizer {name!r} ({type(exc).__name__}: {exc})"
        ) from None
    if not tokenizer.is_fast:
        raise UserError(
            f"tldr: tokenizer {name!r} is not a fast tokenizer (offsets are needed "
            "to truncate posts)"
        )
    return tokenizer


def load_tldr(
    *,
    source: str | None,
    view: str,
    split: str | None,
    limit: int | None,
    shuffle: bool,
    seed: int,
    max_prompt_tokens: int | None,
    tokenizer: str | None,
    min_summary_words: int,
) -> Any:
    """The ``tldr`` dataset (see the factory's docstring in ``rlhf_builtins.tldr``)."""
    wants = "comparisons" if view in COMPARISON_VIEWS else "summaries"
    source = source or HUB_DEFAULTS[wants]
    renderer = PromptRenderer(max_prompt_tokens, load_tokenizer(tokenizer))
    records = read_source(source, split, wants)
    if not records:
        raise UserError(
            f"tldr source {source!r} has no rows" + (f" in split {split!r}" if split else "")
        )
    check_view(view, record_kind(records), f"tldr source {source!r}")
    if wants == "comparisons":
        records = [r for r in records if comparison_is_valid(r, min_summary_words)]
    records = select(records, shuffle=shuffle, seed=seed, limit=limit)
    return to_dataset(view_columns(records, view, renderer), f"tldr source {source!r}")
