"""What survives what, through the ``rlhf`` CLI: kill -9, SIGINT, SIGTERM, two runs at once, a
full disk, half-written checkpoints, a failing final evaluation and directories rlhf did not
make. docs/reliability.md lists each case and the test here that shows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_core_run import RECIPE as SFT_RECIPE
from tests.test_ppo_recipes import metrics, state

SFT_SAVING = SFT_RECIPE.replace("logging_steps = 2 }", "logging_steps = 2, save_steps = 6 }", 1)


def rlhf(cwd: Path, *args: str) -> subprocess.Popen:
    """``rlhf ARGS`` as a real process in ``cwd`` (its own process group, output captured),
    with SIGINT's default action as in a terminal: a test session started in the background by
    a shell inherits SIGINT ignored, and Ctrl-C's test would then test nothing."""
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_plugins.cli", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``condition()`` until true; fails if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended first (exit {process.returncode}):\n{process.stdout.read()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def complete(checkpoint: Path) -> bool:
    return (checkpoint / "checkpoint_complete.json").is_file()


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert second[name].equal(tensor), name


def ppo_recipe(toy, name: str, max_steps: int = 16, extra: str = "", delay: float = 0.0) -> Path:
    """The toy ``ppo`` recipe with ``max_steps``; ``delay`` seconds slept in every reward call
    keep a run busy however fast the machine is."""
    path = toy(name=name, extra=extra)
    text = path.read_text().replace("max_steps = 8", f"max_steps = {max_steps}")
    path.write_text(text.replace("fault_calls = [] }", f"fault_calls = [], delay = {delay} }}"))
    return path


# -- data loss and corruption -----------------------------------------------------------------


def test_a_directory_rlhf_did_not_make_is_never_deleted(run_cli, write_recipe, sft_jsonl, tmp_path):
    recipe = write_recipe(SFT_RECIPE)
    stage_dir = tmp_path / "out" / "demo" / "sft"
    stage_dir.mkdir(parents=True)
    (stage_dir / "notes.txt").write_text("mine")
    result = run_cli("run", recipe, "--only", "sft", "--set", 'recipe.output_dir="out"')
    assert result.exit_code == 2
    assert "holds files that rlhf did not write" in result.output
    assert "Traceback" not in result.output
    assert (stage_dir / "notes.txt").read_text() == "mine"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    linked = tmp_path / "runs" / "demo" / "sft"
    linked.parent.mkdir(parents=True)
    linked.symlink_to(elsewhere, target_is_directory=True)
    result = run_cli("run", recipe, "--only", "sft")
    assert result.exit_code == 2 and "is a symbolic link" in result.output
    assert "Traceback" not in result.output
    assert (elsewhere / "keep.txt").read_text() == "mine"


def test_force_reruns_a_stage_directory_rlhf_made(run_cli, write_recipe, sft_jsonl, tmp_path):
    recipe = write_recipe(SFT_RECIPE)
    assert run_cli("run", recipe, "--only", "sft").exit_code == 0
    again = run_cli("run", recipe, "--only", "sft", "--force")
    assert again.exit_code == 0, again.output
    assert state(tmp_path / "runs" / "demo" / "sft")["status"] == "finished"


def test_resume_at_the_last_step_trains_no_further(run_cli, write_recipe, sft_jsonl, tmp_path):
    recipe = write_recipe(SFT_SAVING)
    assert run_cli("run", recipe, "--only", "sft").exit_code == 0
    out = tmp_path / "runs" / "demo" / "sft"
    trained = weights(out)
    # killed after checkpoint-12 was saved but before the stage was marked finished
    (out / "stage_state.json").write_text(json.dumps({**state(out), "status": "running"}))
    result = run_cli("run", recipe, "--only", "sft")
    assert result.exit_code == 0, result.output
    assert "continuing from checkpoint-12 (step 12)" in result.output
    assert state(out)["metrics"]["steps"] == 12
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    assert all(weights(out)[k].equal(v) for k, v in trained.items())


def test_a_half_written_checkpoint_is_dropped_and_metrics_are_trimmed(
    run_cli, write_recipe, sft_jsonl, tmp_path
):
    recipe = write_recipe(SFT_SAVING)
    assert run_cli("run", recipe, "--only", "sft").exit_code == 0
    out = tmp_path / "runs" / "demo" / "sft"
    logged = [r["step"] for r in metrics(out) if "loss" in r]
    # as after a full disk or a kill during the second save: checkpoint-12 lacks files
    (out / "checkpoint-12" / "checkpoint_complete.json").unlink()
    (out / "checkpoint-12" / "trainer_state.json").unlink()
    (out / "stage_state.json").write_text(json.dumps({**state(out), "status": "interrupted"}))
    result = run_cli("run", recipe, "--only", "sft")
    assert result.exit_code == 0, result.output
    assert "removed checkpoint-12: incomplete" in result.output
    assert "continuing from checkpoint-6 (step 6)" in result.output
    assert [r["step"] for r in metrics(out) if "loss" in r] == logged, "one record per step"
    assert complete(out / "checkpoint-12")


def test_a_failed_final_evaluation_keeps_the_policy_and_a_rerun_only_evaluates(
    toy, run_cli, tmp_path, monkeypatch
):
    extra = 'eval_dataset = { use = "ppo-toy-prompts", rows = 6, offset = 500 }'
    recipe = ppo_recipe(toy, "evalfail", max_steps=8, extra=extra)
    monkeypatch.setenv("PPO_TOY_FAIL_AT_CALL", "5")  # 2 updates x 2 chunks, then the evaluation
    result = run_cli("run", recipe)
    assert result.exit_code == 1 and "interrupted at reward call 5" in result.output
    out = tmp_path / "runs" / "evalfail" / "ppo"
    trained = weights(out)
    assert complete(out / "checkpoint-8")
    monkeypatch.delenv("PPO_TOY_FAIL_AT_CALL")
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "continuing from checkpoint-8 (step 8)" in result.output
    final = state(out)["metrics"]
    assert final["resumed_from_step"] == 8 and "eval/reward_mean" in final
    assert [r["step"] for r in metrics(out) if "reward/mean" in r] == [4, 8]
    assert all(weights(out)[k].equal(v) for k, v in trained.items())


@pytest.mark.slow
def test_kill_9_then_the_same_command_matches_an_uninterrupted_run(toy, run_cli, tmp_path):
    straight = ppo_recipe(toy, "straight")
    assert run_cli("run", straight).exit_code == 0
    recipe = ppo_recipe(toy, "killed")
    out = tmp_path / "runs" / "killed" / "ppo"
    process = rlhf(tmp_path, "run", recipe)
    wait_for(lambda: complete(out / "checkpoint-8"), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert state(out)["status"] == "running"
    assert "killed, resumes" in run_cli("runs").output
    code, output = finish(rlhf(tmp_path, "run", recipe))
    assert code == 0, output
    assert "resuming" in output and "continuing from checkpoint-" in output
    reference = tmp_path / "runs" / "straight" / "ppo"
    assert_same_weights(reference, out)
    steps = [r["step"] for r in metrics(out) if "reward/mean" in r]
    assert steps == [r["step"] for r in metrics(reference) if "reward/mean" in r] == [4, 8, 12, 16]
    every = [[*sorted(set(r) - {"time"}), r["step"]] for r in metrics(out)]
    assert every == [[*sorted(set(r) - {"time"}), r["step"]] for r in metrics(reference)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_second_run_is_refused_and_a_signal_stops_the_first_cleanly(
    toy, tmp_path, signum, code, said
):
    recipe = ppo_recipe(toy, "busy", max_steps=400, delay=0.5)
    out = tmp_path / "runs" / "busy" / "ppo"
    first = rlhf(tmp_path, "run", recipe)
    wait_for(lambda: (out / "metrics.jsonl").is_file(), first)
    second, output = finish(rlhf(tmp_path, "run", recipe))
    assert second == 2
    assert f"in use by another run (pid {first.pid}" in output and "Traceback" not in output
    listed, runs_output = finish(rlhf(tmp_path, "runs"))
    assert listed == 0 and f"running (pid {first.pid})" in runs_output, runs_output
    os.kill(first.pid, signum)
    returncode, output = finish(first, timeout=60)
    assert returncode == code, output
    assert f"{said}; run the same command again to resume" in output
    assert "Traceback" not in output
    assert state(out)["status"] == "interrupted"
    _, runs_output = finish(rlhf(tmp_path, "runs"))
    assert "busy  ppo    interrupted" in runs_output, runs_output


# -- clear errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/proc/rlhf-test", "a_file"])
def test_an_unusable_output_directory_is_one_message(
    run_cli, write_recipe, sft_jsonl, tmp_path, where
):
    (tmp_path / "a_file").write_text("not a directory")
    recipe = write_recipe(SFT_RECIPE)
    result = run_cli("run", recipe, "--set", f'recipe.output_dir="{where}"')
    assert result.exit_code == 2
    assert (
        "cannot write the run directory" in result.output and "recipe.output_dir" in result.output
    )
    assert "Traceback" not in result.output


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 300 KiB tmpfs: room for the recipe's inputs, not for a checkpoint."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_and_the_rerun_resumes(run_cli, write_recipe, sft_jsonl, small_disk):
    recipe = write_recipe(SFT_SAVING)
    result = run_cli("run", recipe, "--only", "sft", "--set", f'recipe.output_dir="{small_disk}"')
    assert result.exit_code == 1, result.output
    assert f"the disk is full while writing to {small_disk / 'demo' / 'sft'}" in result.output
    assert "Traceback" not in result.output
    out = small_disk / "demo" / "sft"
    assert state(out)["status"] in ("failed", "running"), "no room to record the failure"
    subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
    result = run_cli("run", recipe, "--only", "sft", "--set", f'recipe.output_dir="{small_disk}"')
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and state(out)["metrics"]["steps"] == 12
