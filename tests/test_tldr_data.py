"""The ``tldr`` and ``tldr-synthetic`` datasets through their registered factories and recipes."""

from __future__ import annotations

import pytest

from rlhf_plugins.registry import load_registry

PROMPT_LAYOUT = r"^SUBREDDIT: r/[^\n]+\nTITLE: [^\n]+\nPOST: .+\nTL;DR:$"


def factory(name: str):
    return load_registry().get("dataset", name).factory


# ---------------------------------------------------------------- tldr-synthetic


@pytest.mark.parametrize(
    ("view", "columns"),
    [
        ("sft", ["prompt", "completion"]),
        ("prompts", ["prompt", "reference"]),
        ("comparisons", ["prompt", "chosen", "rejected"]),
        ("offline", ["prompt", "completion", "reward"]),
    ],
)
def test_synthetic_views_have_contract_columns(view, columns):
    data = factory("tldr-synthetic")(view=view, num_examples=20)
    assert data.column_names == columns
    assert len(data) == (40 if view == "offline" else 20)
    for row in data:
        assert row["prompt"].endswith("\nTL;DR:")
        assert row["prompt"].startswith("SUBREDDIT: r/")
        for key in ("completion", "reference", "chosen", "rejected"):
            if key in row:
                assert row[key].startswith(" ") and not row[key].startswith("  ")


def test_synthetic_offline_rewards_pair_chosen_and_rejected():
    pairs = factory("tldr-synthetic")(view="comparisons", num_examples=10)
    offline = factory("tldr-synthetic")(view="offline", num_examples=10)
    assert offline["reward"] == [1.0, -1.0] * 10
    assert offline["completion"][0::2] == pairs["chosen"]
    assert offline["completion"][1::2] == pairs["rejected"]


def test_synthetic_is_deterministic_and_seeded():
    make = factory("tldr-synthetic")
    first = make(view="comparisons", num_examples=50)
    again = make(view="comparisons", num_examples=50)
    other = make(view="comparisons", num_examples=50, seed=1)
    assert first.to_dict() == again.to_dict()
    assert first["prompt"] != other["prompt"]


def test_synthetic_splits_are_disjoint_and_stable():
    make = factory("tldr-synthetic")
    prompts = {
        split: set(make(split=split, num_examples=300)["prompt"])
        for split in ("train", "valid", "test")
    }
    assert all(len(p) == 300 for p in prompts.values())
    assert not prompts["train"] & prompts["valid"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["valid"] & prompts["test"]
    smaller = set(make(split="valid", num_examples=100)["prompt"])
    assert smaller <= prompts["valid"]
