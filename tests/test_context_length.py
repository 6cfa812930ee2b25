"""Sequences longer than the model's context: ``rlhf validate`` names both numbers and the
settings when the policy's context is known from the recipe (``tiny-causal-lm``, a local
directory), the stage does before its first step otherwise, and prompts are cut to fit by
default in PPO and evaluation (once an ``IndexError`` deep inside the model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

TINY = 'use = "tiny-causal-lm", architecture = "gptj", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300'

SFT = """
[recipe]
name = "context"

[stages.sft]
trainer = "sft"
policy = {{ {policy} }}
dataset = {{ use = "jsonl", path = "long.jsonl" }}
trainer_settings = {{ max_steps = 1, per_device_train_batch_size = 2{settings} }}
"""


@pytest.fixture
def long_jsonl(tmp_path: Path) -> Path:
    """Rows whose prompts run from about 20 to several hundred tokens of a tiny tokenizer."""
    rng = random.Random(0)
    with (tmp_path / "long.jsonl").open("w") as f:
        for i in range(16):
            words = " ".join(
                "".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(10 + 25 * i)
            )
            row = {"prompt": f"{words} TL;DR:", "completion": " a summary.", "reference": " ref"}
            f.write(json.dumps(row) + "\n")
    return tmp_path / "long.jsonl"


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line or " - " in line]
    text = "\n".join(errors)
    for fragment in fragments:
        assert fragment in text, result.output
    return text


def test_validate_names_max_length_and_the_tiny_policys_positions(
    run_cli, write_recipe, long_jsonl
):
    recipe = write_recipe(SFT.format(policy=TINY, settings=", max_length = 550"))
    result = run_cli("validate", recipe)
    assert_one_line_error(
        result,
        "stages.sft.trainer_settings: max_length = 550 needs 550 positions but policy "
        "'tiny-causal-lm' (stages.sft.policy) has 512 (max_positions = 512)",
        "lower the setting or use a longer context",
    )


def test_validate_reads_a_local_models_config(run_cli, write_recipe, long_jsonl, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(tmp_path / "m")
    recipe = write_recipe(
        SFT.format(policy='use = "hf-causal-lm", model = "m"', settings=", max_length = 100")
    )
    assert_one_line_error(
        run_cli("validate", recipe),
        "max_length = 100 needs 100 positions",
        f"has 64 (n_positions = 64 in {tmp_path / 'm' / 'config.json'})",
    )


def test_a_context_unknown_at_validation_is_checked_before_the_first_step(
    run_cli, write_recipe, long_jsonl, tmp_path
):
    text = (
        SFT.format(policy=f"{TINY}, max_positions = 64", settings="")
        + """
[stages.more]
trainer = "sft"
policy = { use = "hf-causal-lm", from_stage = "sft" }
dataset = { use = "jsonl", path = "long.jsonl" }
trainer_settings = { max_steps = 1, per_device_train_batch_size = 2, max_length = 100 }
"""
    )
    recipe = write_recipe(text)
    assert run_cli("validate", recipe).exit_code == 0
    result = run_cli("run", recipe)
    assert_one_line_error(
        result,
        "sft: max_length = 100 needs 100 positions but policy",
        "has 64 (n_positions = 64 in the model's config)",
    )
    assert (tmp_path / "runs" / "context" / "sft" / "model.safetensors").is_file()
    assert not (tmp_path / "runs" / "context" / "more" / "checkpoint-1").exists()


PPO = """
[recipe]
name = "ppo_context"
seed = 3

[stages.ppo]
trainer = "ppo"
policy = {{ {policy}, max_positions = 64 }}
dataset = {{ use = "jsonl", path = "long.jsonl" }}
reward = {{ use = "ppo-toy-reward" }}
eval_dataset = {{ use = "jsonl", path = "long.jsonl", limit = 4 }}
trainer_settings = {{ max_steps = 1, num_rollouts = 4, chunk_size = 4, per_device_train_batch_size = 4, ppo_epochs = 1, num_layers_unfrozen = 1, max_new_tokens = 6{settings} }}

[stages.eval]
evaluator = "rouge"
policies = {{ ppo = {{ use = "hf-causal-lm", from_stage = "ppo" }} }}
dataset = {{ use = "jsonl", path = "long.jsonl", limit = 4 }}
evaluator_settings = {{ max_new_tokens = 6, batch_size = 4 }}
"""


def test_prompts_longer_than_the_context_are_cut_to_fit_by_default(
    toy, run_cli, write_recipe, long_jsonl, tmp_path
):
    result = run_cli("run", write_recipe(PPO.format(policy=TINY, settings="")))
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "runs" / "ppo_context" / "ppo" / "stage_state.json").read_text())
    assert final["metrics"]["steps"] == 1 and final["metrics"]["eval/samples"] == 4
    assert (tmp_path / "runs" / "ppo_context" / "eval" / "eval.md").is_file()


def test_a_prompt_budget_above_the_context_is_refused_at_validate(
    toy, run_cli, write_recipe, long_jsonl
):
    recipe = write_recipe(PPO.format(policy=TINY, settings=", max_prompt_length = 60"))
    assert_one_line_error(
        run_cli("validate", recipe),
        "stages.ppo.trainer_settings: max_prompt_length + max_new_tokens = 60 + 6 needs 66 "
        "positions but policy 'tiny-causal-lm' (stages.ppo.policy) has 64 (max_positions = 64)",
    )
