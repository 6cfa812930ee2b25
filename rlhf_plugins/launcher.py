"""Relaunch ``rlhf run`` under ``accelerate launch``: N processes on this machine, or this
machine's share of a run on several machines (gloo ranks on CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from rlhf_plugins.runlock import Terminated
from rlhf_plugins.stage import MULTI_MACHINE_PORT, LaunchConfig, is_main_process

LAUNCHED_ENV = "RLHF_PLUGINS_LAUNCHED"
STOP_GRACE_SECONDS = 60


def already_launched() -> bool:
    """True inside a process that a launcher (ours or anyone's) started as one rank."""
    return bool(os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK"))


def needs_launcher(launch: LaunchConfig) -> bool:
    """True when ``rlhf run`` must start its ranks through ``accelerate launch``."""
    if already_launched():
        return False
    machines = launch.resolved()
    return (
        machines.num_processes > 1
        or machines.num_machines > 1
        or launch.deepspeed is not None
        or launch.config_file is not None
    )


def holds_run_lock(launch: LaunchConfig) -> bool:
    """True in the one process of a run that locks its run directory: rank 0 of an outside
    launcher, or our ``rlhf run`` on machine rank 0 (the machines share the directory, so
    machine rank 1 would find the lock of rank 0 held). Never in a rank we launched."""
    if os.environ.get(LAUNCHED_ENV):
        return False
    if already_launched():
        return is_main_process()
    return launch.resolved().machine_rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_flags(launch: LaunchConfig) -> list[str]:
    """``accelerate launch`` flags for the machines and processes. With a config file only the
    fields ``[launch]`` sets explicitly are passed (they win over the file); without one all.
    On one machine a free port unless ``[launch]`` or the file gives one (two runs at once must
    not meet on Accelerate's default port)."""
    explicit = launch.model_fields_set if launch.config_file is not None else None
    machines = launch.resolved()
    port = machines.main_process_port
    if port is None and machines.num_machines == 1:
        port = _free_port()
        explicit = None if explicit is None else {*explicit, "main_process_port"}
    elif port is None and explicit is None:
        port = MULTI_MACHINE_PORT
    values = {
        "num_processes": machines.num_processes,
        "num_machines": machines.num_machines,
        "machine_rank": machines.machine_rank if machines.num_machines > 1 else None,
        "main_process_ip": machines.main_process_ip,
        "main_process_port": port,
    }
    flags = []
    for key, value in values.items():
        if value is not None and (explicit is None or key in explicit):
            flags += [f"--{key}", str(value)]
    return flags


def launch_command(launch: LaunchConfig, cli_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment that rerun ``cli_args`` as this
    machine's ranks (``launch.resolved().processes_per_machine`` of them)."""
    import torch

    env = {**os.environ, LAUNCHED_ENV: "1"}
    machines = launch.resolved()
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.config_file is not None:
        cmd += ["--config_file", str(launch.config_file)]
    cmd += machine_flags(launch)
    cmd += ["--mixed_precision", launch.mixed_precision, "--dynamo_backend", "no"]
    if launch.deepspeed is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(launch.deepspeed)]
        if machines.num_machines > 1:
            # torchrun on every machine, as for plain ranks (not pdsh and a hostfile)
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    elif launch.config_file is None and machines.num_processes > 1:
        cmd.append("--multi_gpu")
    if not torch.cuda.is_available():
        if launch.deepspeed is None:
            env["ACCELERATE_USE_CPU"] = "1"
        env.setdefault("DS_ACCELERATOR", "cpu")
        per_machine = max(1, machines.processes_per_machine)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // per_machine)))
    cmd += ["-m", "rlhf_plugins.cli", *cli_args]
    return cmd, env


def launching_line(launch: LaunchConfig) -> str:
    """What ``rlhf run`` prints before it starts this machine's ranks."""
    machines = launch.resolved()
    if machines.num_machines == 1:
        return f"launching {machines.num_processes} processes with Accelerate"
    return (
        f"launching {machines.processes_per_machine} of {machines.num_processes} processes "
        f"with Accelerate on machine rank {machines.machine_rank} of {machines.num_machines}"
    )


def relaunch(launch: LaunchConfig, cli_args: list[str]) -> int:
    """Run ``rlhf <cli_args>`` as this machine's ranks of the run; return the exit code.

    Ctrl-C or SIGTERM arriving here is passed on to the launcher (which stops the ranks, and
    they record the stage as interrupted); once it has exited the interrupt is re-raised."""
    cmd, env = launch_command(launch, cli_args)
    process = subprocess.Popen(cmd, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt as exc:
        process.send_signal(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
