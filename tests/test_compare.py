"""``recipes/tiny_compare.toml`` unchanged, as a user runs it: SFT -> reward model -> ppo, grpo,
dpo, kto, ilql from the same SFT policy and reward model -> one table in which every RL row
beats SFT's reward and reports its KL to SFT."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO_ROOT

ALGORITHMS = ("ppo", "grpo", "dpo", "kto", "ilql[beta=2]")


@pytest.mark.slow
def test_every_algorithm_beats_sft_in_one_table(run_rlhf, tmp_path):
    shutil.copy(REPO_ROOT / "recipes" / "tiny_compare.toml", tmp_path)
    shutil.copy(REPO_ROOT / "recipes" / "recipe.schema.json", tmp_path)
    run_rlhf("run", "tiny_compare.toml", timeout=1500)
    run_dir = tmp_path / "runs" / "tiny_compare"
    policies = json.loads((run_dir / "eval" / "eval.json").read_text())["policies"]
    assert set(policies) == {"sft", *ALGORITHMS}
    sft = policies["sft"]["metrics"]
    assert sft["kl"] == pytest.approx(0.0, abs=1e-4)
    for label in ALGORITHMS:
        metrics = policies[label]["metrics"]
        assert metrics["reward"] > sft["reward"], f"{label} does not beat SFT"
        assert metrics["kl"] > 0, label
    table = (run_dir / "eval" / "eval.md").read_text()
    assert all(f"| {label} |" in table for label in ("sft", *ALGORITHMS))
    assert (run_dir / "report.html").is_file()
