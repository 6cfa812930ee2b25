"""ReMax through the ``policy-gradient`` engine: an estimator registered with
``greedy_baseline=True`` gets, for every completion, the score of the greedy completion of its
prompt, decoded by the policy being trained and scored by the stage's reward function in the same
call as the samples. Checked with a third-party plugin that records what the reward function and
the estimator see, against greedy decoding of the same policy outside the engine."""

from __future__ import annotations

import json
import os

import torch

from tests.conftest import stage_toml

RECORDER = '''
import json

from rlhf_builtins.ppo.advantages import remax
from rlhf_plugins import AdvantageInputs, hookimpl


@hookimpl
def register_reward_functions(register):
    register("length-reward", length_reward)


@hookimpl
def register_advantage_estimators(register):
    register("recording-remax", recording_remax, greedy_baseline=True)


def length_reward(log: str):
    """Scores a completion by its length in characters / 100; logs every call."""

    def reward(prompts, completions, **columns):
        scores = [len(c) / 100 for c in completions]
        with open(log, "a") as out:
            out.write(json.dumps({"prompts": prompts, "completions": completions,
                                  "scores": scores}) + "\\n")
        return scores

    return reward


def recording_remax(log: str):
    """ReMax's advantage (the built-in function); logs what it was given."""

    def estimator(inputs: AdvantageInputs):
        with open(log, "a") as out:
            out.write(json.dumps({"baseline_scores": inputs.baseline_scores.tolist(),
                                  "group_ids": inputs.group_ids.tolist(),
                                  "scores": inputs.scores.tolist()}) + "\\n")
        advantages, _ = remax(inputs.token_rewards, inputs.baseline_scores, inputs.mask)
        return advantages, None

    return estimator
'''

TINY = (
    '{ use = "tiny-causal-lm", architecture = "gpt2", n_layer = 2, n_embd = 32, n_head = 2, '
    "vocab_size = 300 }"
)
PG = (
    "max_steps = 1\nnum_rollouts = 8\nchunk_size = 4\nnum_generations = 2\n"
    "per_device_train_batch_size = 8\nppo_epochs = 1\nmax_new_tokens = 6\n"
    "max_prompt_length = 24\ninit_kl_coef = 0.0\nsave_steps = 0"
)


def test_remax_gets_the_score_of_each_prompts_greedy_completion(
    plugin_dist, write_recipe, run_rlhf, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_plugins.torch_helpers import SamplingSettings, generate_texts

    site = plugin_dist("rlhf-recorder", "rlhf_recorder", RECORDER)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    rewards, estimates = tmp_path / "rewards.jsonl", tmp_path / "estimates.jsonl"
    recipe = write_recipe(
        '[recipe]\nname = "remax"\nseed = 5\n'
        + stage_toml(
            "sft",
            "sft",
            "max_steps = 2\nper_device_train_batch_size = 4\nsave_steps = 0",
            policy=TINY,
            dataset='{ use = "tldr-synthetic", num_examples = 16, view = "sft" }',
        )
        + stage_toml(
            "remax",
            "policy-gradient",
            PG,
            policy='{ use = "hf-causal-lm", from_stage = "sft" }',
            dataset='{ use = "tldr-synthetic", num_examples = 16, view = "prompts" }',
            reward=f'{{ use = "length-reward", log = "{rewards}" }}',
            advantage=f'{{ use = "recording-remax", log = "{estimates}" }}',
            loss='{ use = "ppo-clip" }',
        )
    )
    run_rlhf("run", recipe, timeout=600)

    calls = [json.loads(line) for line in rewards.open()]
    (estimate,) = [json.loads(line) for line in estimates.open()]
    assert len(calls) == 2, "two chunks of 4 completions make the rollout of 8"
    sft = tmp_path / "runs/remax/sft"
    model = AutoModelForCausalLM.from_pretrained(sft)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    greedy_scores: list[float] = []
    for call in calls:
        samples, greedy = slice(0, 4), slice(4, None)
        prompts = call["prompts"][samples]
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3], "groups of 2"
        assert call["prompts"][greedy] == prompts[::2], "one greedy answer per prompt"
        expected = generate_texts(
            model,
            tokenizer,
            prompts[::2],
            SamplingSettings(max_new_tokens=6, do_sample=False),
            max_prompt_length=24,
        )
        assert call["completions"][greedy] == expected
        greedy_scores += call["scores"][greedy]
    per_row = torch.tensor(greedy_scores).repeat_interleave(2)
    torch.testing.assert_close(torch.tensor(estimate["baseline_scores"]), per_row)
    sampled = torch.tensor([s for call in calls for s in call["scores"][:4]])
    torch.testing.assert_close(torch.tensor(estimate["scores"]), sampled)
    assert estimate["group_ids"] == [0, 0, 1, 1, 2, 2, 3, 3]

    records = [json.loads(line) for line in (tmp_path / "runs/remax/remax/metrics.jsonl").open()]
    logged = next(r for r in records if "reward/baseline_mean" in r)
    assert abs(logged["reward/baseline_mean"] - per_row.mean().item()) < 1e-6


def test_greedy_baseline_is_a_flag_of_estimators_only(run_cli, plugin_dist):
    source = (
        "from rlhf_plugins import hookimpl\n\n\n@hookimpl\ndef register_policy_losses(register):\n"
        '    register("greedy-loss", lambda: None, greedy_baseline=True)\n'
    )
    plugin_dist("rlhf-greedy-loss", "rlhf_greedy_loss", source)
    listed = json.loads(run_cli("list-plugins", "--json").output)
    (info,) = [p for p in listed if p["name"] == "rlhf-greedy-loss"]
    assert info["error"] == (
        "register_policy_losses raised TypeError: greedy_baseline is a flag of advantage "
        "estimators only; policy loss 'greedy-loss' cannot set it"
    )
    verbose = run_cli("list-plugins", "-v").output
    remax = next(
        line for line in verbose.splitlines() if line.startswith("advantage estimator 'remax'")
    )
    assert "greedy completion" in remax
