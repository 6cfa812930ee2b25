"""rlhf-orpo as its users see it: the plugin is listed, its reward scores lengths, and its
tiny recipe runs SFT -> ORPO -> evaluation through the ``rlhf`` CLI (run from an environment
where rlhf-orpo is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "tiny_orpo.toml"


def rlhf(*args: str, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_plugins.cli", *args], cwd=cwd, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_the_length_penalty_is_zero_at_the_target():
    from rlhf_orpo import length_penalty

    score = length_penalty(target_words=3, weight=0.5)
    assert score(["p", "p"], ["one two three", "one"]) == [0.0, -1.0]


def test_the_plugin_is_listed(tmp_path):
    listed = json.loads(rlhf("list-plugins", "--json", cwd=tmp_path))
    assert "orpo" in json.dumps(listed) and "length-penalty" in json.dumps(listed)


def test_the_tiny_recipe_runs(tmp_path):
    shutil.copy(RECIPE, tmp_path / RECIPE.name)
    rlhf("run", RECIPE.name, cwd=tmp_path)
    stage = json.loads((tmp_path / "runs/tiny_orpo/orpo/stage_state.json").read_text())
    assert stage["metrics"]["steps"] == 20
    evaluation = json.loads((tmp_path / "runs/tiny_orpo/eval/stage_state.json").read_text())
    assert "orpo/reward" in evaluation["metrics"] and "sft/reward" in evaluation["metrics"]
