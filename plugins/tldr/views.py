"""TL;DR records, the prompt format and the four views, shared by ``tldr`` and ``tldr-synthetic``.

Prompt format (exactly): ``SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:``,
with no trailing space. Every summary in a view (``completion``, ``reference``, ``chosen``,
``rejected``) starts with exactly one space, so ``prompt + completion`` is the text a model reads
and byte-level BPE tokenizers see the usual `` word`` tokens after ``TL;DR:``.

Only the final conversion to a ``datasets.Dataset`` imports ``datasets``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_plugins import UserError

SUFFIX = "\nTL;DR:"
VIEWS = ("sft", "prompts", "comparisons", "offline")
VIEW_COLUMNS = {
    "sft": ("prompt", "completion"),
    "prompts": ("prompt", "reference"),
    "comparisons": ("prompt", "chosen", "rejected"),
    "offline": ("prompt", "completion", "reward"),
}
SUMMARY_VIEWS = ("sft", "prompts")
"""Views built from posts with one reference summary."""
COMPARISON_VIEWS = ("comparisons", "offline")
"""Views built from pairs of summaries with a preference."""
_PREFIX = re.compile(r"^\s*TL;DR:\s*")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Post:
    """A Reddit post. ``subreddit``/``title`` are None for a prompt whose layout could not be
    parsed: then ``body`` is the whole text before ``TL;DR:`` and is truncated as a whole."""

    subreddit: str | None
    title: str | None
    body: str

    def head(self) -> str:
        """The prompt without its ``\\nTL;DR:`` suffix."""
        if self.subreddit is None:
            return self.body
        return f"SUBREDDIT: r/{self.subreddit}\nTITLE: {self.title}\nPOST: {self.body}"


@dataclass(frozen=True)
class Summarized:
    """A post with its reference summary (sft and prompts views)."""

    post: Post
    summary: str


@dataclass(frozen=True)
class Compared:
    """A post with a preferred and a rejected summary (comparisons and offline views)."""

    post: Post
    chosen: str
    rejected: str


Record = Summarized | Compared

_LAYOUT = re.compile(
    r"^SUBREDDIT: r/(?P<subreddit>[^\n]*)\nTITLE: (?P<title>[^\n]*)\nPOST: "
    r"(?P<body>.*?)\s*TL;DR:\s*$",
    re.DOTALL,
)


def post_from_fields(subreddit: Any, title: Any, body: Any) -> Post:
    """A post from raw fields (None becomes an empty string; whitespace is trimmed)."""
    return Post(str(subreddit or "").strip(), str(title or "").strip(), str(body or "").strip())


def post_from_prompt(prompt: str) -> Post:
    """Parse a prompt already in the TL;DR layout (CarperAI's ``prompt`` column). A prompt in
    another layout is kept whole (everything before its last ``TL;DR:``)."""
    match = _LAYOUT.match(prompt.strip())
    if match:
        return post_from_fields(match["subreddit"], match["title"], match["body"])
    head, _, _ = prompt.rpartition("TL;DR:")
    return Post(None, None, (head or prompt).strip())


def clean_summary(text: Any) -> str:
    """A summary without surrounding whitespace or a leading ``TL;DR:``."""
    return _PREFIX.sub("", str(text or "")).strip()


def as_completion(summary: str) -> str:
    """The text that follows ``TL;DR:`` in a view: one space, then the summary."""
    return " " + summary


def word_count(text: str) -> int:
    return len(text.split())


Spans = Callable[[str], list[tuple[int, int]]]
"""Text -> (start, end) character spans of its tokens."""


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words, the fallback token count when no tokenizer is given."""
    return [m.span() for m in _WORD.finditer(text)]


def tokenizer_spans(tokenizer: Any) -> Spans:
    """Token spans from a fast Hugging Face tokenizer's offset mapping (no special tokens)."""

    def spans(text: str) -> list[tuple[int, int]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]

    return spans


class PromptRenderer:
    """Renders posts as prompts of at most ``max_tokens`` tokens (None: no limit).

    Truncation cuts the end of the text before the suffix (the post first, the title only when
    the post is gone) at a token boundary, then appends ``\\nTL;DR:``, so the suffix always
    survives. With a tokenizer, tokens are counted on the final prompt (BPE merges across the
    cut are re-checked); without one, whitespace-separated words are counted.
    """

    def __init__(self, max_tokens: int | None = None, tokenizer: Any = None):
        self.max_tokens = max_tokens
        self.spans: Spans = tokenizer_spans(tokenizer) if tokenizer is not None else word_spans
        if max_tokens is not None and max_tokens <= len(self.spans(SUFFIX.strip())):
            raise UserError(
                f"max_prompt_tokens={max_tokens} leaves no room for the post "
                f"before the '{SUFFIX.strip()}' suffix"
            )

    def count(self, text: str) -> int:
        return len(self.spans(text))

    def __call__(self, post: Post) -> str:
        head = post.head()
        prompt = head + SUFFIX
        if self.max_tokens is None or self.count(prompt) <= self.max_tokens:
            return prompt
        spans = self.spans(head)
        keep = min(len(spans), max(0, self.max_tokens - self.count(SUFFIX)))
        while True:
            cut = head[: spans[keep - 1][1]].rstrip() if keep > 0 else ""
            prompt = cut + SUFFIX
            if keep == 0 or self.count(prompt) <= self.max_tokens:
                return prompt
            keep -= 1


def comparison_is_valid(pair: Compared, min_words: int) -> bool:
    """The filter of trlX's summarize_rlhf (``create_comparison_dataset``): the two summaries
    differ and each has at least ``min_words`` words."""
    return (
        pair.chosen != pair.rejected
        and word_count(pair.chosen) >= min_words
        and word_count(pair.rejected) >= min_words
    )


def record_kind(records: Sequence[Record]) -> str:
    return "comparisons" if records and isinstance(records[0], Compared) else "summaries"


def check_view(view: str, kind: str, source: str) -> None:
    """Raise a UserError when ``view`` cannot be built from records of ``kind``."""
    if view not in VIEWS:
        raise UserError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    allowed = COMPARISON_VIEWS if kind == "comparisons" else SUMMARY_VIEWS
    if view not in allowed:
        other = (
            "a comparisons source" if kind == "summaries" else "a source with reference summaries"
        )
        raise UserError(
            f"{source} holds {kind}, which give the views {' and '.join(allowed)}; "
            f"view {view!r} needs {other}"
        )


def select(records: list[Record], *, shuffle: bool, seed: int, limit: int | None) -> list[Record]:
    """Shuffle (seeded) then keep the first ``limit`` records."""
    if shuffle:
        records = list(records)
        random.Random(seed).shuffle(records)
    if limit is not None:
        records = records[:limit]
    return records


def view_columns(
    records: Sequence[Record], view: str, render: Callable[[Post], str]
) -> dict[str, list]:
    """The columns of ``view`` (see ``VIEW_COLUMNS``); offline gives two rows per pair,
    the chosen summary with reward +1.0 and the rejected one with -1.0."""
    columns: dict[str, list] = {name: [] for name in VIEW_COLUMNS[view]}
    for record in records:
        prompt = render(record.post)
        if view == "offline":
            for text, reward in ((record.chosen, 1.0), (record.rejected, -1.0)):
                columns["prompt"].append(prompt)
                columns["completion"].append(as_completion(text))
                columns["reward"].append(reward)
            continue
        columns["prompt"].append(prompt)
        if view == "comparisons":
            columns["chosen"].append(as_completion(record.chosen))
            columns["rejected"].append(as_completion(record.rejected))
        else:
            target = "completion" if view == "sft" else "reference"
            columns[target].append(as_completion(record.summary))
    return columns


def to_dataset(columns: dict[str, list], source: str) -> Any:
    """A ``datasets.Dataset`` of the columns; a UserError when nothing is left."""
    if not next(iter(columns.values())):
        raise UserError(f"{source}: no examples left after filtering")
    import datasets

    return datasets.Dataset.from_dict(columns)
