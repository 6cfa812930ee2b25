"""Runs on several machines, simulated on this host: each machine rank is its own process
tree on 127.0.0.1, one CPU process per machine, and must end with exactly the weights of one
machine with two processes. Also ``[launch]`` validation, the launcher's command line, the run
directory lock per machine, and the check that the machines share the run directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_plugins._engine.launcher import LAUNCHED_ENV, holds_run_lock, launch_command
from rlhf_plugins._engine.rank_agreement import disagreement, stage_fingerprints
from rlhf_plugins._engine.recipe import load_recipe
from rlhf_plugins._engine.recipe_tables import LaunchConfig
from rlhf_plugins._engine.registry import load_registry
from rlhf_plugins._engine.runner import stage_hash
from rlhf_plugins._engine.shipped import find_recipe

TIMEOUT = 300
TWO_MACHINES = ["launch.num_machines=2", "launch.num_processes=2"]
TINY_SFT = [
    "stages.sft.trainer_settings.max_steps=4",
    "stages.sft.trainer_settings.per_device_train_batch_size=4",
    "stages.sft.trainer_settings.save_steps=2",
    "stages.sft.trainer_settings.eval_steps=4",
    "stages.sft.dataset.num_examples=64",
    "stages.sft.eval_dataset.num_examples=16",
]
TINY_PPO_INPUTS = [
    "stages.sft.trainer_settings.max_steps=2",
    "stages.sft.trainer_settings.save_steps=0",
    "stages.sft.dataset.num_examples=64",
    "stages.reward_model.trainer_settings.max_steps=2",
    "stages.reward_model.trainer_settings.save_steps=0",
    "stages.reward_model.dataset.num_examples=64",
    "stages.reward_model.eval_dataset.num_examples=16",
]
TINY_PPO = [  # 8 rollouts of 8 tokens per process, two optimizer steps, one evaluation
    "stages.ppo.trainer_settings.max_steps=2",
    "stages.ppo.trainer_settings.num_rollouts=8",
    "stages.ppo.trainer_settings.chunk_size=4",
    "stages.ppo.trainer_settings.per_device_train_batch_size=4",
    "stages.ppo.trainer_settings.ppo_epochs=1",
    "stages.ppo.trainer_settings.max_new_tokens=8",
    "stages.ppo.trainer_settings.save_steps=0",
    "stages.ppo.trainer_settings.eval_steps=2",
    "stages.ppo.trainer_settings.eval_samples=4",
    "stages.ppo.dataset.num_examples=64",
    "stages.ppo.eval_dataset.num_examples=8",
]


def sets(overrides: list[str]) -> list[str]:
    return [f"--set={o}" for o in overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``python ARGS`` in ``cwd`` with ``env`` added, output captured."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(*processes: subprocess.Popen) -> list[tuple[int, str]]:
    """Each process's exit code and output (waiting for all of them)."""
    return [(p.wait(timeout=TIMEOUT), p.communicate()[0]) for p in processes]


def assert_ok(results: list[tuple[int, str]]) -> None:
    for code, output in results:
        assert code == 0, output[-4000:]


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


# --- [launch]: validation, command line, lock (no launch) ---------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["launch.num_machines=2", "launch.machine_rank=2", "launch.main_process_ip='h0'"],
            "machine_rank (2) must be less than num_machines (2): machines are ranked 0 to 1",
        ),
        (TWO_MACHINES, "num_machines = 2 needs main_process_ip"),
        (
            ["launch.num_machines=2", "launch.num_processes=3", "launch.main_process_ip='h0'"],
            "num_processes (3) counts the processes of every machine and must be a multiple "
            "of num_machines (2)",
        ),
        (["launch.main_process_port=70000"], "launch.main_process_port: must be <= 65535"),
    ],
)
def test_launch_fields_are_checked_across_each_other(run_cli, overrides, message):
    result = run_cli("validate", "tiny_sft", *sets(overrides))
    assert result.exit_code == 2
    assert message in result.output


def test_a_machine_rank_outside_the_run_stops_before_launching(run_cli, tmp_path):
    overrides = [*TWO_MACHINES, "launch.main_process_ip='127.0.0.1'"]
    result = run_cli("run", "tiny_sft", *sets(overrides), "--machine-rank", "2")
    assert result.exit_code == 2
    assert "launch: machine_rank (2) must be less than num_machines (2)" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("distributed_type: DEEPSPEED\n", "configures DeepSpeed; set [launch] deepspeed"),
        ("mixed_precision: bf16\n", "sets mixed_precision = 'bf16' but [launch] has 'no'"),
        ("num_machines: 2\nnum_processes: 2\n", "num_machines = 2 needs main_process_ip"),
        ("num_machines: two\n", "num_machines: expected int"),
        ("- a list\n", "is not an Accelerate config (a YAML mapping)"),
    ],
)
def test_an_accelerate_config_file_is_checked_with_the_launch_table(
    run_cli, tmp_path, text, message
):
    (tmp_path / "accelerate.yaml").write_text(text)
    config = f"launch.config_file='{tmp_path / 'accelerate.yaml'}'"
    result = run_cli("validate", "tiny_sft", f"--set={config}")
    assert result.exit_code == 2
    assert message in result.output


def launch(tmp_path: Path, **table) -> LaunchConfig:
    return LaunchConfig.model_validate(table, context={"base_dir": tmp_path})


def test_each_machine_launches_its_share_on_the_given_port(tmp_path):
    machine = launch(
        tmp_path,
        num_processes=4,
        num_machines=2,
        machine_rank=1,
        main_process_ip="10.0.0.1",
        main_process_port=29400,
    )
    cmd, env = launch_command(machine, ["run", "r.toml"])
    flags = " ".join(cmd)
    assert "--num_processes 4 --num_machines 2 --machine_rank 1" in flags
    assert "--main_process_ip 10.0.0.1 --main_process_port 29400" in flags
    assert "--multi_gpu" in cmd and env[LAUNCHED_ENV] == "1"
    default_port = launch(tmp_path, num_machines=2, num_processes=2, main_process_ip="h0")
    assert "--main_process_port 29500" in " ".join(launch_command(default_port, [])[0])
    (tmp_path / "ds.json").write_text("{}")
    zero = launch(
        tmp_path, num_machines=2, num_processes=2, main_process_ip="h0", deepspeed="ds.json"
    )
    assert "--deepspeed_multinode_launcher standard" in " ".join(launch_command(zero, [])[0])


def test_with_a_config_file_only_the_fields_set_are_passed_and_win(tmp_path):
    (tmp_path / "acc.yaml").write_text(
        "num_machines: 2\nnum_processes: 4\nmain_process_ip: h0\nmachine_rank: 0\n"
    )
    machine = launch(tmp_path, config_file="acc.yaml", machine_rank=1)
    assert machine.resolved().machine_rank == 1 and machine.resolved().num_machines == 2
    cmd, _ = launch_command(machine, [])
    flags = " ".join(cmd)
    assert f"--config_file {tmp_path / 'acc.yaml'} --machine_rank 1 --mixed_precision no" in flags
    assert "--num_processes" not in flags and "--multi_gpu" not in flags


def test_a_config_file_for_one_machine_without_a_port_gets_a_free_one(tmp_path):
    """Two runs on one machine must not both take Accelerate's default port."""
    (tmp_path / "acc.yaml").write_text("num_machines: 1\nnum_processes: 2\n")
    cmd, _ = launch_command(launch(tmp_path, config_file="acc.yaml"), [])
    port = int(cmd[cmd.index("--main_process_port") + 1])
    assert port != 29500 and 0 < port < 65536
    (tmp_path / "acc.yaml").write_text("num_machines: 1\nmain_process_port: 29411\n")
    cmd, _ = launch_command(launch(tmp_path, config_file="acc.yaml"), [])
    assert "--main_process_port" not in cmd, "the file's port stands"


def test_only_machine_rank_0_locks_the_shared_run_directory(tmp_path, monkeypatch):
    for key in (LAUNCHED_ENV, "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(key, raising=False)
    two = dict(num_processes=2, num_machines=2, main_process_ip="h0")
    assert holds_run_lock(launch(tmp_path, **two))
    assert not holds_run_lock(launch(tmp_path, **two, machine_rank=1))
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank that an outside launcher started
    monkeypatch.setenv("RANK", "2")
    assert not holds_run_lock(launch(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert holds_run_lock(launch(tmp_path))
    monkeypatch.setenv(LAUNCHED_ENV, "1")  # a rank that our launcher started
    assert not holds_run_lock(launch(tmp_path))


def test_machines_agree_on_stage_hashes_whatever_their_rank():
    registry, path = load_registry(), find_recipe("tiny_ppo")
    common = [*TWO_MACHINES, "launch.main_process_ip='h0'"]
    recipes = [
        load_recipe(path, registry, [*common, f"launch.machine_rank={rank}"]) for rank in (0, 1)
    ]
    assert stage_fingerprints(recipes[0]) == stage_fingerprints(recipes[1])
    for name, spec in recipes[0].stages.items():
        assert stage_hash(recipes[0], spec, {}) == stage_hash(
            recipes[1], recipes[1].stages[name], {}
        )
    changed = load_recipe(path, registry, ["stages.ppo.trainer_settings.max_steps=3"])
    reports = [
        {"host": h, "run_dir": "r", "sees": True, "stages": stage_fingerprints(r), "options": ""}
        for h, r in (("h0", recipes[0]), ("h1", changed))
    ]
    assert disagreement(reports).startswith(
        "rank 1 on h1 resolves stage 'ppo' differently from rank 0 on h0"
    )
    reports[1].update(stages=reports[0]["stages"], options="--only ppo")
    assert disagreement(reports) == (
        "rank 1 on h1 runs with '--only ppo', rank 0 on h0 with '': every machine must run "
        "the same command"
    )
    reports[1].update(options="")
    assert disagreement(reports) is None


# --- real runs on two simulated machines --------------------------------------------------


@pytest.mark.slow
def test_sft_on_two_machines_through_rlhf_run_matches_one_machine(tmp_path):
    """``rlhf run`` on each machine with its ``--machine-rank`` (our launcher), against
    ``--num-processes 2`` on one machine."""
    machines = [*TWO_MACHINES, "launch.main_process_ip='127.0.0.1'"]
    machines.append(f"launch.main_process_port={free_port()}")
    run = ["-m", "rlhf_plugins.cli", "run", "tiny_sft", *sets(TINY_SFT)]
    ranks = [start([*run, *sets(machines), "--machine-rank", str(r)], tmp_path) for r in (0, 1)]
    one = start([*run, "--set=recipe.output_dir='one'", "--num-processes", "2"], tmp_path)
    results = finish(*ranks, one)
    assert_ok(results)
    assert "launching 1 of 2 processes with Accelerate on machine rank 1 of 2" in results[1][1]
    assert "finished tiny_sft" in results[0][1] and "finished" not in results[1][1]
    two_machines, one_machine = tmp_path / "runs" / "tiny_sft", tmp_path / "one" / "tiny_sft"
    state = json.loads((two_machines / "sft" / "stage_state.json").read_text())
    assert state["status"] == "finished" and state["metrics"]["steps"] == 4
    weights = "sft/model.safetensors"
    assert max_difference(two_machines / weights, one_machine / weights) == 0


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory) -> Path:
    """The ``sft`` and ``reward_model`` stages of ``tiny_ppo``, shrunk, run once in this
    process: a run directory for the ``ppo`` stage alone."""
    from click.testing import CliRunner

    from rlhf_plugins.cli import cli

    out = tmp_path_factory.mktemp("ppo_inputs")
    args = ["run", "tiny_ppo", *sets([f"recipe.output_dir='{out}'", *TINY_PPO_INPUTS])]
    for stage in ("sft", "reward_model"):
        result = CliRunner().invoke(cli, [*args, "--only", stage], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return out / "tiny_ppo"


@pytest.mark.slow
def test_ppo_stage_on_two_machines_through_accelerate_launch_matches_one_machine(
    ppo_inputs, tmp_path
):
    """An outside ``accelerate launch --machine_rank 0/1 -m rlhf_plugins.cli run`` per machine,
    against ``--num-processes 2`` on one machine."""
    for name in ("two", "one"):
        shutil.copytree(ppo_inputs, tmp_path / name / "tiny_ppo")
    run = ["-m", "rlhf_plugins.cli", "run", "tiny_ppo", "--only", "ppo", *sets(TINY_PPO)]
    accelerate = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2"]
    accelerate += ["--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    accelerate += ["--main_process_port", str(free_port())]
    ranks = [
        start(
            [*accelerate, "--machine_rank", str(r), *run, "--set=recipe.output_dir='two'"],
            tmp_path,
            ACCELERATE_USE_CPU="1",
        )
        for r in (0, 1)
    ]
    one = start([*run, "--set=recipe.output_dir='one'", "--num-processes", "2"], tmp_path)
    assert_ok(finish(*ranks, one))
    two_machines, one_machine = tmp_path / "two" / "tiny_ppo", tmp_path / "one" / "tiny_ppo"
    metrics = json.loads((two_machines / "ppo" / "stage_state.json").read_text())["metrics"]
    assert metrics["steps"] == 2 and metrics["rank_param_spread"] == 0
    for weights in ("ppo/model.safetensors", "ppo/value_head.safetensors"):
        assert max_difference(two_machines / weights, one_machine / weights) == 0
    assert (
        max_difference(two_machines / "ppo/model.safetensors", ppo_inputs / "sft/model.safetensors")
        > 0
    )


@pytest.mark.slow
def test_a_run_directory_the_machines_do_not_share_stops_every_rank_with_one_message(tmp_path):
    """Ranks started by the environment alone (as a SLURM script does), with rank 1 writing
    elsewhere: what a machine without the shared filesystem sees."""
    world = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    world.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", RLHF_SHARED_DIR_WAIT="1")
    run = ["-m", "rlhf_plugins.cli", "run", "tiny_sft", *sets(TINY_SFT)]
    ranks = [
        start([*run, f"--set=recipe.output_dir='node{r}'"], tmp_path, RANK=str(r), **world)
        for r in (0, 1)
    ]
    for code, output in finish(*ranks):
        assert code == 2, output[-4000:]
        assert output.startswith("error: the run directory is not shared: rank 1 on ")
        assert f"does not see in {tmp_path / 'node1' / 'tiny_sft'}" in output
        assert f"wrote into {tmp_path / 'node0' / 'tiny_sft'}" in output
        assert "set recipe.output_dir" in output and "Traceback" not in output
    assert not (tmp_path / "node0" / "tiny_sft" / "sft").exists(), "no stage started"
    assert [p.name for p in (tmp_path / "node0" / "tiny_sft").iterdir()] == [".rlhf.lock"]


def test_a_launch_that_started_lone_processes_stops_with_one_message(run_cli, monkeypatch):
    """What an Accelerate config file with distributed_type MULTI_CPU does without mpirun:
    each machine starts one process of a world of one."""
    monkeypatch.setenv(LAUNCHED_ENV, "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = run_cli("run", "tiny_sft", "--num-processes", "2")
    assert result.exit_code == 2
    assert "accelerate launch started 1 process(es) in all where [launch] asks for 2" in (
        result.output
    )


def test_an_unquoted_no_in_the_accelerate_config_file_is_no_mixed_precision(run_cli, tmp_path):
    """``mixed_precision: no``, as ``accelerate config`` writes it, loads as YAML's false."""
    (tmp_path / "accelerate.yaml").write_text("mixed_precision: no\nnum_machines: 1\n")
    config = f"launch.config_file='{tmp_path / 'accelerate.yaml'}'"
    result = run_cli("validate", "tiny_sft", f"--set={config}")
    assert result.exit_code == 0, result.output
