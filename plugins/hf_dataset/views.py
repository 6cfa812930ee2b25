"""``hf-dataset``'s views: a loaded split's columns, named by ``columns`` (view column ->
source column; unmapped: the same name), given as ``sft``, ``prompts``, ``comparisons`` or
``offline``.

A view is made the first way the columns allow (``WAYS``, in order):

- ``sft`` (prompt, completion): ``prompt`` + ``completion``; ``messages`` (the last turn, an
  assistant's, is the completion); ``chosen`` + ``rejected`` (chosen is the completion);
- ``prompts`` (prompt, reference, the source's other columns): ``prompt`` (reference: the
  ``reference``, ``completion`` or ``chosen`` column, when there is one); ``messages``;
  ``chosen`` + ``rejected``;
- ``comparisons`` (prompt, chosen, rejected): ``chosen`` + ``rejected``;
- ``offline`` (prompt, completion, reward): ``prompt`` + ``completion`` + ``reward``;
  ``prompt`` + ``completion`` + ``label`` (TRL's unpaired preference: true +1.0, false -1.0);
  ``chosen`` + ``rejected`` (two rows per pair, +1.0 and -1.0).

``chosen`` + ``rejected`` without a ``prompt`` column is TRL's implicit-prompt preference
layout: the prompt is what they share (``shared_prompt``). Text stays text and conversational
columns (lists of ``{role, content}`` messages, TRL's conversational format) stay
conversational; ``reference`` is always text (messages: their contents).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlhf_builtins.hf_dataset import ROLES
from rlhf_builtins.hf_dataset.loader import Source
from rlhf_plugins import UserError

DIALOGUE = ("prompt", "completion", "chosen", "rejected")
"""Roles that are text or messages, all of one kind in a view."""
KINDS = {
    **dict.fromkeys((*DIALOGUE, "reference"), ("text", "messages")),
    "messages": ("messages",),
    "reward": ("number",),
    "label": ("bool",),
}
"""Role -> the kinds of column it may be (``column_kind``)."""
SHOWN = {"messages": "a list of {role, content} messages", "number": "numbers", "bool": "booleans"}
"""How messages name a kind of column."""
ASSISTANT_TURN = "\n\nAssistant:"
"""Where an assistant turn starts in Anthropic's HH text (``\\n\\nHuman: ...\\n\\nAssistant: ...``)."""

Columns = dict[str, list]
Build = Callable[[Columns, Sequence[int]], Columns]


def shared_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | None:
    """``(prompt, chosen rest, rejected rest)`` of a pair without a prompt column, or None when
    they share no prompt.

    Messages: the turns both start with, without trailing assistant turns (so each side keeps
    its answer; ``ultrafeedback_binarized``: the first user turn). Text: the characters both
    start with, up to the end of its last ``\\n\\nAssistant:`` (``Anthropic/hh-rlhf``); without
    one, up to its last whitespace, which goes to the completions (`` word``, as TRL's
    ``extract_prompt`` moves a space), so no word is cut."""
    if isinstance(chosen, str):
        same = (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
        prefix = chosen[: next(same, min(len(chosen), len(rejected)))]
        turn = prefix.rfind(ASSISTANT_TURN)
        if turn >= 0:
            cut = turn + len(ASSISTANT_TURN)
        else:
            cut = max((i for i, char in enumerate(prefix) if char.isspace()), default=0)
        if not prefix[:cut].strip():
            return None
        return chosen[:cut], chosen[cut:], rejected[cut:]
    turns = 0
    while turns < min(len(chosen), len(rejected)) and chosen[turns] == rejected[turns]:
        turns += 1
    while turns > 0 and chosen[turns - 1].get("role") == "assistant":
        turns -= 1
    if turns == 0 or turns in (len(chosen), len(rejected)):
        return None
    return chosen[:turns], chosen[turns:], rejected[turns:]


def as_text(value: Any) -> str:
    """A text column's value, or the contents of a message list (one paragraph each)."""
    if isinstance(value, str):
        return value
    return "\n\n".join(str(message.get("content") or "") for message in value)


def pairs(columns: Columns, rows: Sequence[int]) -> tuple[list, list, list]:
    """The prompts, chosen and rejected of a pair batch (the shared prompt without a prompt
    column; ``rows`` are the source rows, for the message)."""
    if "prompt" in columns:
        return columns["prompt"], columns["chosen"], columns["rejected"]
    out: tuple[list, list, list] = ([], [], [])
    for row, chosen, rejected in zip(rows, columns["chosen"], columns["rejected"], strict=True):
        split = shared_prompt(chosen, rejected)
        if split is None:
            raise UserError(
                f"row {row + 1}: chosen and rejected share no prompt (and there is no prompt "
                'column); map one with columns = { prompt = "..." }'
            )
        for part, value in zip(out, split, strict=True):
            part.append(value)
    return out


def split_messages(columns: Columns, rows: Sequence[int]) -> tuple[list, list]:
    """Prompts (every turn but the last) and completions (the last turn, an assistant's, as
    a one-message list) of a ``messages`` batch."""
    prompts, completions = [], []
    for row, messages in zip(rows, columns["messages"], strict=True):
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise UserError(
                f"row {row + 1}: 'messages' must end with an assistant turn after the prompt"
            )
        prompts.append(messages[:-1])
        completions.append(messages[-1:])
    return prompts, completions


def _sft_completion(columns: Columns, rows: Sequence[int]) -> Columns:
    return {"prompt": columns["prompt"], "completion": columns["completion"]}


def _sft_messages(columns: Columns, rows: Sequence[int]) -> Columns:
    prompts, completions = split_messages(columns, rows)
    return {"prompt": prompts, "completion": completions}


def _sft_pairs(columns: Columns, rows: Sequence[int]) -> Columns:
    prompts, chosen, _ = pairs(columns, rows)
    return {"prompt": prompts, "completion": chosen}


def _prompts_prompt(columns: Columns, rows: Sequence[int]) -> Columns:
    out = {"prompt": columns["prompt"]}
    reference = next(
        (columns[r] for r in ("reference", "completion", "chosen") if r in columns), None
    )
    if reference is not None:
        out["reference"] = [as_text(value) for value in reference]
    return out


def _prompts_messages(columns: Columns, rows: Sequence[int]) -> Columns:
    prompts, completions = split_messages(columns, rows)
    return {"prompt": prompts, "reference": [as_text(value) for value in completions]}


def _prompts_pairs(columns: Columns, rows: Sequence[int]) -> Columns:
    prompts, chosen, _ = pairs(columns, rows)
    return {"prompt": prompts, "reference": [as_text(value) for value in chosen]}


def _comparisons(columns: Columns, rows: Sequence[int]) -> Columns:
    prompts, chosen, rejected = pairs(columns, rows)
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def _offline_reward(columns: Columns, rows: Sequence[int]) -> Columns:
    rewards = [float(value) for value in columns["reward"]]
    return {"prompt": columns["prompt"], "completion": columns["completion"], "reward": rewards}


def _offline_label(columns: Columns, rows: Sequence[int]) -> Columns:
    rewards = [1.0 if value else -1.0 for value in columns["label"]]
    return {"prompt": columns["prompt"], "completion": columns["completion"], "reward": rewards}


def _offline_pairs(columns: Columns, rows: Sequence[int]) -> Columns:
    out: Columns = {"prompt": [], "completion": [], "reward": []}
    for prompt, chosen, rejected in zip(*pairs(columns, rows), strict=True):
        for completion, reward in ((chosen, 1.0), (rejected, -1.0)):
            out["prompt"].append(prompt)
            out["completion"].append(completion)
            out["reward"].append(reward)
    return out


PAIRS = ("chosen", "rejected")
WAYS: dict[str, list[tuple[tuple[str, ...], tuple[str, ...], Build]]] = {
    "sft": [
        (("prompt", "completion"), (), _sft_completion),
        (("messages",), (), _sft_messages),
        (PAIRS, ("prompt",), _sft_pairs),
    ],
    "prompts": [
        (("prompt",), ("reference", "completion", "chosen"), _prompts_prompt),
        (("messages",), (), _prompts_messages),
        (PAIRS, (), _prompts_pairs),
    ],
    "comparisons": [(PAIRS, ("prompt",), _comparisons)],
    "offline": [
        (("prompt", "completion", "reward"), (), _offline_reward),
        (("prompt", "completion", "label"), (), _offline_label),
        (PAIRS, ("prompt",), _offline_pairs),
    ],
}
"""View -> its ways, in order: (roles needed, roles of which the first present is read too,
builder)."""
NEEDS = {
    "sft": (
        "prompt and completion, messages (ending with the assistant's turn), or chosen and "
        "rejected (chosen is the completion)",
        'columns = { prompt = "...", completion = "..." }',
    ),
    "prompts": ("prompt, messages, or chosen and rejected", 'columns = { prompt = "..." }'),
    "comparisons": (
        "chosen and rejected (and prompt; without it, the prompt is what they share)",
        'columns = { prompt = "...", chosen = "...", rejected = "..." }',
    ),
    "offline": (
        "prompt, completion and reward (or a boolean label), or chosen and rejected",
        'columns = { prompt = "...", completion = "...", reward = "..." }',
    ),
}
"""View -> (the columns that give it, a mapping example), for the error."""


def column_kind(data: Any, column: str) -> str:
    """``text``, ``messages`` (a list of structs with ``role`` and ``content``), ``number``,
    ``bool``, or the Arrow type's name."""
    import pyarrow as pa

    kind = data.data.schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(
        kind.value_type
    ):
        fields = {field.name: field.type for field in kind.value_type}
        if "role" in fields and pa.types.is_string(fields.get("content", pa.null())):
            return "messages"
    return str(kind)


def check_columns(source: Source, sources: dict[str, str], used: Sequence[str]) -> None:
    """A ``UserError`` unless each used role's column is of a kind it takes (``KINDS``), has no
    null, and the dialogue roles are all text or all messages."""
    data, kinds = source.data, {}
    for role in used:
        column = sources[role]
        kind = kinds[role] = column_kind(data, column)
        named = f"column {column!r}" + (f" (the {role} column)" if column != role else "")
        if kind not in KINDS[role]:
            wanted = " or ".join(SHOWN.get(k, k) for k in KINDS[role])
            raise UserError(f"{source.where}: {named} holds {SHOWN.get(kind, kind)}, not {wanted}")
        values = data.data.column(column)
        if values.null_count:
            row = values.to_pylist().index(None)
            raise UserError(f"{source.where}: row {row + 1}: {named} is null")
    dialogue = {role: kinds[role] for role in DIALOGUE if role in kinds}
    if len(set(dialogue.values())) > 1:
        found = ", ".join(f"{role} is {kind}" for role, kind in dialogue.items())
        raise UserError(
            f"{source.where}: {found}; give them all as text or all as conversational messages"
        )


def make_view(
    source: Source, view: str, *, columns: dict[str, str], limit: int | None, seed: int | None
) -> Any:
    """``view`` of ``source`` (see the module docstring): ``columns`` maps view columns to the
    source's; ``seed`` (None: no shuffle) shuffles the source rows, then ``limit`` keeps the
    first ones. A ``UserError`` names the source, and the row where one is at fault."""
    data = source.data
    found = data.column_names
    missing = {role: name for role, name in columns.items() if name not in found}
    if missing:
        named = ", ".join(f"{name!r} (columns.{role})" for role, name in missing.items())
        raise UserError(f"{source.where}: no column {named}; columns found: {', '.join(found)}")
    sources = {role: columns.get(role, role) for role in ROLES if columns.get(role, role) in found}
    way = next((w for w in WAYS[view] if all(role in sources for role in w[0])), None)
    if way is None:
        needs, example = NEEDS[view]
        raise UserError(
            f"{source.where}: view '{view}' needs {needs}; columns found: {', '.join(found)}; "
            f"map yours with the columns setting, e.g. {example}"
        )
    needed, optional, build = way
    used = [*needed, *[role for role in optional if role in sources][:1]]
    check_columns(source, sources, used)
    rows = list(range(len(data)))
    if seed is not None:
        import numpy as np

        rows = np.random.default_rng(seed).permutation(len(data)).tolist()
    rows = rows[:limit] if limit is not None else rows
    if rows != list(range(len(data))):
        data = data.select(rows)
    keep = view == "prompts"
    remove = [c for c in found if not keep or c in ROLES or c in {sources[r] for r in used}]

    def batch(values: dict[str, list], indices: list[int]) -> Columns:
        picked = {role: values[sources[role]] for role in used}
        try:
            return build(picked, [rows[i] for i in indices])
        except UserError as exc:
            raise UserError(f"{source.where}: {exc}") from None

    return data.map(
        batch, batched=True, with_indices=True, remove_columns=remove, keep_in_memory=True
    )
