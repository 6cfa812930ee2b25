"""The ``policy-gradient`` engine through its public surface: advantage estimators and policy
losses as components (listed, validated at ``rlhf validate`` with every problem at once,
schema'd), every built-in combination training through a recipe, and the engine's own maths
(groups, DAPO's filters). The parts' numbers against verl's and TRL's own code are in
tests/test_pg_reference.py; the algorithms compared in one table in tests/test_compare.py."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import stage_toml

TINY = '{ use = "tiny-causal-lm", n_layer = 2, n_embd = 32, n_head = 2, vocab_size = 400 }'
SFT = '{ use = "hf-causal-lm", from_stage = "sft" }'
STEPS = "max_steps = 2\nper_device_train_batch_size = 4\nsave_steps = 0"


def data(view: str) -> str:
    return f'{{ use = "tldr-synthetic", num_examples = 32, view = "{view}" }}'


HEAD = (
    '[recipe]\nname = "pg"\n'
    + stage_toml("sft", "sft", STEPS, policy=TINY, dataset=data("sft"))
    + stage_toml("rm", "reward-model", STEPS, policy=SFT, dataset=data("comparisons"))
)


def engine_stage(name: str, advantage: str, loss: str, settings: str = "") -> str:
    """A 2-step ``policy-gradient`` stage from the SFT policy, scored by the reward model."""
    return stage_toml(
        name,
        "policy-gradient",
        f"{STEPS}\nnum_rollouts = 8\nchunk_size = 8\nppo_epochs = 1\nmax_new_tokens = 6\n"
        + settings,
        policy=SFT,
        reward='{ use = "gptj-reward-head", from_stage = "rm" }',
        advantage=advantage,
        loss=loss,
        dataset=data("prompts"),
    )


def test_the_parts_are_listed_with_their_settings_and_schema(run_cli):
    listed = run_cli("list-plugins", "-v").output
    headers = {
        line.split("'")[1]: line
        for line in listed.splitlines()
        if line.startswith("advantage estimator '")
    }
    assert set(headers) == {"gae", "grpo", "rloo", "reinforce++", "reinforce++-baseline", "remax"}
    assert headers["grpo"].endswith("Dr.GRPO without the std."), "the docstring's whole summary"
    assert "scale_by_std" in listed and "clip_high" in listed and "aggregation" in listed
    schema = json.loads(run_cli("schema").output)
    losses = {shape["title"] for shape in schema["$defs"]["policy_loss"]["anyOf"]}
    assert losses == {"ppo-clip", "gspo", "cispo"}


def test_validate_reports_every_engine_problem_at_once(write_recipe, run_cli):
    recipe = write_recipe(
        HEAD
        + engine_stage("a", '{ use = "grpo" }', '{ use = "ppo-clip" }', "num_generations = 1")
        + engine_stage("b", '{ use = "gae" }', '{ use = "ppo-clip" }', "vf_coef = 0.0")
        + engine_stage("c", '{ use = "rloo" }', '{ use = "ppo-clip" }', "cliprange_value = 0.3")
        + engine_stage("d", '{ use = "grpo" }', '{ use = "ppo-clip" }', "num_generations = 3")
        + engine_stage("e", '{ use = "grpo" }', '{ use = "ppo-clip", aggregation = "mean" }')
    )
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    out = result.output
    assert "5 problems" in out, out
    assert (
        "stages.a.trainer_settings.num_generations: advantage 'grpo' compares the completions "
        "of one prompt: num_generations must be at least 2, got 1"
    ) in out
    assert "stages.b.trainer_settings.vf_coef: 'gae' needs a learned critic" in out
    assert (
        "stages.c.trainer_settings.cliprange_value: a critic setting, but neither advantage "
        "'rloo' nor loss 'ppo-clip' learns a critic"
    ) in out
    assert "chunk_size (8) must be a multiple of num_generations (3)" in out
    assert "stages.e.loss.aggregation" in out and "seq-mean-token-sum-norm" in out


@pytest.mark.slow
def test_every_built_in_combination_trains(write_recipe, run_rlhf, tmp_path):
    combinations = {
        "ppo": (
            '{ use = "gae" }',
            '{ use = "ppo-clip" }',
            'num_generations = 1\nkl_placement = "reward"\nkl_estimator = "k1"',
        ),
        "grpo": ('{ use = "grpo" }', '{ use = "ppo-clip", aggregation = "seq-mean-token-mean" }'),
        "dr_grpo": (
            '{ use = "grpo", scale_by_std = false }',
            '{ use = "ppo-clip", aggregation = "seq-mean-token-sum-norm", norm_length = 6 }',
            "init_kl_coef = 0.0",
        ),
        "dapo": (
            '{ use = "grpo" }',
            '{ use = "ppo-clip", clip_high = 0.28, dual_clip = 3.0 }',
            "init_kl_coef = 0.0\nfilter_groups = true\noverlong_buffer = 2\ntemperature = 1.5",
        ),
        "gspo": ('{ use = "grpo" }', '{ use = "gspo" }'),
        "cispo": ('{ use = "grpo" }', '{ use = "cispo", clip_high = 4.0 }'),
        "rloo": ('{ use = "rloo" }', '{ use = "ppo-clip" }', 'kl_placement = "reward"'),
        "reinforce": (
            '{ use = "reinforce++" }',
            '{ use = "ppo-clip" }',
            'num_generations = 1\nkl_placement = "reward"\nkl_estimator = "k2"',
        ),
        "reinforce_base": ('{ use = "reinforce++-baseline" }', '{ use = "ppo-clip" }'),
        "remax": ('{ use = "remax" }', '{ use = "ppo-clip" }', 'kl_placement = "reward"'),
    }
    recipe = write_recipe(
        HEAD + "".join(engine_stage(name, *parts) for name, parts in combinations.items())
    )
    run_rlhf("run", recipe, timeout=900)
    run = tmp_path / "runs/pg"
    for name in combinations:
        records = [json.loads(line) for line in (run / name / "metrics.jsonl").open()]
        last = records[-1]
        assert last["step"] == 2, name
        assert all(torch.isfinite(torch.tensor(v)) for v in last.values() if isinstance(v, float))
        critic = name == "ppo"
        assert ("loss/value" in last) is critic, name
        assert (run / name / "value_head.safetensors").is_file() is critic, name
        assert ("loss/kl" in last) is (name in ("grpo", "gspo", "cispo", "reinforce_base")), name
        assert (run / name / "config.json").is_file()
    assert "rollout/filtered" in records_of(run / "dapo")[-1]
    assert "policy/clipfrac_dual" in records_of(run / "dapo")[-1]
    baselines = {
        name
        for name in combinations
        if any("reward/baseline_mean" in record for record in records_of(run / name))
    }
    assert baselines == {"remax"}, "only an estimator registered with greedy_baseline gets one"


def records_of(stage_dir) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").open()]


def test_dapo_filters_and_the_overlong_penalty():
    from rlhf_builtins.ppo.maths import overlong_penalty, varied_groups

    scores = torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0])
    groups = torch.tensor([7, 7, 2, 2, 5, 5])
    assert varied_groups(scores, groups).tolist() == [False, False, True, True, False, False]
    lengths = torch.tensor([10, 12, 14, 16, 20])
    penalty = overlong_penalty(lengths, max_new_tokens=16, buffer=4, penalty=1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def test_a_chunk_keeps_whole_groups_when_rows_are_selected():
    from rlhf_builtins.ppo.rollout import Chunk

    rows = torch.arange(8.0).reshape(4, 2)
    chunk = Chunk(
        queries=[torch.tensor([i]) for i in range(4)],
        responses=rows.long(),
        mask=torch.ones(4, 2),
        logprobs=rows,
        ref_logprobs=rows,
        values=rows,
        scores=torch.arange(4.0),
        scaled_scores=torch.arange(4.0),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )
    kept = chunk.select(torch.tensor([False, False, True, True]))
    assert len(kept) == 2 and kept.group_ids.tolist() == [1, 1]
    assert kept.scores.tolist() == [2.0, 3.0] and [int(q) for q in kept.queries] == [2, 3]
