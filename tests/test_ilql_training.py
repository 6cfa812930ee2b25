"""The ``ilql`` trainer through recipes: target sync, resume, two CPU processes, evaluation
with a decode_beta sweep, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_builtins.ilql.models import HEADS_WEIGHTS

NAMES = ["ann", "bob", "cy", "dee", "eli", "fay"]
THINGS = ["cat", "dog", "key", "car"]


@pytest.fixture
def offline_jsonl(tmp_path: Path) -> Path:
    """48 offline rows: a faithful summary (+1) and a wrong, rambling one (-1) per post."""
    path = tmp_path / "offline.jsonl"
    with path.open("w") as f:
        for i in range(24):
            name, thing = NAMES[i % 6], THINGS[i % 4]
            prompt = f"POST: {name} lost a {thing} today.\nTL;DR:"
            rows = [
                (f" {name} lost {thing}.", 1.0),
                (f" {NAMES[(i + 1) % 6]} has a {THINGS[(i + 1) % 4]} and and.", -1.0),
            ]
            for completion, reward in rows:
                f.write(
                    json.dumps({"prompt": prompt, "completion": completion, "reward": reward})
                    + "\n"
                )
    return path


def ilql_recipe(data: Path, settings: str = "", extra: str = "") -> str:
    return f"""
[recipe]
name = "ilql_test"
seed = 3

[stages.ilql]
trainer = "ilql"
policy = {{ use = "tiny-causal-lm", n_layer = 1, n_embd = 32, n_head = 4, vocab_size = 300 }}
dataset = {{ use = "jsonl", path = "{data}" }}

[stages.ilql.trainer_settings]
per_device_train_batch_size = 4
learning_rate = 1e-3
logging_steps = 1
{settings}
{extra}
"""


def heads_of(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stage_dir / HEADS_WEIGHTS))


def targets_equal_q_heads(heads: dict[str, torch.Tensor]) -> bool:
    keys = [k for k in heads if k.startswith("q_heads.")]
    return all(torch.equal(heads[k], heads["target_" + k]) for k in keys)


def test_target_heads_sync_after_every_n_optimizer_steps(
    run_cli, write_recipe, offline_jsonl, tmp_path
):
    settings = "alpha = 1.0\ntarget_sync_steps = 2\nmax_steps = 4"
    recipe = write_recipe(ilql_recipe(offline_jsonl, settings))
    assert run_cli("run", recipe).exit_code == 0
    stage_dir = tmp_path / "runs" / "ilql_test" / "ilql"
    # alpha = 1 copies the Q heads: synced at step 4, the last one
    assert targets_equal_q_heads(heads_of(stage_dir))
    result = run_cli("run", recipe, "--force", "--set", "stages.ilql.trainer_settings.max_steps=3")
    assert result.exit_code == 0
    # synced at step 2, then step 3 moved the Q heads only
    assert not targets_equal_q_heads(heads_of(stage_dir))
    metrics = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "loss_q", "loss_v", "loss_cql", "loss_awac", "lr"):
        assert all(key in m for m in metrics)


def test_gradient_checkpointing_and_save_steps_zero(run_cli, write_recipe, offline_jsonl, tmp_path):
    settings = "max_steps = 2\nsave_steps = 0\ngradient_checkpointing = true"
    result = run_cli("run", write_recipe(ilql_recipe(offline_jsonl, settings)))
    assert result.exit_code == 0, result.output
    stage_dir = tmp_path / "runs" / "ilql_test" / "ilql"
    assert (stage_dir / HEADS_WEIGHTS).is_file() and not list(stage_dir.glob("checkpoint-*"))


def test_resume_from_a_checkpoint_reaches_the_same_model(
    run_cli, write_recipe, offline_jsonl, tmp_path
):
    recipe = write_recipe(ilql_recipe(offline_jsonl, "max_steps = 4\nsave_steps = 2"))
    assert run_cli("run", recipe).exit_code == 0
    stage_dir = tmp_path / "runs" / "ilql_test" / "ilql"
    uninterrupted = heads_of(stage_dir)
    assert (stage_dir / "checkpoint-2").is_dir()
    # as if the run had died after checkpoint-2: the stage is still 'running'
    state = json.loads((stage_dir / "stage_state.json").read_text())
    (stage_dir / "stage_state.json").write_text(json.dumps({**state, "status": "running"}))
    (stage_dir / "metrics.jsonl").unlink()
    result = run_cli("run", recipe)
    assert result.exit_code == 0 and "resuming" in result.output
    resumed = heads_of(stage_dir)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    steps = [
        json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [3, 4]


def test_evaluation_sweeps_decode_beta(run_cli, write_recipe, offline_jsonl, tmp_path):
    evaluation = f"""
[stages.eval]
evaluator = "rouge"
dataset = {{ use = "jsonl", path = "{offline_jsonl}", columns = {{ reference = "completion" }}, limit = 4 }}
policies = {{ base = {{ use = "hf-causal-lm", from_stage = "ilql" }}, ilql = {{ use = "ilql", from_stage = "ilql", decode_beta = [0, 2] }} }}
[stages.eval.evaluator_settings]
max_new_tokens = 6
"""
    recipe = write_recipe(ilql_recipe(offline_jsonl, "max_steps = 2", evaluation))
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "ilql_test" / "eval" / "eval.json").read_text())
    rows = report["policies"]
    assert set(rows) == {"base", "ilql[beta=0]", "ilql[beta=2]"}
    # decode_beta 0 generates what the plain causal LM generates
    assert [s["generated"] for s in rows["ilql[beta=0]"]["samples"]] == [
        s["generated"] for s in rows["base"]["samples"]
    ]


@pytest.mark.slow
def test_two_cpu_processes(run_cli, write_recipe, offline_jsonl, tmp_path):
    settings = "max_steps = 3\nsave_steps = 2"
    extra = f"""
[stages.ilql.eval_dataset]
use = "jsonl"
path = "{offline_jsonl}"
limit = 7
"""
    recipe = write_recipe(ilql_recipe(offline_jsonl, settings + "\neval_steps = 2", extra))
    result = run_cli("run", recipe, "--num-processes", "2")
    assert result.exit_code == 0, result.output
    stage_dir = tmp_path / "runs" / "ilql_test" / "ilql"
    assert (stage_dir / HEADS_WEIGHTS).is_file() and (stage_dir / "checkpoint-2").is_dir()
    metrics = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert [m["step"] for m in metrics if "eval/loss" in m] == [2, 3]


def test_user_errors(run_cli, write_recipe, offline_jsonl, tmp_path):
    no_reward = tmp_path / "sft.jsonl"
    no_reward.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    result = run_cli("run", write_recipe(ilql_recipe(no_reward, "max_steps = 1")))
    assert result.exit_code == 2 and "needs columns prompt, completion, reward" in result.output
    result = run_cli("run", write_recipe(ilql_recipe(offline_jsonl, "tau = 1.5\nalpha = 0.0")))
    assert result.exit_code == 2
    assert "trainer_settings.tau: must be < 1" in result.output
    assert "trainer_settings.alpha: must be > 0" in result.output


def test_an_ilql_policy_continues_training_with_its_heads(
    run_cli, write_recipe, offline_jsonl, tmp_path
):
    more = f"""
[stages.more]
trainer = "ilql"
policy = {{ use = "ilql", from_stage = "ilql" }}
dataset = {{ use = "jsonl", path = "{offline_jsonl}" }}

[stages.more.trainer_settings]
per_device_train_batch_size = 4
max_steps = 1
target_sync_steps = 2
"""
    result = run_cli("run", write_recipe(ilql_recipe(offline_jsonl, "max_steps = 2", more)))
    assert result.exit_code == 0, result.output
    first, second = (heads_of(tmp_path / "runs" / "ilql_test" / s) for s in ("ilql", "more"))
    # the target heads get no gradients and were not synced (target_sync_steps > max_steps):
    # unchanged exactly when the saved heads were the starting point
    targets = [k for k in first if k.startswith("target_q_heads.")]
    assert targets and all(torch.equal(first[k], second[k]) for k in targets)
    mismatch = ilql_recipe(offline_jsonl, "max_steps = 2", more + "two_qs = false\n")
    result = run_cli("run", write_recipe(mismatch))
    assert result.exit_code == 2 and "two_qs" in result.output
