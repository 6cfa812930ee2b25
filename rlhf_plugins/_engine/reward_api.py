"""The JSON contract of ``rlhf serve-reward`` (version 1), declared once: the server validates
requests with these models and the ``remote-reward`` client builds and reads them.

- ``POST /v1/score`` takes a ``ScoreRequest`` and answers 200 with a ``ScoreResponse``;
  400 (``ErrorResponse``) for a malformed request, 500 when the reward function raised or
  returned something other than one number per row, 503 while the server is stopping.
- ``GET /v1/health`` answers 200 with a ``Health``.

Only pydantic (a core dependency) is imported: the client needs no server stack.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictStr,
    field_validator,
    model_validator,
)

API_VERSION = 1
SCORE_PATH = f"/v{API_VERSION}/score"
HEALTH_PATH = f"/v{API_VERSION}/health"
RESERVED_COLUMNS = ("prompts", "completions")
"""Names a column cannot take: the reward function's own positional parameters."""


class ChatMessage(BaseModel):
    """One message of a conversational prompt."""

    role: StrictStr
    content: StrictStr


class ScoreRequest(BaseModel):
    """Rows to score: ``prompts[i]`` + ``completions[i]``, and ``columns[name][i]`` for each
    extra dataset column (e.g. ``reference``), passed to the reward function as keyword
    lists. Every list has one entry per row; zero rows are allowed."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[StrictStr | list[ChatMessage]] = Field(
        description="one prompt per row: text, or a conversation (role/content messages)"
    )
    completions: list[StrictStr] = Field(description="one completion per row")
    columns: dict[str, list[JsonValue]] = Field(
        default_factory=dict, description="extra columns by name, one JSON value per row"
    )

    @field_validator("prompts", mode="before")
    @classmethod
    def _text_or_messages(cls, value: Any) -> Any:
        for i, prompt in enumerate(value if isinstance(value, list) else []):
            if not isinstance(prompt, (str, list)):
                raise ValueError(
                    f"prompt {i} is {type(prompt).__name__}: expected text or a list of "
                    "{role, content} messages"
                )
        return value

    @model_validator(mode="after")
    def _one_entry_per_row(self) -> ScoreRequest:
        rows = len(self.prompts)
        problems = []
        if len(self.completions) != rows:
            problems.append(f"{len(self.completions)} completions for {rows} prompts")
        for name, values in self.columns.items():
            if name in RESERVED_COLUMNS:
                problems.append(f"a column cannot be named '{name}'")
            elif len(values) != rows:
                problems.append(f"column '{name}' has {len(values)} values for {rows} prompts")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def __len__(self) -> int:
        return len(self.prompts)

    def prompt_values(self) -> list[str | list[dict[str, str]]]:
        """The prompts as the reward function takes them: text, or lists of message dicts."""
        return [p if isinstance(p, str) else [m.model_dump() for m in p] for p in self.prompts]


class ScoreResponse(BaseModel):
    """One score per row, in the request's order; null where the reward function returned NaN
    or an infinity (a trainer skips such a batch, as with a local reward function)."""

    scores: list[float | None]


class ErrorResponse(BaseModel):
    """Why a request failed (status 400, 500 or 503)."""

    error: str


class BatchStats(BaseModel):
    """What the server's worker has scored since it started."""

    requests: int = 0
    rows: int = 0
    batches: int = Field(0, description="calls of the reward function")
    failed_batches: int = 0
    largest_batch_requests: int = Field(0, description="most requests joined into one call")
    largest_batch_rows: int = 0


class Health(BaseModel):
    """The server's state: ``status`` is ``ok``; ``reward`` is the recipe table it serves."""

    status: str
    api_version: int
    reward: dict[str, Any]
    source: str = Field(description="the recipe and slot the reward function comes from")
    max_batch_size: int
    max_wait_ms: float
    batching: BatchStats
