"""The ``grpo`` trainer (TRL's GRPOTrainer) through the ``rlhf`` CLI, on a tiny GPT-2 and the toy
prompts and reward of tests/ppo_toy_plugin.py: metrics, the saved policy, resume, the reward
slots, validation, the keyword arguments TRL passes to reward functions, 2 CPU ranks and
DeepSpeed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TOY_REWARD


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def state(out: Path) -> dict:
    return json.loads((out / "stage_state.json").read_text())


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def test_grpo_trains_logs_our_names_and_saves_a_plain_causal_lm(grpo_recipe, run_cli, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run_cli("run", grpo_recipe(beta=0.1))
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "toy" / "grpo"
    logged = [r for r in records(out) if "reward/mean" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for key in ("reward/mean", "reward/std", "reward/frac_zero_std", "kl", "loss", "learning_rate"):
        assert key in logged[0], key
    assert not [k for r in records(out) for k in r if k.startswith("rewards/") or k == "reward"]
    final = state(out)["metrics"]
    assert final["steps"] == 4 and final["reward/mean"] == logged[-1]["reward/mean"]
    assert "kl" in final
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (out / "tokenizer.json").is_file()
    assert (out / "reference" / "model.safetensors").is_file(), "the tiny policy's start"


def test_a_weighted_list_of_rewards_logs_each_function(grpo_recipe, run_cli, tmp_path):
    rewards = 'rewards = [{ use = "ppo-toy-reward" }, { use = "ppo-toy-reward", target = "e" }]'
    recipe = grpo_recipe(reward=rewards, reward_weights=[1.0, 0.5], max_steps=2)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    logged = [r for r in records(tmp_path / "runs" / "toy" / "grpo") if "reward/mean" in r]
    assert len(logged) == 2
    for r in logged:
        weighted = r["reward/0/mean"] + 0.5 * r["reward/1/mean"]
        assert r["reward/mean"] == pytest.approx(weighted, rel=1e-4, abs=1e-6)
        assert {"reward/0/std", "reward/1/std"} <= set(r)


def test_resume_at_the_last_step_trains_no_further(grpo_recipe, run_cli, tmp_path):
    recipe = grpo_recipe()
    assert run_cli("run", recipe).exit_code == 0
    out = tmp_path / "runs" / "toy" / "grpo"
    trained = weights(out)
    # killed after checkpoint-4 was saved but before the stage was marked finished
    (out / "stage_state.json").write_text(json.dumps({**state(out), "status": "running"}))
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "continuing from checkpoint-4 (step 4)" in result.output
    final = state(out)["metrics"]
    assert final["steps"] == 4 and "reward/mean" in final
    assert all(weights(out)[k].equal(v) for k, v in trained.items())
    assert [r["step"] for r in records(out) if "reward/mean" in r] == [1, 2, 3, 4]


def test_validate_reports_every_bad_setting_at_once(grpo_recipe, run_cli):
    recipe = grpo_recipe(num_generations=1, loss_type="ppo", temperature=0, beta=-1)
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    for key, message in (
        ("num_generations", "must be >= 2, got 1"),
        ("loss_type", "must be one of grpo, dr_grpo, dapo"),
        ("temperature", "must be > 0"),
        ("beta", "must be >= 0"),
    ):
        assert f"stages.grpo.trainer_settings.{key}: {message}" in result.output, key


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # TRL's rule with the number of processes, when the stage starts
        ({"num_generations": 3}, "generation_batch_size (8) must be divisible by num_generations"),
        ({"generation_batch_size": 6}, "a multiple of num_generations (4)"),
        ({"generation_batch_size": 8, "steps_per_generation": 1}, "not both"),
    ],
)
def test_the_generation_batch_rules(grpo_recipe, run_cli, settings, message):
    result = run_cli("run", grpo_recipe(**settings))
    assert result.exit_code == 2 and message in result.output, result.output


def test_validate_checks_the_slots_against_each_other_and_the_views(grpo_recipe, run_cli):
    reward = "\n".join(
        [
            TOY_REWARD,
            'rewards = [{ use = "ppo-toy-reward" }]',
            'eval_dataset = { use = "tldr-synthetic", view = "sft", num_examples = 8 }',
        ]
    )
    result = run_cli("validate", grpo_recipe(reward=reward))
    assert result.exit_code == 2
    assert "stages.grpo.reward: give 'reward' (one reward function) or 'rewards'" in result.output
    assert "both are given" in result.output
    assert "stages.grpo.eval_dataset.view: grpo needs a 'prompts' view here, got 'sft'" in (
        result.output
    )
    assert "stages.grpo.trainer_settings.eval_steps: eval_dataset is scored" in result.output

    weights = grpo_recipe(reward_weights=[1.0, 2.0])
    result = run_cli("validate", weights)
    assert result.exit_code == 2
    assert "reward_weights: 2 weight(s) for 1 reward function(s)" in result.output


def test_a_dataset_without_prompts_and_too_long_prompts_stop_before_training(
    grpo_recipe, run_cli, tmp_path
):
    (tmp_path / "rows.jsonl").write_text('{"question": "a b c"}\n' * 8)
    recipe = (
        grpo_recipe()
        .read_text()
        .replace(
            'dataset = { use = "ppo-toy-prompts", rows = 32 }',
            'dataset = { use = "jsonl", path = "rows.jsonl" }',
        )
    )
    (tmp_path / "nocol.toml").write_text(recipe)
    result = run_cli("run", tmp_path / "nocol.toml")
    assert result.exit_code == 2
    assert "grpo: dataset needs columns prompt (a 'prompts' view); it has question" in (
        result.output
    )

    tight = grpo_recipe(name="tight", max_completion_length=14)
    tight.write_text(
        tight.read_text().replace("vocab_size = 300", "vocab_size = 300, max_positions = 16")
    )
    result = run_cli("run", tight)
    assert result.exit_code == 2
    assert "tokens are left for prompts (the context minus max_completion_length)" in result.output


def save_tiny_reward_model(directory: Path, texts: list[str]) -> Path:
    """A random GPT-2 reward model (a scalar head) and its tokenizer, as a stage saves one."""
    from transformers import AutoModelForSequenceClassification, GPT2Config

    from rlhf_builtins.hf_policies.policies import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=300)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("trainer", ["GRPO", "RLOO"])
def test_trl_calls_our_reward_functions_with_its_keyword_arguments(trainer, tmp_path):
    """TRL's trainer itself calls delta-reward over gptj-reward-head, and clip over
    running-norm over that: every keyword argument it passes is handled, and delta-reward
    doubles the dataset columns for its base but not TRL's own arguments."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from rlhf_builtins.grpo.trainer import named_rewards
    from tests.conftest import build_component

    prompts = [f"list: {w} ->" for w in ("apple fig", "kiwi pear", "date lemon", "mango fig")]
    data = Dataset.from_dict({"prompt": prompts, "reference": [" a", " b", " c", " d"]})
    directory = save_tiny_reward_model(tmp_path / "rm", [*prompts, "a b c d"] * 20)
    head = build_component("reward_function", "gptj-reward-head", path=str(directory))
    to_base: list[dict] = []

    def base(prompts, completions, **kwargs):
        to_base.append(kwargs)
        return head(prompts, completions, **kwargs)

    delta = build_component("reward_function", "delta-reward", base=base)
    normed = build_component("reward_function", "running-norm", base=delta)
    clipped = build_component("reward_function", "clip", base=normed, min=-3.0, max=3.0)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    shape = dict(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = getattr(trl, f"{trainer}Config")(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        report_to=[],
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        beta=0.0,
        save_strategy="no",
        logging_steps=1,
    )
    trl_trainer = getattr(trl, f"{trainer}Trainer")(
        model=GPT2LMHeadModel(GPT2Config(**shape, **ids)),
        reward_funcs=named_rewards([delta, clipped]),
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trl_trainer.train()
    passed = {"reference", "trainer_state", "log_extra", "log_metric"}
    assert set(to_base[0]) == passed, "completion_ids are left out"
    assert len(to_base[0]["reference"]) == 8, "the reference column doubled"
    assert to_base[0]["trainer_state"] is trl_trainer.state
    logged = trl_trainer.state.log_history[0]
    assert all(math.isfinite(logged[f"rewards/{i}/mean"]) for i in ("0", "1"))


def test_two_cpu_ranks_through_accelerate(grpo_recipe, run_rlhf, tmp_path):
    out = run_rlhf("run", grpo_recipe(max_steps=2, beta=0.1), "--num-processes", "2")
    assert "launching 2 processes with Accelerate" in out.stdout
    stage = tmp_path / "runs" / "toy" / "grpo"
    assert state(stage)["status"] == "finished" and state(stage)["metrics"]["steps"] == 2
    assert [r["step"] for r in records(stage) if "reward/mean" in r] == [1, 2], "rank 0 logs"
    assert (stage / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero2_on_two_cpu_ranks(grpo_recipe, run_rlhf, tmp_path):
    shutil.copy(REPO_ROOT / "recipes" / "deepspeed" / "zero2.json", tmp_path / "zero2.json")
    recipe = grpo_recipe(max_steps=2, save_steps=2, beta=0.1)
    recipe.write_text('[launch]\ndeepspeed = "zero2.json"\n' + recipe.read_text())
    run_rlhf("run", recipe, "--num-processes", "2")
    stage = tmp_path / "runs" / "toy" / "grpo"
    assert (stage / "checkpoint-2" / "global_step2").is_dir(), "the DeepSpeed engine saved"
    assert (stage / "model.safetensors").is_file()
    assert state(stage)["metrics"]["steps"] == 2


def test_lora_trains_adapters_and_saves_them_merged(grpo_recipe, run_cli, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    recipe = grpo_recipe(use_peft=True, lora_r=4, lora_target_modules=["c_attn"], beta=0.1)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "toy" / "grpo"
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lora" in key for key in weights(out)), "adapters merged"
    assert not (out / "reference").exists(), "the adapters switched off are the reference"


def test_use_peft_without_peft_is_a_validate_error(grpo_recipe, run_cli, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "peft" else find_spec(name, *a),
    )
    result = run_cli("validate", grpo_recipe(use_peft=True))
    assert result.exit_code == 2
    assert "use_peft needs peft" in result.output


def test_an_eval_dataset_is_scored_every_eval_steps(grpo_recipe, run_cli, tmp_path):
    recipe = grpo_recipe(eval_steps=2, per_device_eval_batch_size=8)
    text = recipe.read_text().replace(
        TOY_REWARD,
        TOY_REWARD + '\neval_dataset = { use = "ppo-toy-prompts", rows = 4, offset = 500 }',
    )
    recipe.write_text(text)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "toy" / "grpo"
    scored = [r for r in records(out) if "eval/reward/mean" in r]
    assert [r["step"] for r in scored] == [2, 4]
    assert {"eval/reward/std", "eval/loss"} <= set(scored[0])
    assert state(out)["metrics"]["eval/reward/mean"] == scored[-1]["eval/reward/mean"]
