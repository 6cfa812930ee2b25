"""Relaunch ``rlhf run`` under ``accelerate launch`` for N processes (gloo ranks on CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from rlhf_plugins.runlock import Terminated
from rlhf_plugins.stage import LaunchConfig

LAUNCHED_ENV = "RLHF_PLUGINS_LAUNCHED"
STOP_GRACE_SECONDS = 60


def already_launched() -> bool:
    """True inside a process that a launcher (ours or anyone's) started as one rank."""
    return bool(os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK"))


def needs_launcher(launch: LaunchConfig) -> bool:
    return not already_launched() and (launch.num_processes > 1 or launch.deepspeed is not None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launch: LaunchConfig, cli_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment that rerun ``cli_args``."""
    import torch

    env = {**os.environ, LAUNCHED_ENV: "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(launch.num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        launch.mixed_precision,
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    if launch.deepspeed is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(launch.deepspeed)]
    elif launch.num_processes > 1:
        cmd.append("--multi_gpu")
    if not torch.cuda.is_available():
        if launch.deepspeed is None:
            env["ACCELERATE_USE_CPU"] = "1"
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.num_processes))
        )
    cmd += ["-m", "rlhf_plugins.cli", *cli_args]
    return cmd, env


def relaunch(launch: LaunchConfig, cli_args: list[str]) -> int:
    """Run ``rlhf <cli_args>`` as ``launch.num_processes`` ranks; return the exit code.

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
