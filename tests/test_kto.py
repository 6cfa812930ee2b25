"""``kto`` through the ``rlhf`` CLI on tiny models: labelled completions from the offline
view's reward sign, a ``label`` column or comparison pairs, a plain ``from_pretrained``
policy and TRL's metrics, recipe mistakes at ``rlhf validate``, bad labels named by row,
2 CPU ranks and DeepSpeed ZeRO-2, and the shipped tiny recipe beating SFT."""

from __future__ import annotations

import itertools
import json
import shutil
from types import SimpleNamespace

import pytest

from rlhf_plugins import UserError
from tests.conftest import REPO_ROOT, build_component
from tests.test_dpo import assert_plain_policy, one_stage
from tests.test_ppo_recipes import metrics, state


def prepared(data: dict[str, list], **settings) -> dict[str, list]:
    """The rows ``kto`` trains on for a dataset of ``data`` (columns -> values)."""
    import datasets

    stage = build_component("trainer", "kto", policy=None, dataset=None, **settings)
    return stage.prepare(datasets.Dataset.from_dict(data), "dataset", SimpleNamespace(seed=0))


def rows(data) -> set[tuple]:
    return set(zip(data["prompt"], data["completion"], data["label"], strict=True))


def test_labels_come_from_the_reward_sign_a_label_column_or_the_pairs():
    offline = {
        "prompt": ["p", "p", "q"],
        "completion": [" a", " b", " c"],
        "reward": [1.0, -1.0, 0.5],
    }
    assert rows(prepared(offline)) == {("p", " a", True), ("p", " b", False), ("q", " c", True)}
    assert rows(prepared(offline, reward_threshold=0.7)) == {
        ("p", " a", True),
        ("p", " b", False),
        ("q", " c", False),
    }
    labelled = {"prompt": ["p", "q"], "completion": [" a", " b"], "label": [1, 0], "x": [0, 0]}
    result = prepared(labelled)
    assert result.column_names == ["prompt", "completion", "label"]
    assert rows(result) == {("p", " a", True), ("q", " b", False)}
    pairs = {"prompt": ["p", "q"], "chosen": [" a", " c"], "rejected": [" b", " d"]}
    assert rows(prepared(pairs)) == {
        ("p", " a", True),
        ("p", " b", False),
        ("q", " c", True),
        ("q", " d", False),
    }


def test_rows_are_shuffled_so_batch_neighbours_have_other_prompts():
    n = 64
    offline = {
        "prompt": [f"p{i // 2}" for i in range(n)],
        "completion": [f" c{i}" for i in range(n)],
        "reward": [1.0 - 2 * (i % 2) for i in range(n)],
    }
    prompts = prepared(offline)["prompt"]
    same = sum(a == b for a, b in itertools.pairwise(prompts))
    assert same < n // 4, "the offline view's pairs stay adjacent"


def test_a_dataset_without_labelled_completions_or_a_bad_label_is_named():
    with pytest.raises(
        UserError, match=r"kto: dataset needs labelled completions.*it has prompt, completion"
    ):
        prepared({"prompt": ["p"], "completion": [" a"]})
    with pytest.raises(UserError, match="kto: dataset row 1: label must be true or false, got 2"):
        prepared({"prompt": ["p", "q"], "completion": [" a", " b"], "label": [1, 2]})


def test_kto_on_the_offline_view_saves_a_plain_policy_and_logs_trl_metrics(
    run_cli, write_recipe, tmp_path
):
    result = run_cli("run", write_recipe(one_stage("kto", "offline")))
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "kto" / "kto"
    assert_plain_policy(out)
    final = state(out)["metrics"]
    assert final["steps"] == 4 and "rewards/margins" in final and "kl" in final
    logged = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all("learning_rate" in r and "rewards/chosen" in r for r in logged)


def test_kto_reads_labels_from_a_jsonl_and_names_a_bad_one(run_cli, write_recipe, tmp_path):
    lines = [
        {
            "prompt": f"POST: {n} lost a cat.\nTL;DR:",
            "completion": f" {n} lost a cat.",
            "label": True,
        }
        for n in ("anna", "bob", "carl", "dina")
    ] + [{"prompt": "POST: eve.\nTL;DR:", "completion": " ramble", "label": False}] * 4
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = one_stage("kto", "offline").replace(
        'dataset = { use = "tldr-synthetic", view = "offline", num_examples = 48 }',
        'dataset = { use = "jsonl", path = "labelled.jsonl" }',
    )
    recipe = write_recipe(text)
    assert run_cli("run", recipe).exit_code == 0
    assert state(tmp_path / "runs" / "kto" / "kto")["metrics"]["steps"] == 4

    lines[2]["label"] = 3
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    bad = run_cli("run", recipe, "--force")
    assert bad.exit_code == 2
    assert "kto: dataset row 2: label must be true or false, got 3" in bad.output


def test_validate_names_a_view_without_labels_and_broken_trl_rules(run_cli, write_recipe):
    recipe = write_recipe(one_stage("kto", "offline"))
    view = run_cli("validate", recipe, "--set", 'stages.kto.dataset.view="prompts"')
    assert view.exit_code == 2
    assert "kto needs a 'offline' or 'comparisons' view here, got 'prompts'" in view.output
    rules = run_cli(
        "validate",
        recipe,
        "--set",
        "stages.kto.trainer_settings.per_device_train_batch_size=1",
        "--set",
        "stages.kto.trainer_settings.sync_ref_model=true",
        "--set",
        "stages.kto.trainer_settings.precompute_ref_log_probs=true",
    )
    assert rules.exit_code == 2
    assert "per_device_train_batch_size must be at least 2" in rules.output
    assert "log-probabilities cannot be precomputed" in rules.output
    loss = run_cli("validate", recipe, "--set", 'stages.kto.trainer_settings.loss_type="kt"')
    assert "must be one of 'kto' | 'apo_zero_unpaired', got 'kt'" in loss.output


@pytest.mark.slow
def test_kto_on_deepspeed_zero2_on_two_cpu_ranks(write_recipe, run_rlhf, tmp_path):
    shutil.copy(REPO_ROOT / "recipes" / "deepspeed" / "zero2.json", tmp_path / "zero2.json")
    recipe = write_recipe(one_stage("kto", "offline", deepspeed=True))
    out = run_rlhf("run", recipe, "--num-processes", "2")
    assert "launching 2 processes with Accelerate" in out.stdout
    stage = tmp_path / "runs" / "kto" / "kto"
    assert (stage / "checkpoint-4" / "global_step4").is_dir(), "the DeepSpeed engine saved it"
    assert state(stage)["metrics"]["steps"] == 4
    assert_plain_policy(stage)
