"""Normalizers (delta-reward, running-norm, clip) around toy base reward functions, built with
the registered factories."""

import functools
import math
import socket

import pytest
import torch.multiprocessing as mp

from rlhf_plugins import UserError
from tests.conftest import build_component


@pytest.fixture(scope="module")
def factories():
    """Each normalizer's builder: slots and settings as keywords, settings validated."""
    return {
        name: functools.partial(build_component, "reward_function", name)
        for name in ("delta-reward", "running-norm", "clip")
    }


def completion_length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


class Recorder:
    """A base reward function that records what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **columns):
        self.calls.append((list(prompts), list(completions), columns))
        return completion_length(prompts, completions)


def test_delta_reward_subtracts_the_reference_score_in_one_base_call(factories):
    base = Recorder()
    delta = factories["delta-reward"](base=base)
    scores = delta(["p1", "p2"], ["abcd", "a"], reference=["ab", "abc"], topic=["x", "y"])
    assert scores == [2.0, -2.0]
    assert base.calls == [
        (
            ["p1", "p2", "p1", "p2"],
            ["abcd", "a", "ab", "abc"],
            {"reference": ["ab", "abc", "ab", "abc"], "topic": ["x", "y", "x", "y"]},
        )
    ]


def test_delta_reward_reads_a_named_column(factories):
    delta = factories["delta-reward"](base=completion_length, reference_column="label")
    assert delta(["p"], ["abc"], label=["a"]) == [2.0]


def test_delta_reward_without_the_column_is_a_user_error(factories):
    delta = factories["delta-reward"](base=completion_length)
    with pytest.raises(UserError, match="'reference'"):
        delta(["p"], ["abc"], label=["a"])


def test_running_norm_uses_the_moments_of_all_scores_so_far(factories):
    norm = factories["running-norm"](base=completion_length)
    first = norm(["p"] * 3, ["a", "ab", "abc"])
    assert first == pytest.approx([-1.0, 0.0, 1.0])  # sample std of 1, 2, 3 is 1
    second = norm(["p"], ["abcd"])
    assert second == pytest.approx([(4 - 2.5) / math.sqrt(5 / 3)])  # moments of 1, 2, 3, 4


def test_running_norm_without_centering_only_scales(factories):
    norm = factories["running-norm"](base=completion_length, center=False)
    scale = math.sqrt(2)  # sample std of 1, 3
    assert norm(["p"] * 2, ["a", "abc"]) == pytest.approx([1 / scale, 3 / scale])


def test_clip_bounds_scores(factories):
    assert factories["clip"](base=completion_length, min=2.0, max=3.0)(
        ["p"] * 3, ["a", "ab", "abcd"]
    ) == [2.0, 2.0, 3.0]
    assert factories["clip"](base=completion_length, max=1.5)(["p"] * 2, ["a", "ab"]) == [1.0, 1.5]


def test_normalizers_compose(factories):
    delta = factories["delta-reward"](base=completion_length)
    clipped = factories["clip"](base=factories["running-norm"](base=delta), min=-1.0, max=1.0)
    scores = clipped(["p"] * 3, ["aaaaaaa", "a", "aaaa"], reference=["a", "a", "a"])
    # deltas 6, 0, 3: mean 3, sample std 3, normalised +-1 and 0 (within epsilon), clipped
    assert scores == pytest.approx([1.0, -1.0, 0.0])


def test_a_base_returning_the_wrong_count_is_a_user_error(factories):
    clipped = factories["clip"](base=lambda prompts, completions, **c: [1.0], max=0.0)
    with pytest.raises(UserError, match="returned 1 scores for 2"):
        clipped(["p", "q"], ["a", "b"])


def _rank_scores(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from rlhf_builtins.reward.normalizers import RunningNorm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    completions = ["a", "abc"] if rank == 0 else ["ab", "abcdef"]
    results[rank] = RunningNorm(completion_length)(["p", "p"], completions)
    dist.destroy_process_group()


def test_running_norm_syncs_moments_across_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_scores, args=(port, results), nprocs=2)
    std = math.sqrt(14 / 3)  # lengths 1, 3, 2, 6: mean 3, sample variance 14 / 3
    assert results[0] == pytest.approx([(1 - 3) / std, 0.0])
    assert results[1] == pytest.approx([(2 - 3) / std, (6 - 3) / std])


def _rank_failures(rank: int, port: int, results) -> None:
    """Rank 1's base fails at its first call (``RewardUnavailable``) and its second (a
    ``ValueError``); rank 0's never does. The third call works on both."""
    import torch.distributed as dist

    from rlhf_builtins.reward.normalizers import RunningNorm
    from rlhf_plugins._engine.errors import RewardUnavailable

    calls = {"n": 0}

    def base(prompts, completions, **columns):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 1:
            raise RewardUnavailable("server down")
        if rank == 1 and calls["n"] == 2:
            raise ValueError("broken")
        return completion_length(prompts, completions)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    norm = RunningNorm(base)
    seen = []
    for _ in range(2):
        try:
            norm(["p", "p"], ["a", "abc"])
        except Exception as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
    seen.append(norm(["p", "p"], ["a", "abc"]))
    results[rank] = seen
    dist.destroy_process_group()


def test_running_norm_raises_on_every_rank_when_the_base_fails_on_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_failures, args=(port, results), nprocs=2)
    assert results[1][:2] == ["RewardUnavailable: server down", "ValueError: broken"]
    assert results[0][:2] == [
        "RewardUnavailable: running-norm: the reward function is unavailable on 1 other process(es)",
        "StageFailed: running-norm: the reward function failed on 1 other process(es)",
    ]
    std = math.sqrt(4 / 3)  # only the third call's lengths 1, 3, 1, 3 were added: mean 2
    assert results[0][2] == results[1][2] == pytest.approx([-1 / std, 1 / std])


def test_running_norm_leaves_non_finite_scores_out_of_its_moments(factories):
    scores = iter([[float("nan"), 1.0], [1.0, 3.0]])
    norm = factories["running-norm"](base=lambda prompts, completions, **c: next(scores))
    first = norm(["p", "p"], ["a", "b"])
    assert math.isnan(first[0]) and first[1] == 0.0  # the trainer skips this batch
    std = math.sqrt(4 / 3)  # moments of 1, 1, 3 (not of NaN): mean 5 / 3
    assert norm(["p", "p"], ["a", "b"]) == pytest.approx([(1 - 5 / 3) / std, (3 - 5 / 3) / std])
