"""What the ranks of a run must agree on before its first stage: how many they are, the run
directory and the recipe.

Stages read what earlier stages wrote, and every rank decides from the state files there
whether a stage is skipped or resumed, so on several machines the run directory must be one
shared filesystem, and every rank must resolve the recipe the same way (same recipe and
overrides, same data paths, same plugin versions). Without the check a rank on another machine
would fail much later and obscurely (a missing checkpoint, a hang in a collective).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.launcher import LAUNCHED_ENV
from rlhf_plugins._engine.ranks import is_main_process, num_processes, process_state
from rlhf_plugins._engine.recipe import Recipe

PROBE_PREFIX = ".rlhf-shared-"
SEE_SECONDS_ENV = "RLHF_SHARED_DIR_WAIT"
SEE_SECONDS = 60.0
"""How long a rank waits for the probe file to appear, unless ``RLHF_SHARED_DIR_WAIT`` says
otherwise: NFS caches a failed lookup and a directory's attributes for 30-60 s by default."""


def stage_fingerprints(recipe: Recipe) -> dict[str, str]:
    """A short hash per stage of what decides how it runs (its resolved table, plugin
    versions included, and the recipe seed); ``[launch]`` is not part of it."""
    return {
        name: hashlib.sha256(
            json.dumps([spec.resolved, recipe.seed], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        for name, spec in recipe.stages.items()
    }


def _sees(probe: Path, token: str) -> bool:
    deadline = time.monotonic() + float(os.environ.get(SEE_SECONDS_ENV, SEE_SECONDS))
    while True:
        with contextlib.suppress(OSError):
            os.listdir(probe.parent)  # refreshes a network filesystem's view of the directory
            if probe.read_text() == token:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_ranks_agree(recipe: Recipe, *, only: str | None, force: bool) -> None:
    """Every rank calls it before any stage. In a rank our launcher started, ``UserError``
    unless the world has the size ``[launch]`` asks for (an Accelerate config file can start
    lone processes instead). With several ranks: rank 0 writes a probe file with a random token
    into the run directory and sends the token to every rank; each rank reports whether it
    reads the token there, its stage fingerprints and its ``--only`` and ``--force``. Every
    rank then raises the same ``UserError`` when some rank does not see the run directory of
    rank 0, or resolves a stage or runs the stages differently."""
    launch = recipe.launch
    wanted = launch.resolved().num_processes if os.environ.get(LAUNCHED_ENV) else None
    if wanted is not None and num_processes() != wanted:
        raise UserError(
            f"accelerate launch started {num_processes()} process(es) in all where [launch] "
            f"asks for {wanted}"
            + (
                f": check {launch.config_file} (for CPU ranks use distributed_type: MULTI_GPU; "
                "without CUDA they run on gloo)"
                if launch.config_file
                else ""
            )
        )
    if num_processes() <= 1:
        return
    from accelerate.utils import broadcast_object_list, gather_object

    process_state()
    run_dir = recipe.run_dir
    # rank 0 sends the probe's token and, when it could not write the probe, why
    token = [uuid.uuid4().hex if is_main_process() else "", ""]
    if is_main_process():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / f"{PROBE_PREFIX}{token[0]}").write_text(token[0])
        except OSError as exc:
            token[1] = f"rank 0 on {socket.gethostname()} cannot write into {run_dir}: {exc}"
    broadcast_object_list(token, from_process=0)
    if token[1]:
        raise UserError(token[1])
    probe = run_dir / f"{PROBE_PREFIX}{token[0]}"
    report = {
        "host": socket.gethostname(),
        "run_dir": str(run_dir.resolve()),
        "sees": _sees(probe, token[0]),
        "stages": stage_fingerprints(recipe),
        "options": " ".join((["--only", only] if only else []) + ["--force"] * force),
    }
    reports = gather_object([report])
    if is_main_process():
        probe.unlink(missing_ok=True)
    problem = disagreement(reports)
    if problem:
        # every rank stops here: leave the process group together, so that none of them is
        # aborted by a peer's connection closing while it exits
        process_state().wait_for_everyone()
        import torch.distributed as dist

        dist.destroy_process_group()
        raise UserError(problem)


def disagreement(reports: list[dict]) -> str | None:
    """The message for the first rank whose report differs from rank 0's, or None."""
    main = reports[0]
    for rank, report in enumerate(reports):
        where = f"rank {rank} on {report['host']}"
        if not report["sees"]:
            return (
                f"the run directory is not shared: {where} does not see in {report['run_dir']} "
                f"the file that rank 0 on {main['host']} wrote into {main['run_dir']}. Every "
                "machine must read and write the same run directory: set recipe.output_dir "
                "(e.g. --set recipe.output_dir=/shared/runs) to a filesystem that all machines "
                "mount (NFS, Lustre, ...), the same on each"
            )
        differ = [n for n in main["stages"] if report["stages"].get(n) != main["stages"][n]]
        differ += [n for n in report["stages"] if n not in main["stages"]]
        if differ:
            return (
                f"{where} resolves stage '{differ[0]}' differently from rank 0 on "
                f"{main['host']}: every machine must run the same recipe with the same --set "
                "overrides, data paths and installed plugin versions"
            )
        if report["options"] != main["options"]:
            return (
                f"{where} runs with '{report['options']}', rank 0 on {main['host']} with "
                f"'{main['options']}': every machine must run the same command"
            )
    return None
