"""examples/rlhf-median-baseline as a user installs it (pip builds and installs it into a fresh
directory on the path): ``rlhf list-plugins -v`` shows it, ``rlhf validate`` knows it is
group-relative, a ``policy-gradient`` stage trains with it, its numbers are the group medians'.
And a part that raises while training fails the stage with one line naming it and its plugin;
the same command then resumes the stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TOY_REWARD, build_component
from tests.test_packaging import sh
from tests.test_ppo_recipes import state

EXAMPLE = REPO_ROOT / "examples" / "rlhf-median-baseline"


def parts(advantage: str) -> str:
    """The reward, advantage and loss lines of a ``policy-gradient`` stage on the toy plugin."""
    return f'{TOY_REWARD}\nadvantage = {{ use = "{advantage}" }}\nloss = {{ use = "ppo-clip" }}'


SETTINGS = {
    "max_steps": 2,
    "max_completion_length": None,
    "num_rollouts": 8,
    "chunk_size": 8,
    "ppo_epochs": 1,
    "num_layers_unfrozen": 1,
    "max_new_tokens": 6,
    "save_steps": 1,
}
"""One rollout of 2 prompts x 4 completions per optimizer step, a checkpoint at each."""

BOOM = """
import os

from rlhf_plugins import hookimpl


@hookimpl
def register_advantage_estimators(register):
    register("boom", boom, group_relative=True)


def boom():
    calls = []

    def estimator(inputs):
        calls.append(1)
        if len(calls) == int(os.environ.get("BOOM_AT_CALL", "0")):
            raise ValueError(f"no baseline at call {len(calls)}")
        return inputs.scores[:, None] * inputs.mask, None

    return estimator
"""


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target SITE examples/rlhf-median-baseline`` (from a copy, so that no
    build files land in the checkout); returns SITE."""
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = tmp_path_factory.mktemp("site")
    pip = (sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation")
    sh(*pip, "--target", str(site), str(source))
    assert (site / "rlhf_median_baseline.py").is_file()
    return site


@pytest.fixture
def median(installed_example, grpo_recipe, monkeypatch):
    """The example on this process's path, the toy prompts and reward installed; returns a
    writer of a one-stage (``pg``) ``policy-gradient`` recipe on them."""
    monkeypatch.syspath_prepend(str(installed_example))

    def recipe(name="median", advantage="median-baseline", **settings):
        return grpo_recipe(
            name,
            trainer="policy-gradient",
            stage="pg",
            reward=parts(advantage),
            **{**SETTINGS, **settings},
        )

    return recipe


def test_list_plugins_shows_the_estimator_and_its_setting(installed_example, tmp_path):
    paths = [str(installed_example), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_plugins.cli", "list-plugins", "-v"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "median-baseline" in out.stdout.split()
    assert (
        "advantage estimator 'median-baseline' (plugin 'median-baseline' "
        "(rlhf-median-baseline 0.1.0)): Score minus its group's median score"
    ) in out.stdout
    assert (
        "    scale: bool, default False -- divide by the group's mean absolute deviation "
        "from its median"
    ) in out.stdout


def test_the_estimator_subtracts_the_group_median(installed_example, monkeypatch):
    import torch

    from rlhf_plugins import AdvantageInputs

    monkeypatch.syspath_prepend(str(installed_example))
    mask = torch.ones(5, 3)
    mask[0, 2] = 0  # padding after the first completion's EOS
    inputs = AdvantageInputs(
        scores=torch.tensor([1.0, 2.0, 10.0, 0.0, 4.0]),
        token_rewards=torch.zeros(5, 3),
        mask=mask,
        group_ids=torch.tensor([5, 5, 5, 9, 9]),
        logprobs=torch.zeros(5, 3),
        ref_logprobs=torch.zeros(5, 3),
    )
    plain = build_component("advantage_estimator", "median-baseline")
    advantages, returns = plain(inputs)
    expected = torch.tensor([-1.0, 0.0, 8.0, -2.0, 2.0])[:, None] * mask
    assert returns is None and torch.equal(advantages, expected)
    scaled, _ = build_component("advantage_estimator", "median-baseline", scale=True)(inputs)
    deviation = torch.tensor([3.0, 3.0, 3.0, 2.0, 2.0])[:, None]  # mean |score - median|
    assert torch.allclose(scaled, expected / deviation, atol=1e-5)


def test_validate_refuses_one_generation_and_accepts_a_group(median, run_cli):
    result = run_cli("validate", median(num_generations=1))
    assert result.exit_code == 2
    assert (
        "stages.pg.trainer_settings.num_generations: advantage 'median-baseline' compares the "
        "completions of one prompt: num_generations must be at least 2, got 1"
    ) in result.output
    result = run_cli("validate", median())
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_policy_gradient_stage_trains_with_it(median, run_cli, tmp_path):
    result = run_cli("run", median())
    assert result.exit_code == 0, result.output
    done = state(tmp_path / "runs" / "median" / "pg")
    assert done["status"] == "finished" and done["metrics"]["steps"] == 2


@pytest.mark.slow
def test_a_raising_part_fails_the_stage_in_one_line_and_the_run_resumes(
    median, plugin_dist, run_cli, tmp_path, monkeypatch
):
    plugin_dist("rlhf-boom", "rlhf_boom", BOOM, entry_name="boom")
    recipe = median(name="boom", advantage="boom", max_steps=3)
    monkeypatch.setenv("BOOM_AT_CALL", "3")  # two updates of one step each, then it raises
    result = run_cli("run", recipe)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: stage 'pg' failed: advantage estimator 'boom' (plugin 'boom' (rlhf-boom 1.2.3)) "
        "raised ValueError: no baseline at call 3"
    )
    assert "Traceback" not in result.output
    out = tmp_path / "runs" / "boom" / "pg"
    assert state(out)["status"] == "failed"
    monkeypatch.delenv("BOOM_AT_CALL")
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "continuing from checkpoint-2 (step 2)" in result.output
    final = state(out)
    assert final["status"] == "finished" and final["metrics"]["steps"] == 3


def test_policy_gradient_md_shows_the_module_as_it_is():
    page = (REPO_ROOT / "docs" / "policy_gradient.md").read_text()
    section = page[page.index("## A new estimator as a plugin") :]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    module = (EXAMPLE / "rlhf_median_baseline.py").read_text()
    assert shown.strip() and shown in module, "docs/policy_gradient.md: copy the module again"
