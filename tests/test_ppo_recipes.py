"""The ``ppo`` trainer end to end through the ``rlhf`` CLI, on a tiny GPT-2 and the toy plugin
of tests/ppo_toy_plugin.py (prompts and a rule-based reward that can misbehave)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "stage_state.json").read_text())


def test_ppo_trains_logs_and_saves_a_plain_causal_lm(toy, run_cli, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    extra = 'eval_dataset = { use = "ppo-toy-prompts", rows = 6, offset = 500 }'
    result = run_cli("run", toy(extra=extra))
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "toy" / "ppo"
    records = metrics(out)
    assert [r["step"] for r in records if "reward/mean" in r] == [4, 8]
    for key in (
        "reward/mean",
        "reward/std",
        "kl",
        "kl_coef",
        "policy/entropy",
        "policy/clipfrac",
        "value/clipfrac",
        "loss/value",
        "policy/approx_kl",
        "tokens_per_s",
        "samples_per_s",
        "learning_rate",
    ):
        assert key in records[0], key
    final = state(out)["metrics"]
    assert final["steps"] == 8 and final["eval/samples"] == 6 and final["rank_param_spread"] == 0
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    head = load_file(out / "value_head.safetensors")
    assert head["0.weight"].shape == (64, 32) and head["2.weight"].shape == (1, 64)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("nan", "NaN/inf"),
        ("short", "returned 3 scores for 4 completions"),
        ("string", "returned 4 value(s) that are not numbers among 4 (e.g. str '0."),
    ],
)
def test_unusable_rewards_skip_the_chunk_and_are_counted(
    toy, run_cli, tmp_path, fault, expected, caplog
):
    with caplog.at_level(logging.WARNING, logger="rlhf_builtins.ppo"):
        result = run_cli("run", toy(fault=fault, fault_calls=[2]))
    assert result.exit_code == 0, result.output
    assert "skipped a chunk of 4 samples" in caplog.text and expected in caplog.text
    records = metrics(tmp_path / "runs" / "toy" / "ppo")
    assert records[0]["skipped_chunks"] == 1
    assert records[0]["rollout/samples"] == 8  # the skipped chunk was replaced


def test_a_reward_that_never_works_fails_the_stage_with_a_clear_error(toy, run_cli):
    result = run_cli("run", toy(fault="short", fault_calls=list(range(1, 30))))
    assert result.exit_code == 1  # a stage failed (README), not a bad recipe
    assert "stage 'ppo' failed" in result.output
    assert "unusable scores for 8 chunks in a row (max_skipped_chunks)" in result.output
    assert "Traceback" not in result.output


def test_resume_after_an_interruption_continues_from_the_saved_step(
    toy, run_cli, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    assert run_cli("run", toy(name="straight")).exit_code == 0
    interrupted = toy(name="interrupted")
    monkeypatch.setenv("PPO_TOY_FAIL_AT_CALL", "3")  # the first call of the second update
    result = run_cli("run", interrupted)
    assert result.exit_code == 1 and "interrupted at reward call 3" in result.output
    out = tmp_path / "runs" / "interrupted" / "ppo"
    assert state(out)["status"] == "failed"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    monkeypatch.delenv("PPO_TOY_FAIL_AT_CALL")
    result = run_cli("run", interrupted)
    assert result.exit_code == 0 and "resuming" in result.output
    assert state(out)["metrics"]["resumed_from_step"] == 4
    steps = [r["step"] for r in metrics(out) if "reward/mean" in r]
    assert steps == [4, 8]  # one update before the interruption, one after it
    straight = tmp_path / "runs" / "straight" / "ppo"
    resumed_weights = load_file(out / "model.safetensors")
    for name, tensor in load_file(straight / "model.safetensors").items():
        assert resumed_weights[name].equal(tensor), name


def test_two_processes_stay_in_sync(toy, run_cli, tmp_path):
    result = run_cli("run", toy(name="ddp"), "--num-processes", "2")
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "ddp" / "ppo"
    final = state(out)["metrics"]
    assert final["rank_param_spread"] == 0
    assert metrics(out)[0]["rollout/samples"] == 16  # 8 experiences on each of 2 processes


def test_running_norm_unavailable_on_one_rank_skips_the_chunk_on_both(toy, run_rlhf, tmp_path):
    """``running-norm`` all-reduces its moments; its base raises ``RewardUnavailable`` at call
    2 on rank 1 only. Both ranks still meet in the all-reduce, both skip that chunk together
    (no mismatched collectives: no gloo error, no hang) and the run finishes."""
    recipe = toy(name="norm")
    text = recipe.read_text()
    reward_line = next(line for line in text.splitlines() if line.startswith("reward = "))
    faulty = 'fault = "unavailable", fault_calls = [2], fault_rank = 1'
    norm = f'reward = {{ use = "running-norm", base = {{ use = "ppo-toy-reward", {faulty} }} }}'
    recipe.write_text(text.replace(reward_line, norm))
    out = run_rlhf("run", recipe, "--num-processes", "2", timeout=300)
    logs = out.stdout + out.stderr
    assert "the reward function is unavailable (toy fault at call 2)" in logs
    assert "unavailable on 1 other process(es)" in logs
    run = tmp_path / "runs" / "norm" / "ppo"
    final = state(run)["metrics"]
    assert final["skipped_chunks"] == 1 and final["rank_param_spread"] == 0
    assert metrics(run)[0]["rollout/samples"] == 16  # the skipped chunk was replaced


def test_deepspeed_zero2_on_two_processes_resumes(toy, run_cli, tmp_path, monkeypatch):
    """ZeRO-2 (sharded optimizer states) through Accelerate on 2 CPU processes, interrupted
    after the first checkpoint and resumed from DeepSpeed's checkpoint."""
    zero2 = REPO / "recipes" / "deepspeed" / "zero2.json"
    recipe = toy(name="zero2", extra=f'[launch]\nnum_processes = 2\ndeepspeed = "{zero2}"')
    monkeypatch.setenv("PPO_TOY_FAIL_AT_CALL", "3")
    assert run_cli("run", recipe).exit_code == 1
    out = tmp_path / "runs" / "zero2" / "ppo"
    assert (out / "checkpoint-4" / "pytorch_model").is_dir()  # DeepSpeed's own checkpoint
    monkeypatch.delenv("PPO_TOY_FAIL_AT_CALL")
    assert run_cli("run", recipe).exit_code == 0
    resumed = state(out)["metrics"]
    assert resumed["resumed_from_step"] == 4 and resumed["rank_param_spread"] == 0
    assert [r["step"] for r in metrics(out) if "reward/mean" in r] == [4, 8]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one mixed-precision setting per process; reset it around a test that
    runs recipes with different ``[launch] mixed_precision`` in this process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield lambda: AcceleratorState._reset_state(reset_partial_state=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixed_precision_and_gradient_checkpointing_are_honoured(
    toy, run_cli, tmp_path, fresh_accelerate_state
):
    """bf16 autocast changes the numbers of the same seeded run; gradient checkpointing
    (recomputation in backward) does not break training."""
    assert run_cli("run", toy(name="fp32")).exit_code == 0
    fresh_accelerate_state()
    bf16 = toy(name="bf16", extra='[launch]\nmixed_precision = "bf16"')
    result = run_cli(
        "run", bf16, "--set", "stages.ppo.trainer_settings.gradient_checkpointing=true"
    )
    assert result.exit_code == 0, result.output
    fp32_run = metrics(tmp_path / "runs" / "fp32" / "ppo")[0]
    bf16_run = metrics(tmp_path / "runs" / "bf16" / "ppo")[0]
    assert fp32_run["rollout/entropy"] != bf16_run["rollout/entropy"]


def test_the_hook_module_imports_nothing_heavy():
    code = (
        "import sys, rlhf_builtins.ppo; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
