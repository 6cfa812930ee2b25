"""Run a validated recipe: stages in order, outputs under ``runs/<recipe>/<stage>/``.

Each stage directory holds a ``stage_state.json`` with the hash of the stage's resolved config
(its table, the recipe seed and the run ids of the stages it needs). A finished stage with the
same hash is skipped; an interrupted one with the same hash resumes; ``force`` reruns.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlhf_plugins._engine.building import Builder, factory_arguments
from rlhf_plugins._engine.console import format_metrics, summary_table
from rlhf_plugins._engine.errors import StageFailed, UserError
from rlhf_plugins._engine.factories import describe
from rlhf_plugins._engine.rank_agreement import check_ranks_agree
from rlhf_plugins._engine.ranks import (
    forget_stage_configuration,
    free_memory,
    is_main_process,
    wait_for_everyone,
)
from rlhf_plugins._engine.recipe import Recipe, StageSpec
from rlhf_plugins._engine.registry import Registry
from rlhf_plugins._engine.rundir import (
    RESOLVED_FILE,
    RESUMABLE,
    checkpoint_step,
    clear_stage_dir,
    disk_full,
    free_space,
    read_state,
    record_stop,
    write_json_atomically,
    write_state,
)
from rlhf_plugins._engine.runlock import Terminated, was_terminated
from rlhf_plugins._engine.settings import did_you_mean
from rlhf_plugins._engine.stage_context import StageContext

Echo = Callable[[str], None]


def stage_error(stage: str, out: Path, exc: Exception) -> UserError:
    """The one-line error that a stage's exception ends the run with: a full disk says so,
    a ``UserError`` stays as it is, anything else becomes ``StageFailed`` (exit 1)."""
    if disk_full(exc):
        return StageFailed(
            f"stage '{stage}' failed: the disk is full while writing to {out} "
            f"({free_space(out)}); free space (old checkpoints, other runs) or set "
            "recipe.output_dir to a larger disk, then rerun the same command to resume"
        )
    if isinstance(exc, UserError):
        return exc
    return StageFailed(f"stage '{stage}' failed: {type(exc).__name__}: {exc}")


def stage_hash(recipe: Recipe, spec: StageSpec, upstream_run_ids: Mapping[str, str]) -> str:
    payload = {
        "stage": spec.resolved,
        "seed": recipe.seed,
        "needs": dict(sorted(upstream_run_ids.items())),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Runner:
    """Runs the stages of one recipe. ``echo`` prints progress lines (main process only)."""

    def __init__(self, recipe: Recipe, registry: Registry, echo: Echo = print):
        self.recipe = recipe
        self.registry = registry
        self._echo = echo
        self.builder = Builder(recipe, registry)
        self.summary: list[tuple[str, str, str, str]] = []
        """One row per stage this run reached: name, status, wall time, key figures."""

    def echo(self, line: str) -> None:
        if is_main_process():
            self._echo(line)

    def stage_dir(self, name: str) -> Path:
        return self.builder.stage_dir(name)

    def run(self, *, force: bool = False, only: str | None = None) -> dict[str, dict]:
        """Run every stage (or ``only`` one); return each stage's final metrics. First the
        ranks check that they share the run directory and resolve the recipe alike
        (``rlhf_plugins._engine.rank_agreement``); the recipe's loggers are registered for the run, and the
        run's lifecycle hooks are called."""
        stages = self.recipe.stages
        if only is not None and only not in stages:
            raise UserError(
                f"--only: no stage '{only}' in {self.recipe.path}{did_you_mean(only, stages)}"
            )
        check_ranks_agree(self.recipe, only=only, force=force)
        loggers = self.builder.loggers() if is_main_process() else []
        for logger in loggers:
            self.registry.plugin_manager.register(logger)
        results: dict[str, dict] = {}
        status = "failed"
        try:
            self.call_hook("rlhf_run_start", recipe=self.recipe, run_dir=self.recipe.run_dir)
            self.run_stages(results, force=force, only=only)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.call_hook(
                "rlhf_run_end",
                recipe=self.recipe,
                run_dir=self.recipe.run_dir,
                status=status,
                results=results,
            )
            for logger in loggers:
                self.registry.plugin_manager.unregister(logger)
            if is_main_process():
                for line in summary_table(self.summary) if self.summary else ():
                    self.echo(line)
                self.write_report()
        return results

    def write_report(self) -> None:
        """``report.html`` / ``report.md`` of the run; a failure here is only a warning."""
        from rlhf_plugins._engine.report import write_report

        try:
            path = write_report(self.recipe.run_dir)
        except Exception as exc:
            self.echo(f"warning: the report was not written ({type(exc).__name__}: {exc})")
        else:
            self.echo(f"report: {path}")

    def call_hook(self, name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on the main process."""
        if is_main_process():
            getattr(self.registry.hooks, name)(**kwargs)

    def run_stages(self, results: dict[str, dict], *, force: bool, only: str | None) -> None:
        stages = self.recipe.stages
        run_ids: dict[str, str] = {}
        finished: set[str] = set()
        total = len(stages) if only is None else 1
        position = 0
        for index, (name, spec) in enumerate(stages.items()):
            # stages come in dependency order, so every need already has its run id here
            state = read_state(self.stage_dir(name))
            config_hash = stage_hash(self.recipe, spec, {n: run_ids[n] for n in spec.needs})
            if only is not None and name != only:
                run_ids[name] = state.get("run_id", "")
                if state.get("status") == "finished":
                    finished.add(name)
                continue
            position += 1
            label = f"[{position}/{total}] {name} ({spec.kind} '{spec.component}')"
            if (
                not force
                and state.get("status") == "finished"
                and state.get("config_hash") == config_hash
            ):
                self.echo(f"{label}: finished and unchanged, skipped (--force reruns it)")
                old = state.get("metrics") or {}
                self.summary.append((name, "skipped", "-", format_metrics(old, 4)))
                run_ids[name] = state["run_id"]
                results[name] = state.get("metrics") or {}
                finished.add(name)
                continue
            missing = [n for n in spec.needs if n not in finished]
            if missing:
                raise UserError(
                    f"stage '{name}' needs {', '.join(missing)}, which has not finished; "
                    "run the whole recipe first"
                )
            resume = (
                not force
                and state.get("status") in RESUMABLE
                and state.get("config_hash") == config_hash
            )
            self.echo(f"{label}: {'resuming' if resume else 'running'}")
            metrics, run_id = self.run_stage(spec, config_hash, resume=resume, position=index)
            free_memory()
            run_ids[name] = run_id
            results[name] = metrics
            finished.add(name)

    def run_stage(
        self, spec: StageSpec, config_hash: str, *, resume: bool, position: int
    ) -> tuple[dict, str]:
        """Run one stage (``position``: its index in the recipe, kept in its state so that
        reports and ``rlhf runs`` list stages in the recipe's order)."""
        out = self.stage_dir(spec.name)
        # every rank has read this stage's old state (skip/resume) before rank 0 replaces it
        wait_for_everyone()
        running = {
            "status": "running",
            "position": position,
            "config_hash": config_hash,
            "started_at": time.time(),
            "stage": spec.table,
        }
        seed = self.recipe.seed
        context = self.builder.stage_context(spec, resume=resume)
        if is_main_process():
            if resume:
                self.prepare_resume(context)
            else:
                clear_stage_dir(out)
            write_state(out, running)
            write_json_atomically(out / RESOLVED_FILE, self.resolved(spec))
        wait_for_everyone()
        from accelerate.utils import set_seed

        set_seed(seed)
        started = time.monotonic()
        self.call_hook("rlhf_stage_start", stage=context)
        try:
            component = self.registry.get(spec.kind, spec.component)
            factory_spec = describe(component.factory)
            slots = {
                key: self.builder.slot(factory_spec, key, value, context)
                for key, value in spec.slots.items()
            }
            context.components.update(slots)
            context.registered.update(
                {
                    key: self.registry.get(factory_spec.params[key].slot, value["use"])
                    for key, value in spec.slots.items()
                    if isinstance(value, dict) and "use" in value
                }
            )
            stage_fn = component.factory(
                **factory_arguments(component.factory, slots, spec.settings, self.recipe.base_dir)
            )
            metrics = dict(stage_fn(context) or {})
        except KeyboardInterrupt:
            self.stopped(context, running, started, "interrupted")
            raise
        except Exception as exc:
            if was_terminated():
                self.stopped(context, running, started, "interrupted")
                raise Terminated() from exc
            error = stage_error(spec.name, out, exc)
            self.stopped(context, running, started, "failed", error=str(error))
            if error is exc:
                raise
            raise error from exc
        finally:
            forget_stage_configuration()
        wait_for_everyone()
        run_id = uuid.uuid4().hex[:12]
        elapsed = time.monotonic() - started
        if is_main_process():
            write_state(
                out,
                {
                    "status": "finished",
                    "position": position,
                    "config_hash": config_hash,
                    "run_id": run_id,
                    "started_at": running["started_at"],
                    "seconds": round(elapsed, 2),
                    "finished_at": time.time(),
                    "metrics": metrics,
                    "stage": spec.table,
                },
            )
        self.stage_ended(context, "finished", metrics, started)
        figures = f": {format_metrics(metrics, 5)}" if metrics else ""
        self.echo(f"    done in {elapsed:.1f}s{figures} -> {out}")
        wait_for_everyone()
        # all ranks must agree on the run id that downstream hashes read
        return metrics, read_state(out).get("run_id", run_id)

    def stopped(
        self, context: StageContext, running: dict, started: float, status: str, **extra: str
    ) -> None:
        """Record a stage that did not finish (``interrupted`` or ``failed``) and tell the
        hooks."""
        if is_main_process():
            stop = {"status": status, **extra, "stopped_at": time.time()}
            record_stop(context.output_dir, {**running, **stop})
        self.stage_ended(context, status, {}, started)

    def stage_ended(
        self, context: StageContext, status: str, metrics: dict, started: float
    ) -> None:
        seconds = time.monotonic() - started
        self.summary.append((context.name, status, f"{seconds:.0f}s", format_metrics(metrics, 4)))
        self.call_hook(
            "rlhf_stage_end", stage=context, status=status, metrics=metrics, seconds=seconds
        )

    def resolved(self, spec: StageSpec) -> dict[str, Any]:
        """The stage as it runs, for its directory: the recipe's head, launch and logging
        tables and the stage with every setting resolved and the plugins behind it."""
        data = self.recipe.data
        return {
            "recipe": {**data.get("recipe", {}), "path": str(self.recipe.path)},
            "launch": data.get("launch", {}),
            "logging": data.get("logging", {}),
            "stages": {spec.name: spec.resolved},
        }

    def prepare_resume(self, context: StageContext) -> None:
        """Drop incomplete checkpoints and metrics logged after the newest complete one, and
        say where the stage continues from (main process)."""
        chosen, removed = context.prepare_resume()
        for path in removed:
            self.echo(f"    removed {path.name}: incomplete (interrupted while it was saved)")
        if chosen is None:
            self.echo("    no complete checkpoint: the stage starts from its first step")
        else:
            self.echo(f"    continuing from {chosen.name} (step {checkpoint_step(chosen)})")
