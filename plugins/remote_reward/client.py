"""The ``remote-reward`` client: the reward server's HTTP contract (``rlhf_plugins.ScoreRequest`` ...) over urllib."""

from __future__ import annotations

import http.client
import math
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rlhf_builtins.reward.normalizers import OF_THE_COMPLETIONS, is_column
from rlhf_plugins import (
    SCORE_PATH,
    ErrorResponse,
    RewardUnavailable,
    ScoreRequest,
    ScoreResponse,
    StageFailed,
    UserError,
)

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to the server: ``HTTP_PROXY`` and friends, meant for the internet, are ignored."""
RETRIED_STATUS = (503,)
"""Answers that mean "not now" (the server is stopping): retried like an unreachable server."""
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
"""What a token may hold: visible ASCII, as it travels in a header (as rlhf serve-reward)."""


@dataclass
class RemoteReward:
    """A reward function whose scores come from ``rlhf serve-reward`` at ``url`` (settings
    documented on the ``remote_reward`` factory)."""

    url: str
    batch_size: int = 32
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    token_env: str = "RLHF_REWARD_TOKEN"

    @property
    def score_url(self) -> str:
        return self.url.rstrip("/") + SCORE_PATH

    def token(self) -> str | None:
        """The token in ``$token_env`` now (unset or empty: none); ``StageFailed`` when it
        cannot travel in a header. Read at each request and never kept or shown."""
        token = os.environ.get(self.token_env) or None
        if token is not None and not TOKEN_CHARS.fullmatch(token):
            raise StageFailed(
                f"remote-reward: ${self.token_env} holds characters a token cannot have "
                "(only visible ASCII, no spaces or line breaks)"
            )
        return token

    def refused(self, token: str | None) -> str:
        """Why the server answered 401, naming ``$token_env``."""
        if token is None:
            return f"the reward server at {self.url} requires a token: set ${self.token_env} (401)"
        return f"the reward server at {self.url} refused the token from ${self.token_env} (401)"

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise UserError(
                f"remote-reward: {len(prompts)} prompts but {len(completions)} completions"
            )
        count = len(completions)
        sent = {
            name: list(values)
            for name, values in columns.items()
            if name not in OF_THE_COMPLETIONS and is_column(values, count)
        }
        scores: list[float] = []
        for start in range(0, count, self.batch_size):
            part = slice(start, start + self.batch_size)
            try:
                request = ScoreRequest(
                    prompts=list(prompts[part]),
                    completions=list(completions[part]),
                    columns={name: values[part] for name, values in sent.items()},
                )
            except ValidationError as exc:
                raise StageFailed(f"remote-reward: rows it cannot send as JSON: {exc}") from None
            scores += [math.nan if s is None else s for s in self.post(request).scores]
        return scores

    def post(self, request: ScoreRequest) -> ScoreResponse:
        """The server's answer to ``request``; retried while the server cannot be reached or
        its answer breaks off, then ``RewardUnavailable`` (also for a 500); ``StageFailed``
        for any other error, and at once for a TLS certificate this machine does not trust
        or an invalid URL (configuration, not an outage), or a 401 (the token)."""
        body = request.model_dump_json().encode()
        token = self.token()
        attempts = self.retries + 1
        why = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            sending = urllib.request.Request(
                self.score_url, data=body, headers={"Content-Type": "application/json"}
            )
            if token is not None:  # unredirected: never sent on to where a redirect points
                sending.add_unredirected_header("Authorization", f"Bearer {token}")
            try:
                with OPENER.open(sending, timeout=self.timeout) as response:
                    answer = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # retrying with the same token cannot help
                    raise StageFailed(f"remote-reward: {self.refused(token)}") from None
                why = f"{exc.code} {error_message(exc)}"
                if exc.code in RETRIED_STATUS:
                    continue
                failure = RewardUnavailable if exc.code >= 500 else StageFailed
                raise failure(f"remote-reward: {self.score_url} answered {why}") from None
            except http.client.InvalidURL as exc:
                raise StageFailed(f"remote-reward: url {self.url!r} is not valid: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                # refused, reset, timed out, unknown host; a truncated or garbled answer
                # (IncompleteRead, BadStatusLine: a server that died mid-answer)
                reason = getattr(exc, "reason", None) or exc
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise StageFailed(
                        f"remote-reward: {self.score_url}: the server's TLS certificate was "
                        f"not accepted ({reason.verify_message or reason}); retrying cannot "
                        "help: use a certificate this machine trusts (SSL_CERT_FILE) or http://"
                    ) from None
                why = str(reason) or type(reason).__name__
                continue
            try:
                return ScoreResponse.model_validate_json(answer)
            except ValidationError:
                raise StageFailed(
                    f"remote-reward: {self.score_url} did not answer with scores "
                    f"(not an rlhf serve-reward server?): {answer[:200]!r}"
                ) from None
        raise RewardUnavailable(
            f"remote-reward: {self.score_url} unreachable after {attempts} attempts ({why})"
        )


def error_message(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of an ``ErrorResponse`` body, else the HTTP reason."""
    try:
        return ErrorResponse.model_validate_json(exc.read()).error
    except (ValidationError, OSError, http.client.HTTPException):
        return str(exc.reason)
