"""Logger plugins on the lifecycle hooks: a third-party logger sees every record of every
stage in order; the built-in tensorboard, mlflow and wandb loggers write files their own
tools read."""

from __future__ import annotations

import json

import pytest

from tests.test_core_run import RECIPE

SFT_ONLY = RECIPE.split("[stages.polish]")[0].replace(
    "logging_steps = 2 }", "logging_steps = 2, save_steps = 6 }"
)

RECORDING_LOGGER = """
import json
from rlhf_plugins import hookimpl


@hookimpl
def register_loggers(register):
    register("record", record)


def record(path: str = "hooks.jsonl"):
    return Recorder(path)


class Recorder:
    def __init__(self, path):
        self.path = path

    def write(self, **event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\\n")

    @hookimpl
    def rlhf_run_start(self, recipe, run_dir):
        self.write(hook="run_start", recipe=recipe.name)

    @hookimpl
    def rlhf_stage_start(self, stage):
        self.write(hook="stage_start", stage=stage.name)

    @hookimpl
    def rlhf_metrics_logged(self, stage, step, metrics):
        self.write(hook="metrics", stage=stage.name, step=step, keys=sorted(metrics))

    @hookimpl
    def rlhf_checkpoint_saved(self, stage, path, step):
        self.write(hook="checkpoint", stage=stage.name, step=step)

    @hookimpl
    def rlhf_stage_end(self, stage, status, metrics, seconds):
        self.write(hook="stage_end", stage=stage.name, status=status)

    @hookimpl
    def rlhf_run_end(self, recipe, run_dir, status, results):
        self.write(hook="run_end", status=status, stages=sorted(results))
"""


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_logger_plugin_sees_every_record_of_every_stage(
    run_cli, plugin_dist, write_recipe, sft_jsonl, tmp_path
):
    plugin_dist("rlhf-record", "rlhf_record", RECORDING_LOGGER)
    recipe = write_recipe(
        RECIPE.replace("[stages.sft]", '[logging]\nloggers = [{ use = "record" }]\n\n[stages.sft]')
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    events = records(tmp_path / "hooks.jsonl")
    hooks = [e["hook"] for e in events]
    assert hooks[0] == "run_start" and hooks[-1] == "run_end"
    assert events[-1] == {"hook": "run_end", "status": "finished", "stages": ["polish", "sft"]}
    for stage in ("sft", "polish"):
        seen = [e for e in events if e.get("stage") == stage]
        assert seen[0]["hook"] == "stage_start" and seen[-1] == {
            "hook": "stage_end",
            "stage": stage,
            "status": "finished",
        }
        logged = records(tmp_path / "runs" / "demo" / stage / "metrics.jsonl")
        assert [e["step"] for e in seen if e["hook"] == "metrics"] == [r["step"] for r in logged]


def test_an_unknown_logger_is_a_recipe_error(run_cli, write_recipe, sft_jsonl):
    recipe = write_recipe(
        SFT_ONLY.replace(
            "[stages.sft]", '[logging]\nloggers = [{ use = "tensorbord" }]\n\n[stages.sft]'
        )
    )
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    assert (
        "logging.loggers[0].use: unknown logger 'tensorbord'; did you mean 'tensorboard'?"
        in result.output
    )


def test_tensorboard_mlflow_and_wandb_get_every_scalar(
    run_cli, write_recipe, sft_jsonl, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = '[{ use = "tensorboard" }, { use = "mlflow" }, { use = "wandb", project = "t" }]'
    recipe = write_recipe(
        SFT_ONLY.replace("[stages.sft]", f"[logging]\nloggers = {loggers}\n\n[stages.sft]")
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "demo"
    losses = [r["loss"] for r in records(run_dir / "sft" / "metrics.jsonl") if "loss" in r]

    events = EventAccumulator(str(run_dir / "tensorboard" / "sft"))
    events.Reload()
    assert [pytest.approx(e.value) for e in events.Scalars("loss")] == losses

    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "demo"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "sft" and mlflow_run.info.status == "FINISHED"
    history = client.get_metric_history(mlflow_run.info.run_id, "loss")
    assert [pytest.approx(m.value) for m in history] == losses
    assert mlflow_run.data.params["learning_rate"] == "0.003"

    assert list((run_dir / "sft" / "wandb").glob("offline-run-*")), "wandb wrote its offline run"
