"""Chat-formatted data, rendered alike by every reader: a row's ``prompt`` is text or a
conversation (TRL's "conversational" format: a list of ``{"role", "content"}`` messages), and
its completions are text or a list of assistant messages. Whoever tokenizes a row renders it
with the chat template of its own model (``render_prompt``, ``render_completion``); text passes
unchanged, so a row is never rendered twice and text recipes read exactly as before. A recipe
asks for text prompts to be read as chat with ``chat = true`` on a dataset table
(``as_conversations``). Pure Python: a tokenizer is whatever has ``apply_chat_template``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.errors import UserError

CHAT_KEY = "chat"
"""The dataset-table key that wraps text prompts as a user message (and completions as the
assistant's reply) for every reader of the dataset."""

CHAT_HELP = "read text prompts as a user message, rendered with each model's chat template"

COMPLETION_COLUMNS = ("completion", "chosen", "rejected")
"""The columns that hold a reply to the prompt (``reference`` stays text: it is compared with
generated text, never fed to a model)."""

Message = dict[str, str]
"""One chat message: ``{"role": ..., "content": ...}``."""

Prompt = str | Sequence[Message]
"""A prompt as a dataset gives it: text, or a conversation."""


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is a list of messages (dicts with ``role`` and ``content``)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    )


def message_text(value: str | Sequence[Message]) -> str:
    """The text of a completion: itself, or its messages' contents joined."""
    if isinstance(value, str):
        return value
    return "".join(m["content"] for m in value)


def display_text(value: Prompt) -> str:
    """A prompt or completion for people to read (reports, samples): text as it is, a
    conversation one ``role: content`` line per message."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
"""Files beside a saved tokenizer that hold its chat template (newer transformers)."""


def saved_chat_template(
    directory: str | None, base_dir: Path, *, gguf_file: str | None = None
) -> bool | None:
    """Whether the tokenizer saved in ``directory`` (relative to ``base_dir``) has a chat
    template, read from its files without loading it: ``tokenizer_config.json``'s
    ``chat_template``, a ``chat_template.jinja``/``.json`` beside it, or with ``gguf_file`` that
    GGUF file's ``tokenizer.chat_template``. None when that cannot be told (a hub id, no
    directory, unreadable files)."""
    if not directory:
        return None
    path = Path(directory).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_dir():
        return None
    if gguf_file is not None:
        return _gguf_has_template(path / gguf_file)
    if any((path / name).is_file() for name in TEMPLATE_FILES):
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return bool(config.get("chat_template")) if isinstance(config, dict) else None


def _gguf_has_template(file: Path) -> bool | None:
    try:
        from gguf import GGUFReader

        return "tokenizer.chat_template" in GGUFReader(file).fields
    except Exception:  # no gguf package, or not a readable GGUF file: known on load
        return None


def require_chat_template(tokenizer: Any, reader: str) -> None:
    """``UserError`` naming ``reader`` when ``tokenizer`` has no chat template to render
    conversations with."""
    if not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UserError(
            f"{reader}: the data is chat-formatted but the tokenizer of '{name}' has no chat "
            "template; use a model that has one (an instruct/chat model), pass a `tokenizer` "
            "that has one, or drop `chat = true` from the dataset"
        )


def check_chat_data(data: Any, tokenizer: Any, reader: str) -> None:
    """``UserError`` (``require_chat_template``) when ``data`` (a dataset, or None) holds
    conversations and ``tokenizer`` has no chat template: before a trainer's first step."""
    if data is not None and len(data) > 0 and is_conversation(data[0].get("prompt")):
        require_chat_template(tokenizer, reader)


def render_prompt(tokenizer: Any, prompt: Prompt, reader: str = "") -> str:
    """The text ``tokenizer``'s model reads for ``prompt``: a conversation rendered with its
    chat template and the generation prompt (the assistant's turn opened); text unchanged.
    ``UserError`` (naming ``reader``) when a conversation meets a tokenizer without template."""
    if isinstance(prompt, str):
        return prompt
    require_chat_template(tokenizer, reader or "rendering a prompt")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def render_completion(
    tokenizer: Any,
    prompt: Prompt,
    completion: str | Sequence[Message],
    reader: str = "",
) -> str:
    """The text that follows ``render_prompt(prompt)`` for ``completion``: for a conversation,
    the template's rendering of the reply (its end-of-turn token included, trailing whitespace
    dropped); for a text prompt, the completion's text."""
    if isinstance(prompt, str):
        return message_text(completion)
    opened = render_prompt(tokenizer, prompt, reader)
    reply = completion if not isinstance(completion, str) else [assistant(completion)]
    whole = tokenizer.apply_chat_template([*prompt, *reply], tokenize=False)
    if not whole.startswith(opened):
        raise UserError(
            f"{reader or 'rendering a completion'}: the chat template renders the reply with a "
            "different start than the prompt's generation prompt; it cannot split prompt and reply"
        )
    return whole[len(opened) :].rstrip()


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt], reader: str = "") -> list[str]:
    """``render_prompt`` of each prompt."""
    return [render_prompt(tokenizer, p, reader) for p in prompts]


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def as_conversation_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with a text ``prompt`` as one user message and each text completion column as
    the assistant's reply; conversations and other columns unchanged."""
    changed = dict(row)
    if isinstance(row.get("prompt"), str):
        changed["prompt"] = [user(row["prompt"])]
    for column in COMPLETION_COLUMNS:
        if isinstance(row.get(column), str):
            changed[column] = [assistant(row[column])]
    return changed


def as_conversations(data: Any) -> Any:
    """The dataset ``data`` (``datasets.Dataset``) in the conversational format
    (``as_conversation_row`` on every row)."""
    if "prompt" not in data.column_names:
        raise UserError(
            f"chat = true needs a 'prompt' column; the dataset has {', '.join(data.column_names)}"
        )
    if len(data) == 0:
        return data
    return type(data).from_list([as_conversation_row(row) for row in data])
