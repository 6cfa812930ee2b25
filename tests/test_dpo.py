"""``dpo`` through the ``rlhf`` CLI on tiny models: after ``sft`` with a reference policy slot,
a plain ``from_pretrained`` policy and TRL's metrics, data from a jsonl with mapped columns,
every recipe mistake at ``rlhf validate``, resume from the newest complete checkpoint, LoRA
(with peft), 2 CPU ranks and DeepSpeed ZeRO-2, and the shipped tiny recipe beating SFT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_ppo_recipes import metrics, state

ONE_STAGE = """
[recipe]
name = "{trainer}"
seed = 3
{launch}
[stages.{trainer}]
trainer = "{trainer}"
policy = {{ use = "tiny-causal-lm", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300 }}
dataset = {{ use = "tldr-synthetic", view = "{view}", num_examples = 48 }}

[stages.{trainer}.trainer_settings]
learning_rate = 1e-3
max_steps = 4
per_device_train_batch_size = 4
logging_steps = 1
save_steps = 2
"""

AFTER_SFT = """
[recipe]
name = "pipeline"
seed = 3

[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300 }
dataset = { use = "tldr-synthetic", view = "sft", num_examples = 48 }
trainer_settings = { learning_rate = 3e-3, max_steps = 4, per_device_train_batch_size = 8 }

[stages.dpo]
trainer = "dpo"
policy = { use = "hf-causal-lm", from_stage = "sft" }
reference = { use = "hf-causal-lm", from_stage = "sft" }
dataset = { use = "tldr-synthetic", view = "comparisons", num_examples = 48 }
eval_dataset = { use = "tldr-synthetic", view = "comparisons", split = "valid", num_examples = 8 }
trainer_settings = { learning_rate = 1e-3, max_steps = 4, per_device_train_batch_size = 4, logging_steps = 1, beta = 0.5 }
"""


def one_stage(trainer: str, view: str, deepspeed: bool = False) -> str:
    """A recipe with one ``trainer`` stage on ``view`` of tldr-synthetic (4 steps, a checkpoint
    every 2), on DeepSpeed ZeRO-2 when ``deepspeed``."""
    launch = '\n[launch]\ndeepspeed = "zero2.json"\n' if deepspeed else ""
    return ONE_STAGE.format(trainer=trainer, view=view, launch=launch)


def assert_plain_policy(out: Path) -> None:
    """``out`` holds a causal LM that transformers loads without peft, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert AutoTokenizer.from_pretrained(out).pad_token is not None


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_settings_are_trl_fields_at_trl_defaults_beside_the_shared_ones(trainer):
    from rlhf_plugins._engine.factories import describe
    from rlhf_plugins._engine.registry import load_registry

    model = describe(load_registry().get("trainer", trainer).factory).model
    defaults = model()
    assert defaults.learning_rate == 1e-6 and defaults.beta == 0.1, "TRL's defaults"
    assert defaults.max_length is None and defaults.use_peft is False
    for left_out in ("model_init_kwargs", "trust_remote_code", "bf16", "output_dir", "optim"):
        assert left_out not in model.model_fields, left_out


def test_dpo_after_sft_saves_a_plain_policy_and_logs_trl_metrics(run_cli, write_recipe, tmp_path):
    from rlhf_plugins._engine.report import curves

    result = run_cli("run", write_recipe(AFTER_SFT))
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "pipeline" / "dpo"
    assert_plain_policy(out)
    final = state(out)["metrics"]
    assert final["steps"] == 4 and final["last_loss"] < final["first_loss"]
    for key in ("rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies"):
        assert key in final, key
    records = metrics(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all("learning_rate" in r and "rewards/margins" in r for r in records if "loss" in r)
    panels = curves(records)
    assert "loss" in panels["loss"] and "rewards/margins" in panels["reward"]
    assert "learning_rate" in panels["learning rate"]


def test_dpo_reads_a_jsonl_through_its_column_mapping(run_cli, write_recipe, tmp_path):
    rows = [
        {"q": f"POST: {n} lost a {t}.\nTL;DR:", "good": f" {n} lost a {t}.", "bad": " ramble"}
        for n in ("anna", "bob", "carl", "dina")
        for t in ("cat", "dog", "car")
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = one_stage("dpo", "comparisons").replace(
        'dataset = { use = "tldr-synthetic", view = "comparisons", num_examples = 48 }',
        'dataset = { use = "jsonl", path = "pairs.jsonl", '
        'columns = { prompt = "q", chosen = "good", rejected = "bad" } }',
    )
    recipe = write_recipe(text)
    assert run_cli("run", recipe).exit_code == 0
    assert state(tmp_path / "runs" / "dpo" / "dpo")["metrics"]["steps"] == 4

    unmapped = run_cli("run", recipe, "--set", 'stages.dpo.dataset.columns={ prompt = "q" }')
    assert unmapped.exit_code == 2
    assert "dpo: dataset needs columns prompt, chosen, rejected (a 'comparisons' view)" in (
        unmapped.output
    )


def test_validate_names_the_wrong_views_and_every_broken_trl_rule(run_cli, write_recipe):
    recipe = write_recipe(AFTER_SFT)
    views = run_cli(
        "validate",
        recipe,
        "--set",
        'stages.dpo.dataset.view="offline"',
        "--set",
        'stages.dpo.eval_dataset.view="sft"',
    )
    assert views.exit_code == 2
    assert "stages.dpo.dataset.view: dpo needs a 'comparisons' view here, got 'offline'" in (
        views.output
    )
    assert "stages.dpo.eval_dataset.view: dpo needs a 'comparisons' view here" in views.output

    rules = run_cli(
        "validate",
        recipe,
        "--set",
        'stages.dpo.trainer_settings.loss_type=["sigmoid", "exo_pair", "ipoo"]',
        "--set",
        "stages.dpo.trainer_settings.loss_weights=[1.0, 0.5]",
        "--set",
        "stages.dpo.trainer_settings.sync_ref_model=true",
        "--set",
        "stages.dpo.trainer_settings.precompute_ref_log_probs=true",
    )
    assert rules.exit_code == 2
    for said in (
        "unknown loss_type ipoo",
        "loss_weights has 2 weights for 3 loss types",
        "exo_pair needs label_smoothing > 0",
        "log-probabilities cannot be precomputed",
    ):
        assert said in rules.output, said

    bounds = run_cli(
        "validate",
        recipe,
        "--set",
        "stages.dpo.trainer_settings.beta=0",
        "--set",
        'stages.dpo.trainer_settings.truncation_mode="keep_middle"',
    )
    assert bounds.exit_code == 2
    assert "stages.dpo.trainer_settings.beta: must be > 0" in bounds.output
    assert "truncation_mode: must be one of 'keep_end' | 'keep_start'" in bounds.output


def test_an_interrupted_dpo_stage_resumes_from_its_newest_complete_checkpoint(
    run_cli, write_recipe, tmp_path
):
    recipe = write_recipe(one_stage("dpo", "comparisons"))
    assert run_cli("run", recipe).exit_code == 0
    out = tmp_path / "runs" / "dpo" / "dpo"
    uninterrupted = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    # killed while writing checkpoint-4: only checkpoint-2 is complete
    (out / "checkpoint-4" / "checkpoint_complete.json").unlink()
    (out / "stage_state.json").write_text(json.dumps({**state(out), "status": "interrupted"}))
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "continuing from checkpoint-2 (step 2)" in result.output
    resumed = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    assert resumed.keys() == uninterrupted.keys() == {1, 2, 3, 4}
    assert resumed == pytest.approx(uninterrupted, rel=1e-4)
    assert state(out)["metrics"]["steps"] == 4


def test_dpo_with_lora_saves_the_adapters_merged(run_cli, write_recipe, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    recipe = write_recipe(one_stage("dpo", "comparisons"))
    result = run_cli(
        "run",
        recipe,
        "--set",
        "stages.dpo.trainer_settings.use_peft=true",
        "--set",
        "stages.dpo.trainer_settings.lora_r=4",
        "--set",
        'stages.dpo.trainer_settings.lora_target_modules=["q_proj", "v_proj"]',
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "dpo" / "dpo"
    assert_plain_policy(out)
    trained = load_file(out / "model.safetensors")
    adapters = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert adapters and all("lora" in name for name in adapters), "checkpoints hold adapters"
    assert not any("lora" in name for name in trained)


@pytest.mark.slow
def test_dpo_on_two_cpu_ranks(write_recipe, run_rlhf, tmp_path):
    out = run_rlhf("run", write_recipe(one_stage("dpo", "comparisons")), "--num-processes", "2")
    assert "launching 2 processes with Accelerate" in out.stdout
    assert state(tmp_path / "runs" / "dpo" / "dpo")["metrics"]["steps"] == 4


@pytest.mark.slow
def test_dpo_on_deepspeed_zero2_on_two_cpu_ranks(write_recipe, run_rlhf, tmp_path):
    shutil.copy(REPO_ROOT / "recipes" / "deepspeed" / "zero2.json", tmp_path / "zero2.json")
    run_rlhf(
        "run", write_recipe(one_stage("dpo", "comparisons", deepspeed=True)), "--num-processes", "2"
    )
    out = tmp_path / "runs" / "dpo" / "dpo"
    assert (out / "checkpoint-4" / "global_step4").is_dir(), "the DeepSpeed engine saved it"
    assert_plain_policy(out)
