"""``recipes/tiny_compare.toml`` unchanged, as a user runs it: SFT -> reward model -> ppo, grpo,
rloo, dpo, kto, ilql from the same SFT policy and reward model -> one table in which every RL row
beats SFT's reward and reports its KL to SFT. The one-algorithm recipes that train the same
stages are held to it by their tables, so that their claim is tested by this one run.
``recipes/tiny_pg_compare.toml`` (the policy-gradient engine's algorithms) shares those SFT and
reward-model stages, so its run reuses them (a stage whose resolved config, seed and inputs
are unchanged is skipped) and is held to the same claim."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_plugins._engine.recipe import tomllib
from tests.conftest import REPO_ROOT

ALGORITHMS = ("ppo", "grpo", "rloo", "dpo", "kto", "ilql[beta=2]")
ENGINE_ALGORITHMS = ("ppo", "grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "remax")
SHARED_STAGES = ("sft", "reward_model")


def rlhf(cwd: Path, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_plugins.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """A folder where ``tiny_compare.toml`` ran whole."""
    folder = tmp_path_factory.mktemp("compare")
    for name in ("tiny_compare.toml", "tiny_pg_compare.toml", "recipe.schema.json"):
        shutil.copy(REPO_ROOT / "recipes" / name, folder)
    rlhf(folder, "run", "tiny_compare.toml")
    return folder


def assert_every_row_beats_sft(run_dir: Path, algorithms: tuple[str, ...]) -> None:
    policies = json.loads((run_dir / "eval" / "eval.json").read_text())["policies"]
    assert set(policies) == {"sft", *algorithms}
    sft = policies["sft"]["metrics"]
    assert sft["kl"] == pytest.approx(0.0, abs=1e-4)
    for label in algorithms:
        metrics = policies[label]["metrics"]
        assert metrics["reward"] > sft["reward"], f"{label} does not beat SFT"
        assert metrics["kl"] > 0, label
    table = (run_dir / "eval" / "eval.md").read_text()
    assert all(f"| {label} |" in table for label in ("sft", *algorithms))
    assert (run_dir / "report.html").is_file()


@pytest.mark.slow
def test_every_algorithm_beats_sft_in_one_table(compared):
    assert_every_row_beats_sft(compared / "runs" / "tiny_compare", ALGORITHMS)


@pytest.mark.slow
def test_every_engine_algorithm_beats_sft_in_one_table(compared):
    runs = compared / "runs"
    for stage in SHARED_STAGES:
        shutil.copytree(runs / "tiny_compare" / stage, runs / "tiny_pg_compare" / stage)
    rlhf(compared, "run", "tiny_pg_compare.toml")
    for stage in SHARED_STAGES:  # reused, not trained again
        state = json.loads((runs / "tiny_pg_compare" / stage / "stage_state.json").read_text())
        shared = json.loads((runs / "tiny_compare" / stage / "stage_state.json").read_text())
        assert state["status"] == "finished" and state["run_id"] == shared["run_id"], stage
    assert_every_row_beats_sft(runs / "tiny_pg_compare", ENGINE_ALGORITHMS)


def test_the_engine_comparison_shares_tiny_compares_sft_and_reward_model():
    own, compare = recipe_table("tiny_pg_compare"), recipe_table("tiny_compare")
    assert own["recipe"]["seed"] == compare["recipe"]["seed"]
    for stage in SHARED_STAGES:
        assert own["stages"][stage] == compare["stages"][stage], stage
    for key in ("evaluator", "reward", "reference"):
        assert own["stages"]["eval"][key] == compare["stages"]["eval"][key], key


# each of these recipes trains exactly these stages of tiny_compare and evaluates a subset of
# its policies with its evaluation: their results are the rows of tiny_compare's table
SAME_STAGES = {
    "tiny_dpo": ("sft", "reward_model", "dpo"),
    "tiny_kto": ("sft", "reward_model", "kto"),
    "tiny_grpo": ("sft", "reward_model", "grpo"),
    "tiny_ppo": ("sft", "reward_model", "ppo"),
    "tiny_rloo": ("sft", "reward_model", "rloo"),
}


def recipe_table(name: str) -> dict:
    return tomllib.loads((REPO_ROOT / "recipes" / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", sorted(SAME_STAGES))
def test_a_one_algorithm_recipe_is_a_part_of_tiny_compare(name):
    own, compare = recipe_table(name), recipe_table("tiny_compare")
    assert own["recipe"]["seed"] == compare["recipe"]["seed"]
    for stage in SAME_STAGES[name]:
        assert own["stages"][stage] == compare["stages"][stage], f"{name}: stage {stage}"
    own_eval, compare_eval = own["stages"]["eval"], compare["stages"]["eval"]
    for key in ("evaluator", "dataset", "reward", "evaluator_settings"):
        assert own_eval[key] == compare_eval[key], f"{name}: eval {key}"
    assert own_eval["policies"].items() <= compare_eval["policies"].items()
