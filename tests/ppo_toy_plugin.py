"""A third-party-style plugin used by the ppo tests: a prompt dataset and a rule-based reward
that can be told to misbehave. Installed per test with the ``plugin_dist`` fixture.

``ppo-toy-reward`` scores the share of the letter ``target`` among a completion's characters.
``fault`` turns the scores of the calls listed in ``fault_calls`` (1-based, per process) into
NaN (``nan``), one score too few (``short``) or numeric strings (``string``), or makes them raise
``RewardUnavailable`` (``unavailable``); with ``fault_rank``, only on the process of that rank
(``RANK``). ``delay`` seconds are slept at each call (a slow reward model). When the environment variable
``PPO_TOY_FAIL_AT_CALL`` is set, call number N raises, which interrupts the run; with
``PPO_TOY_EXIT_AT_CALL``, call number N ends the process at once (a reward server that dies).
"""

from __future__ import annotations

import os
import time
from typing import Literal

from rlhf_plugins import Dataset, RewardFunction, RewardUnavailable, hookimpl

WORDS = ["apple", "banana", "cherry", "date", "fig", "grape", "kiwi", "lemon", "mango", "pear"]


@hookimpl
def register_datasets(register):
    register("ppo-toy-prompts", toy_prompts)


@hookimpl
def register_reward_functions(register):
    register("ppo-toy-reward", toy_reward)


def toy_prompts(rows: int = 48, offset: int = 0) -> Dataset:
    """Prompts "list: w1 w2 w3 ->" with a ``reference`` column."""
    from datasets import Dataset as HFDataset

    prompts, references = [], []
    for i in range(offset, offset + rows):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3)]
        prompts.append(f"list: {' '.join(words)} ->")
        references.append(" ".join(sorted(words)))
    return HFDataset.from_dict({"prompt": prompts, "reference": references})


def toy_reward(
    target: str = "a",
    fault: Literal["none", "nan", "short", "string", "unavailable"] = "none",
    fault_calls: list[int] | None = None,
    fault_rank: int | None = None,
    delay: float = 0.0,
) -> RewardFunction:
    calls = {"n": 0}
    fail_at = int(os.environ.get("PPO_TOY_FAIL_AT_CALL", "0"))
    exit_at = int(os.environ.get("PPO_TOY_EXIT_AT_CALL", "0"))

    def reward(prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError(f"interrupted at reward call {fail_at}")
        if calls["n"] == exit_at:
            os._exit(1)
        time.sleep(delay)
        assert len(columns["reference"]) == len(prompts)
        scores = [c.count(target) / (len(c) + 1) for c in completions]
        here = fault_rank is None or int(os.environ.get("RANK", "0")) == fault_rank
        if calls["n"] in (fault_calls or []) and here:
            if fault == "unavailable":
                raise RewardUnavailable(f"toy fault at call {calls['n']}")
            if fault == "nan":
                scores[0] = float("nan")
            elif fault == "short":
                scores = scores[:-1]
            elif fault == "string":
                scores = [str(s) for s in scores]
        return scores

    return reward
