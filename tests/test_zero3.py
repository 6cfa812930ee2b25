"""PPO and ILQL under DeepSpeed ZeRO-3 on 2 CPU ranks, through ``rlhf run``: the same weights
as under ZeRO-2 (fp32), a resume from a ZeRO-3 checkpoint that ends where an uninterrupted run
ends, and an evaluation stage that generates with the ILQL model after a ZeRO-3 stage.

Three launches shared by the tests (module-scoped): one recipe of a ppo stage (the toy plugin
of tests/ppo_toy_plugin.py), an ilql stage (synthetic TL;DR offline view) and a rouge
evaluation of the ilql model, under ZeRO-2 and under ZeRO-3 (each stage in the same processes
gets its own DeepSpeed engine), and the ppo recipe alone under ZeRO-3 interrupted after its
first checkpoint and resumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlhf_plugins import UserError
from rlhf_plugins._engine.loop import fill_deepspeed_config
from tests.conftest import PPO_TOY_RECIPE, REPO_ROOT, TOY_PLUGIN
from tests.test_ppo_recipes import metrics, state

# Measured max abs difference between the ZeRO-3 and ZeRO-2 final weights (fp32, the same on
# reruns): 2.1e-6 for ppo here (4.6e-7 without the eval prompts, which change the tiny
# tokenizer), from the gradients and their norm being summed in another order over the ranks'
# partitions; exactly 0 for ilql. The updates move weights by ~4e-3. 2e-5 leaves a 10x margin
# over ppo's figure and is still 200x below the size of an update.
TOLERANCE = 2e-5

ILQL_STAGES = """
[stages.ilql]
trainer = "ilql"
policy = { use = "tiny-causal-lm", n_layer = 2, n_embd = 32, n_head = 4, vocab_size = 300 }
dataset = { use = "tldr-synthetic", view = "offline", split = "train", num_examples = 32 }

[stages.ilql.trainer_settings]
per_device_train_batch_size = 4
max_length = 96
learning_rate = 1e-3
max_steps = 4
target_sync_steps = 1
alpha = 0.5
save_steps = 2

[stages.eval]
evaluator = "rouge"
dataset = { use = "tldr-synthetic", view = "prompts", split = "test", num_examples = 6 }
policies = { ilql = { use = "ilql", from_stage = "ilql", decode_beta = [0, 2] } }

[stages.eval.evaluator_settings]
max_new_tokens = 8
do_sample = true
top_k = 20
"""


def ppo_recipe(name: str, deepspeed: Path) -> str:
    """tests/conftest.py's toy ppo recipe on 2 ranks under ``deepspeed``, with a final
    evaluation (greedy generation) on held-out prompts."""
    extra = (
        'eval_dataset = { use = "ppo-toy-prompts", rows = 6, offset = 500 }\n'
        f'[launch]\nnum_processes = 2\ndeepspeed = "{deepspeed}"'
    )
    return PPO_TOY_RECIPE.format(name=name, fault="none", fault_calls=[], extra=extra)


def zero_config(directory: Path, stage: int) -> Path:
    """The shipped recipes/deepspeed/zero3.json at ``stage``; every parameter partitioned
    (``stage3_param_persistence_threshold = 0``: by default parameters below 1e5 elements, i.e.
    all of a tiny model's, stay whole on every rank)."""
    config = json.loads((REPO_ROOT / "recipes" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"].update(stage=stage, stage3_param_persistence_threshold=0)
    path = directory / f"zero{stage}.json"
    path.write_text(json.dumps(config))
    return path


class Runs:
    """Runs ``rlhf run`` on 2 ranks in one directory, with the toy plugin installed."""

    def __init__(self, root: Path):
        self.root = root
        site = root / "site"
        info = site / "ppo_toy-1.0.dist-info"
        info.mkdir(parents=True)
        (site / "ppo_toy_plugin.py").write_text(TOY_PLUGIN.read_text())
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ppo-toy\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[rlhf_plugins]\nppo-toy = ppo_toy_plugin\n")
        self.env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def run(self, name: str, text: str, **env: str) -> subprocess.CompletedProcess:
        recipe = self.root / f"{name}.toml"
        recipe.write_text(text)
        return subprocess.run(
            [sys.executable, "-m", "rlhf_plugins.cli", "run", str(recipe)],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def stage(self, name: str, stage: str) -> Path:
        return self.root / "runs" / name / stage


def succeeded(out: subprocess.CompletedProcess) -> bool:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """ppo, ilql and eval under ZeRO-2 (run ``zero2``) and ZeRO-3 (run ``zero3``)."""
    runs = Runs(tmp_path_factory.mktemp("zero3"))
    for stage in (2, 3):
        text = ppo_recipe(f"zero{stage}", zero_config(runs.root, stage)) + ILQL_STAGES
        assert succeeded(runs.run(f"zero{stage}", text))
    return runs


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_ppo_under_zero3_matches_zero2(runs):
    from transformers import AutoConfig, AutoModelForCausalLM

    zero2, zero3 = runs.stage("zero2", "ppo"), runs.stage("zero3", "ppo")
    # every rank saved only its own partition of the model: parameters really were sharded
    assert (
        zero3 / "checkpoint-4" / "pytorch_model" / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    ).is_file()
    weights3 = load_file(zero3 / "model.safetensors")
    # the gathered state dict leaves out the LM head tied to the embeddings; it loads whole
    _, info = AutoModelForCausalLM.from_pretrained(zero3, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    weights2 = {k: v for k, v in load_file(zero2 / "model.safetensors").items() if k in weights3}
    assert weights2.keys() == weights3.keys()
    assert max_difference(weights2, weights3) < TOLERANCE
    for head in ("value_head.safetensors",):
        assert max_difference(load_file(zero2 / head), load_file(zero3 / head)) < TOLERANCE
    # the comparison means something: training moved the weights far more than the tolerance
    torch.manual_seed(3)  # tiny-causal-lm initialises with the recipe seed
    start = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(zero3)).state_dict()
    assert max_difference(weights3, start) > 50 * TOLERANCE
    final2, final3 = state(zero2)["metrics"], state(zero3)["metrics"]
    assert final2["rank_param_spread"] == 0 and "rank_param_spread" not in final3
    assert final3["steps"] == 8 and final3["eval/samples"] == 6
    assert final3["eval/reward_mean"] == pytest.approx(final2["eval/reward_mean"], abs=1e-6)


@pytest.mark.slow
def test_ppo_resumes_from_a_zero3_checkpoint_where_an_uninterrupted_run_ends(runs):
    text = ppo_recipe("resumed", zero_config(runs.root, 3))
    out = runs.run("resumed", text, PPO_TOY_FAIL_AT_CALL="3")  # the second update's first call
    assert out.returncode == 1 and "interrupted at reward call 3" in out.stdout + out.stderr
    resumed = runs.stage("resumed", "ppo")
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-4"]
    assert succeeded(runs.run("resumed", text))
    assert state(resumed)["metrics"]["resumed_from_step"] == 4
    assert [r["step"] for r in metrics(resumed) if "reward/mean" in r] == [4, 8]
    straight = load_file(runs.stage("zero3", "ppo") / "model.safetensors")
    weights = load_file(resumed / "model.safetensors")
    for name, tensor in straight.items():
        assert weights[name].equal(tensor), name


@pytest.mark.slow
def test_ilql_under_zero3_matches_zero2_and_its_model_generates(runs):
    zero2, zero3 = runs.stage("zero2", "ilql"), runs.stage("zero3", "ilql")
    for weights in ("model.safetensors", "ilql_heads.safetensors"):
        assert max_difference(load_file(zero2 / weights), load_file(zero3 / weights)) < TOLERANCE
    # the evaluation after the ZeRO-3 stage loaded whole models and sampled the same texts
    evals = [
        json.loads((runs.stage(name, "eval") / "eval.json").read_text())["policies"]
        for name in ("zero2", "zero3")
    ]
    assert set(evals[1]) == {"ilql[beta=0]", "ilql[beta=2]"}
    for label, result in evals[1].items():
        generated = [s["generated"] for s in result["samples"]]
        assert len(generated) == 6
        assert generated == [s["generated"] for s in evals[0][label]["samples"]]


def test_zero3_configs_gather_the_whole_model_to_save_it():
    """The loops save the final model with ``accelerator.get_state_dict``: under ZeRO-3 that
    needs the gathering switch, on by default and refused when a config turns it off."""

    def filled(zero: dict) -> dict:
        plugin = SimpleNamespace(deepspeed_config={"zero_optimization": zero})
        accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
        fill_deepspeed_config(
            accelerator,
            micro_batch_size=1,
            gradient_accumulation_steps=1,
            num_processes=2,
            max_grad_norm=None,
        )
        return plugin.deepspeed_config["zero_optimization"]

    assert filled({"stage": 3})["stage3_gather_16bit_weights_on_model_save"] is True
    assert filled({"stage": 2}) == {"stage": 2}
    with pytest.raises(UserError, match="stage3_gather_16bit_weights_on_model_save = false"):
        filled({"stage": 3, "stage3_gather_16bit_weights_on_model_save": False})
