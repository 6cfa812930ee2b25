"""``rlhf run`` end to end on tiny models: outputs, skip on rerun, overrides, --force, --only,
failures, and 2 CPU ranks through Accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

RECIPE = """
[recipe]
name = "demo"
seed = 3

[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300 }
dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }
trainer_settings = { learning_rate = 3e-3, max_steps = 12, per_device_train_batch_size = 16, logging_steps = 2 }

[stages.polish]
trainer = "sft"
policy = { use = "hf-causal-lm", from_stage = "sft" }
dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" }, limit = 32 }
trainer_settings = { learning_rate = 1e-3, max_steps = 2, per_device_train_batch_size = 16 }
"""

FAILING_TRAINER = """
from rlhf_plugins import hookimpl


@hookimpl
def register_trainers(register):
    register("explode", explode)


def explode(message: str = "boom"):
    def run(stage):
        raise RuntimeError(message)
    return run
"""


def state(tmp_path: Path, stage: str) -> dict:
    return json.loads((tmp_path / "runs" / "demo" / stage / "stage_state.json").read_text())


@pytest.fixture
def recipe(write_recipe, sft_jsonl) -> Path:
    return write_recipe(RECIPE)


def test_run_trains_saves_and_skips_unchanged_stages(run_cli, recipe, tmp_path):
    first = run_cli("run", recipe)
    assert first.exit_code == 0, first.output
    out = tmp_path / "runs" / "demo" / "sft"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    sft = state(tmp_path, "sft")
    assert sft["status"] == "finished"
    assert sft["metrics"]["last_loss"] < sft["metrics"]["first_loss"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records)
    polish_id = state(tmp_path, "polish")["run_id"]

    again = run_cli("run", recipe)
    assert again.exit_code == 0
    assert again.output.count("finished and unchanged, skipped") == 2
    assert state(tmp_path, "polish")["run_id"] == polish_id

    changed = run_cli("run", recipe, "--set", "stages.sft.trainer_settings.learning_rate=1e-3")
    assert changed.exit_code == 0
    assert "[1/2] sft (trainer 'sft'): running" in changed.output
    assert "[2/2] polish (trainer 'sft'): running" in changed.output, "downstream reruns too"

    only = run_cli(
        "run",
        recipe,
        "--set",
        "stages.sft.trainer_settings.learning_rate=1e-3",
        "--only",
        "polish",
        "--force",
    )
    assert only.exit_code == 0
    assert "[1/1] polish" in only.output and "sft (" not in only.output


def test_only_needs_finished_inputs(run_cli, recipe):
    result = run_cli("run", recipe, "--only", "polish")
    assert result.exit_code == 2
    assert "needs sft, which has not finished" in result.output


def test_only_unknown_stage(run_cli, recipe):
    result = run_cli("run", recipe, "--only", "polsh")
    assert result.exit_code == 2 and "did you mean 'polish'" in result.output


def test_interrupted_stage_resumes(run_cli, recipe, tmp_path):
    assert run_cli("run", recipe, "--only", "sft").exit_code == 0
    out = tmp_path / "runs" / "demo" / "sft"
    interrupted = {**state(tmp_path, "sft"), "status": "running"}
    (out / "stage_state.json").write_text(json.dumps(interrupted))
    result = run_cli("run", recipe, "--only", "sft")
    assert result.exit_code == 0, result.output
    assert "sft (trainer 'sft'): resuming" in result.output
    assert state(tmp_path, "sft")["status"] == "finished"


def test_failing_stage_exits_1_without_traceback(run_cli, plugin_dist, write_recipe):
    plugin_dist("rlhf-explode", "rlhf_explode", FAILING_TRAINER)
    path = write_recipe(
        '[recipe]\nname = "demo"\n[stages.x]\ntrainer = "explode"\n'
        'trainer_settings = { message = "kaboom" }\n'
    )
    result = run_cli("run", path)
    assert result.exit_code == 1
    assert "stage 'x' failed: RuntimeError: kaboom" in result.output
    assert "Traceback" not in result.output
    assert state_of(path.parent, "x")["status"] == "failed"
    debug = run_cli("run", path, "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.output


def state_of(root: Path, stage: str) -> dict:
    return json.loads((root / "runs" / "demo" / stage / "stage_state.json").read_text())


def test_user_error_inside_a_stage_is_one_message(run_cli, write_recipe, sft_jsonl):
    text = RECIPE.replace(
        ', columns = { prompt = "q", completion = "a" } }\ntrainer_settings',
        " }\ntrainer_settings",
        1,
    )
    result = run_cli("run", write_recipe(text), "--only", "sft")
    assert result.exit_code == 2
    assert "sft: dataset needs columns prompt, completion (a 'sft' view)" in result.output


def test_two_cpu_ranks_through_accelerate(recipe, tmp_path, run_rlhf):
    out = run_rlhf("run", recipe, "--only", "sft", "--num-processes", "2")
    assert "launching 2 processes with Accelerate" in out.stdout
    assert out.stdout.count("finished demo") == 1, "only the main rank reports"
    sft = state(tmp_path, "sft")
    assert sft["status"] == "finished" and sft["metrics"]["steps"] == 12


def launched(tmp_path: Path, recipe: Path, *args: str, site: Path | None = None):
    """``rlhf run RECIPE --num-processes 2 ARGS`` as a real process, whatever it exits with."""
    env = {**os.environ, "PYTHONPATH": str(site)} if site else None
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_plugins.cli",
            "run",
            str(recipe),
            "--num-processes",
            "2",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_a_stage_failing_on_two_ranks_ends_as_on_one(tmp_path, write_recipe, plugin_dist):
    """Our one error line (once, not once per rank), the summary table and exit 1; torchrun's
    agent log and ChildFailedError trace only with -v."""
    site = plugin_dist("rlhf-explode", "rlhf_explode", FAILING_TRAINER)
    recipe = write_recipe('[recipe]\nname = "demo"\n\n[stages.boom]\ntrainer = "explode"\n')
    out = launched(tmp_path, recipe, site=site)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.splitlines() == ["error: stage 'boom' failed: RuntimeError: boom"]
    assert "boom   failed" in out.stdout
    verbose = launched(tmp_path, recipe, "-v", site=site)
    assert verbose.returncode == 1
    assert "ChildFailedError" in verbose.stderr
    assert verbose.stderr.count("error: stage 'boom' failed: RuntimeError: boom") == 1


def test_bad_data_on_two_ranks_exits_2_with_one_line(recipe, tmp_path):
    with (tmp_path / "data.jsonl").open("a") as data:
        data.write('{"q": 3, "a": "x"}\n')
    out = launched(tmp_path, recipe, "--only", "sft")
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: ") and "data.jsonl" in line and "line " in line
    for noise in ("Traceback", "ChildFailedError", "SIGTERM", "exited with code"):
        assert noise not in out.stdout + out.stderr


def test_the_first_rank_that_failed_gives_the_exit_code():
    """A rank the launcher stopped because another one failed reports an interruption: the
    failure is the cause; every rank's line once; without reports, the launcher's own."""
    from rlhf_plugins._engine.launcher import outcome

    stopped = {"line": "terminated (SIGTERM); run ...", "code": 143, "time": 1.0}
    failed = {"line": "error: bad row", "code": 2, "time": 2.0}
    assert outcome(1, [stopped, failed, {**failed, "time": 3.0}], []).lines == ["error: bad row"]
    assert outcome(1, [stopped, failed], []).code == 2
    assert outcome(143, [stopped], []).code == 143
    assert outcome(0, [failed], ["log"]).lines == []
    ended = outcome(1, [], ["torchrun: no such host"])
    assert ended.code == 1 and ended.lines[0] == "torchrun: no such host"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_deepspeed_runs_every_stage_of_a_recipe_on_two_cpu_ranks(
    config, recipe, tmp_path, run_rlhf
):
    """Both stages in one process: each gets its own DeepSpeed accelerator (Accelerate refuses a
    second one unless the first stage's state is forgotten), and under ZeRO-3 the second stage
    loads the first one's saved model whole."""
    shutil.copy(REPO_ROOT / "recipes" / "deepspeed" / config, tmp_path / config)
    text = recipe.read_text().replace(
        "[stages.sft]", f'[launch]\ndeepspeed = "{config}"\n\n[stages.sft]'
    )
    recipe.write_text(text)
    run_rlhf(
        "run", recipe, "--num-processes", "2", "--set", "stages.sft.trainer_settings.save_steps=6"
    )
    checkpoint = tmp_path / "runs" / "demo" / "sft" / "checkpoint-6"
    assert (checkpoint / "global_step6").is_dir(), "the DeepSpeed engine wrote the checkpoint"
    for stage, steps in (("sft", 12), ("polish", 2)):
        assert (tmp_path / "runs" / "demo" / stage / "model.safetensors").is_file()
        assert state(tmp_path, stage)["metrics"]["steps"] == steps


def test_local_model_path_is_relative_to_the_recipe(run_cli, recipe, tmp_path, sft_jsonl):
    assert run_cli("run", recipe, "--only", "sft").exit_code == 0
    nested = tmp_path / "more" / "followup.toml"
    nested.parent.mkdir()
    shutil.copy(sft_jsonl, nested.parent / "data.jsonl")
    nested.write_text(
        '[recipe]\nname = "followup"\n\n[stages.tune]\ntrainer = "sft"\n'
        'policy = { use = "hf-causal-lm", model = "../runs/demo/sft" }\n'
        'dataset = { use = "jsonl", path = "data.jsonl", '
        'columns = { prompt = "q", completion = "a" }, limit = 16 }\n'
        "trainer_settings = { max_steps = 1, per_device_train_batch_size = 16 }\n"
    )
    result = run_cli("run", nested)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "followup" / "tune" / "model.safetensors").is_file()


COUNTING_TRAINER = """
from rlhf_plugins import hookimpl


@hookimpl
def register_trainers(register):
    register("count", count)


def count(steps: int = {default}):
    def run(stage):
        (stage.output_dir / "steps.txt").write_text(str(steps))
        return {{"steps": steps}}
    return run
"""


def test_a_plugin_upgrade_that_changes_a_default_reruns_the_stage(
    run_cli, plugin_dist, write_recipe, tmp_path
):
    path = write_recipe('[recipe]\nname = "demo"\n[stages.x]\ntrainer = "count"\n')
    out = tmp_path / "runs" / "demo" / "x"
    plugin_dist("rlhf-count", "rlhf_count", COUNTING_TRAINER.format(default=3), version="1.0")
    assert run_cli("run", path).exit_code == 0
    resolved = json.loads((out / "resolved_stage.json").read_text())["stages"]["x"]
    assert resolved["trainer_settings"] == {"steps": 3}
    assert resolved["plugin"] == "plugin 'rlhf-count' (rlhf-count 1.0)"
    assert "skipped" in run_cli("run", path).output

    shutil.rmtree(tmp_path / "site" / "rlhf_count-1.0.dist-info")
    plugin_dist("rlhf-count", "rlhf_count", COUNTING_TRAINER.format(default=5), version="1.1")
    rerun = run_cli("run", path)
    assert rerun.exit_code == 0 and "skipped" not in rerun.output, rerun.output
    assert (out / "steps.txt").read_text() == "5"


def test_save_steps_zero_writes_no_checkpoint_in_a_trainer_stage(run_cli, recipe, tmp_path):
    """``TrainingSettings.save_steps = 0`` keeps its meaning through ``TrainingArguments``."""
    result = run_cli(
        "run", recipe, "--only", "sft", "--set", "stages.sft.trainer_settings.save_steps=0"
    )
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "runs" / "demo" / "sft").glob("checkpoint-*"))


def test_a_dataset_trl_drops_whole_is_one_message(run_cli, recipe):
    result = run_cli(
        "run", recipe, "--only", "sft", "--set", "stages.sft.trainer_settings.max_length=2"
    )
    assert result.exit_code == 2, result.output
    assert "sft: no row of dataset is left after SFTTrainer prepared its" in result.output
    assert "max_length (2)" in result.output
