"""Reward function ``remote-reward``: the scores of a reward function that ``rlhf serve-reward``
serves on another machine (or process), so that PPO, GRPO, RLOO and evaluators can score
without holding the reward model (docs/serving.md).

The client uses the standard library only (urllib): a training node needs no server stack.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import RewardFunction, hookimpl


@hookimpl
def register_reward_functions(register):
    register(
        "remote-reward",
        remote_reward,
        description="Scores from a reward function served over HTTP by rlhf serve-reward.",
    )


def remote_reward(
    url: Annotated[
        str,
        Field(
            pattern=r"^https?://\S+$",
            description="the server's http:// or https:// address, e.g. http://10.0.0.5:8000",
        ),
    ],
    batch_size: Annotated[int, Field(ge=1, description="rows sent per request")] = 32,
    timeout: Annotated[
        float, Field(gt=0, description="seconds to wait for the server to answer one request")
    ] = 120.0,
    retries: Annotated[
        int,
        Field(ge=0, le=20, description="attempts after the first when the server is unreachable"),
    ] = 3,
    backoff: Annotated[
        float, Field(ge=0, description="seconds before the first retry, doubled for each next one")
    ] = 1.0,
    token_env: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
            description="the environment variable holding the server's token, sent as "
            "Authorization: Bearer when set (the name, never the token)",
        ),
    ] = "RLHF_REWARD_TOKEN",
) -> RewardFunction:
    """``fn(prompts, completions, **columns)`` answered by the server at ``url``: the rows go
    ``batch_size`` at a time, with every keyword list that has one entry per row (dataset
    columns such as ``reference``). A request that cannot reach the server (refused, reset,
    timed out after ``timeout`` seconds, an answer that breaks off, 503) is retried
    ``retries`` times, ``backoff`` seconds apart and doubling; then, or when the server's
    reward function fails (500), the call raises ``RewardUnavailable``: PPO skips the chunk
    and counts it, an evaluator fails. A request the server calls malformed (400) and a TLS
    certificate this machine does not trust fail the stage at once, and so does a 401: the
    server wants the token that ``$token_env`` (read at each request) lacks or holds wrong."""
    from rlhf_builtins.remote_reward.client import RemoteReward

    return RemoteReward(
        url,
        batch_size=batch_size,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        token_env=token_env,
    )
