"""Loggers ``wandb``, ``tensorboard`` and ``mlflow``: each mirrors every record of every
stage's ``metrics.jsonl`` (the ``rlhf_metrics_logged`` hook) to its service, one run per
stage. Chosen in a recipe's ``[logging] loggers = [{ use = "tensorboard" }, ...]``.

This hook module imports nothing heavy; each logger imports its library when a run starts.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import hookimpl


@hookimpl
def register_loggers(register):
    register("wandb", wandb, description="Weights & Biases (WANDB_MODE=offline works offline).")
    register("tensorboard", tensorboard, description="TensorBoard event files under the run.")
    register("mlflow", mlflow, description="MLflow: a local mlruns/ store or a tracking server.")


def wandb(
    project: Annotated[str, Field(description="the wandb project")] = "rlhf-plugins",
    entity: Annotated[str | None, Field(description="the wandb team or user")] = None,
):
    """One wandb run per stage, grouped by recipe."""
    from rlhf_builtins.loggers.services import WandbLogger

    return WandbLogger(project=project, entity=entity)


def tensorboard(
    log_dir: Annotated[
        str | None,
        Field(
            description="where event files go, one folder per stage (default: <run>/tensorboard)"
        ),
    ] = None,
):
    """Scalars of every numeric metric, one event folder per stage."""
    from rlhf_builtins.loggers.services import TensorBoardLogger

    return TensorBoardLogger(log_dir=log_dir)


def mlflow(
    tracking_uri: Annotated[
        str | None,
        Field(description="an MLflow tracking URI (default: a file store in <run>/mlruns)"),
    ] = None,
    experiment: Annotated[
        str | None, Field(description="the experiment name (default: the recipe's name)")
    ] = None,
):
    """One MLflow run per stage with its settings as parameters and every metric."""
    from rlhf_builtins.loggers.services import MLflowLogger

    return MLflowLogger(tracking_uri=tracking_uri, experiment=experiment)
