"""The logger objects: each implements lifecycle hooks and talks to one service."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from rlhf_plugins import StageContext, UserError, hookimpl


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record, without ``step`` and ``time``."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in ("step", "time") and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def require(module: str, extra: str) -> Any:
    """Import ``module`` or explain which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"the {extra} logger needs {module.split('.')[0]}: pip install 'rlhf-plugins[{extra}]'"
        ) from exc


class WandbLogger:
    def __init__(self, project: str, entity: str | None):
        self.project, self.entity, self.run = project, entity, None
        self.wandb = require("wandb", "wandb")

    @hookimpl
    def rlhf_stage_start(self, stage: StageContext) -> None:
        self.run = self.wandb.init(
            project=self.project,
            entity=self.entity,
            name=f"{stage.recipe_name}/{stage.name}",
            group=stage.recipe_name,
            config={"stage": stage.config, "seed": stage.seed},
            dir=str(stage.output_dir),
            reinit="finish_previous",
        )

    @hookimpl
    def rlhf_metrics_logged(self, stage: StageContext, step: int | None, metrics: dict) -> None:
        if self.run is not None:
            self.run.log(scalars(metrics), step=step)

    @hookimpl
    def rlhf_stage_end(self, stage: StageContext, status: str, metrics: dict, seconds: float):
        if self.run is not None:
            self.run.summary.update(scalars(metrics))
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None


class TensorBoardLogger:
    def __init__(self, log_dir: str | None):
        self.log_dir = Path(log_dir) if log_dir else None
        self.writer = None
        require("tensorboard", "tensorboard")

    @hookimpl
    def rlhf_run_start(self, recipe: Any, run_dir: Path) -> None:
        self.log_dir = self.log_dir or run_dir / "tensorboard"

    @hookimpl
    def rlhf_stage_start(self, stage: StageContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir / stage.name))

    @hookimpl
    def rlhf_metrics_logged(self, stage: StageContext, step: int | None, metrics: dict) -> None:
        if self.writer is None:
            return
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)

    @hookimpl
    def rlhf_stage_end(self, stage: StageContext, status: str, metrics: dict, seconds: float):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflowLogger:
    def __init__(self, tracking_uri: str | None, experiment: str | None):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.mlflow = require("mlflow", "mlflow")

    @hookimpl
    def rlhf_run_start(self, recipe: Any, run_dir: Path) -> None:
        uri = self.tracking_uri
        if uri is None:
            # the default is MLflow's file store, which MLflow 3 serves only when asked to
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(self.experiment or recipe.name)

    @hookimpl
    def rlhf_stage_start(self, stage: StageContext) -> None:
        self.mlflow.start_run(run_name=stage.name)
        self.mlflow.set_tags({"recipe": stage.recipe_name, "stage": stage.name})
        settings = next((v for k, v in stage.config.items() if k.endswith("_settings")), {})
        self.mlflow.log_params({k: str(v)[:250] for k, v in settings.items()})

    @hookimpl
    def rlhf_metrics_logged(self, stage: StageContext, step: int | None, metrics: dict) -> None:
        values = {k.replace("/", "_"): v for k, v in scalars(metrics).items()}
        if values and self.mlflow.active_run() is not None:
            self.mlflow.log_metrics(values, step=step)

    @hookimpl
    def rlhf_stage_end(self, stage: StageContext, status: str, metrics: dict, seconds: float):
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status=MLFLOW_STATUS.get(status, "FAILED"))
