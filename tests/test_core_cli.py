"""The CLI surface: help, version, verbose listing, and what a stage's log() writes."""

from __future__ import annotations

import json

LOGGING_TRAINER = """
from rlhf_plugins import StageContext, hookimpl


@hookimpl
def register_trainers(register):
    register("counter", counter, description="Logs a few numbers.")


def counter(steps: int = 3):
    def run(stage: StageContext):
        for step in range(1, steps + 1):
            stage.log({"value": step * 0.5, "bad": float("nan")}, step=step)
        return {"steps": steps}
    return run
"""

RECIPE = """
[recipe]
name = "count"

[logging]
loggers = {loggers}

[stages.count]
trainer = "counter"
trainer_settings = {{ steps = 3 }}
"""


def test_help_and_version(run_cli):
    help_text = run_cli("--help").output
    for command in ("run", "validate", "list-plugins"):
        assert command in help_text
    assert "0.1.0" in run_cli("--version").output
    run_help = run_cli("run", "--help").output
    for option in ("--set", "--force", "--only", "--num-processes", "--debug"):
        assert option in run_help


def test_verbose_listing_shows_settings(run_cli):
    output = run_cli("list-plugins", "-v").output
    assert "trainer 'sft' (plugin 'sft' (rlhf-plugins 0.1.0))" in output
    assert "    policy: policy component, required" in output
    sft = output.split("trainer 'sft'", 1)[1].split("\n\n", 1)[0]
    (learning_rate,) = [line for line in sft.splitlines() if "  learning_rate: float" in line]
    assert "> 0, default" in learning_rate and " -- " in learning_rate, "constraint and help"
    assert "    architecture: 'gptj' | 'gpt2' | 'gpt_neox', default 'gptj'" in output


def test_log_writes_metrics_jsonl_and_skips_rerun(run_cli, plugin_dist, write_recipe, tmp_path):
    plugin_dist("rlhf-counter", "rlhf_counter", LOGGING_TRAINER)
    path = write_recipe(RECIPE.format(loggers="[]"))
    result = run_cli("run", path)
    assert result.exit_code == 0, result.output
    assert "done in" in result.output and "steps=3" in result.output
    lines = (tmp_path / "runs" / "count" / "count" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["value"] for r in records] == [0.5, 1.0, 1.5]
    assert all(r["bad"] is None for r in records), "non-finite values are written as null"
    assert "skipped" in run_cli("run", path).output


def test_wandb_offline_run_is_recorded(run_cli, plugin_dist, write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    plugin_dist("rlhf-counter", "rlhf_counter", LOGGING_TRAINER)
    result = run_cli(
        "run", write_recipe(RECIPE.format(loggers='[{ use = "wandb", project = "rlhf-tests" }]'))
    )
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs" / "count" / "count" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds its event file"
