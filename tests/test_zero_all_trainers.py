"""Every trainer and evaluator under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks, through
``rlhf run``: one tiny recipe whose stages use ``sft``, ``reward-model``, ``ppo``, ``ilql``,
``grpo``, ``rloo``, ``dpo``, ``kto`` and a ``rouge`` evaluation of every policy (each scored by
the reward model), two optimizer steps per trainer, launched twice (module-scoped): under
ZeRO-2 and under ZeRO-3 with every parameter partitioned
(``stage3_param_persistence_threshold = 0``, tests/test_zero3.py's ``zero_config``). Each
stage must finish and its saved model must reload whole on one process.

Two quick tests pin the two ZeRO-3 fixes without launching: the reward model's per-token
rewards are the head's output after every forward hook (DeepSpeed's engine adds one that
gathers the partitioned head before its backward), and a reward model loaded lazily inside a
TRL stage (``grpo``, ``rloo``) loads whole although that stage registered its ZeRO-3 config.
"""

from __future__ import annotations

import json
import math
from string import Template

import pytest
import torch
from safetensors.torch import load_file

from tests.test_ppo_recipes import state
from tests.test_zero3 import Runs, max_difference, succeeded, zero_config

POLICY_STAGES = ("sft", "ppo", "ilql", "grpo", "rloo", "dpo", "kto")
"""The stages that save a causal LM (``ilql`` also its heads)."""
TRAINED = (*POLICY_STAGES, "reward_model")
STEPS = 2
"""Optimizer steps of every trainer in ``RECIPE``."""

HEAD = """
[recipe]
name = "$name"
seed = 3

[launch]
num_processes = 2
deepspeed = "$deepspeed"

# 160 tokens: the shortest rows that keep every synthetic post with this tokenizer (TRL drops
# the rows that a cut leaves nothing to learn from)
[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm", architecture = "gptj", n_layer = 2, n_embd = 32, n_head = 4, vocab_size = 1024 }
dataset = { use = "tldr-synthetic", view = "sft", split = "train", num_examples = 8 }
trainer_settings = { max_steps = 2, per_device_train_batch_size = 2, max_length = 160, save_steps = 0 }
"""
FROM_SFT = Template("""
[stages.$stage]
trainer = "$trainer"
policy = { use = "hf-causal-lm", from_stage = "sft" }
dataset = { use = "tldr-synthetic", view = "$view", split = "train", num_examples = 8 }
${slots}trainer_settings = { max_steps = 2, per_device_train_batch_size = 2, $settings }
""")
SCORER = '{ use = "gptj-reward-head", from_stage = "reward_model", max_length = 160 }'
TEXT = "max_length = 160, save_steps = 0"
GROUP = "num_generations = 2, max_completion_length = 4, save_steps = 0"
TRAINERS = {
    # stage: (trainer, dataset view, slots besides policy and dataset, trainer settings)
    # the reward model: bottom block and embeddings frozen, a checkpoint (each rank's partition)
    "reward_model": (
        "reward-model",
        "comparisons",
        'eval_dataset = { use = "tldr-synthetic", view = "comparisons", split = "valid", num_examples = 4 }',
        "freeze_fraction = 0.5, learning_rate = 1e-3, max_length = 160, save_steps = 2",
    ),
    "ppo": (
        "ppo",
        "prompts",
        f'reward = {{ use = "delta-reward", base = {SCORER} }}',
        "num_rollouts = 4, chunk_size = 2, ppo_epochs = 1, num_layers_unfrozen = 1, "
        "max_new_tokens = 4, save_steps = 0",
    ),
    "ilql": ("ilql", "offline", "", TEXT),
    "grpo": ("grpo", "prompts", f"reward = {SCORER}", GROUP),
    "rloo": ("rloo", "prompts", f"reward = {SCORER}", GROUP),
    "dpo": ("dpo", "comparisons", "", TEXT),
    "kto": ("kto", "offline", "", TEXT),
}
EVALUATION = f"""
[stages.eval]
evaluator = "rouge"
reference = {{ use = "hf-causal-lm", from_stage = "sft" }}
dataset = {{ use = "tldr-synthetic", view = "prompts", split = "test", num_examples = 4 }}
reward = {SCORER}
evaluator_settings = {{ max_new_tokens = 4 }}

[stages.eval.policies]
ilql = {{ use = "ilql", from_stage = "ilql", decode_beta = [1] }}
"""
RECIPE = Template(
    HEAD
    + "".join(
        FROM_SFT.substitute(
            stage=stage, trainer=trainer, view=view, slots=slots and slots + "\n", settings=settings
        )
        for stage, (trainer, view, slots, settings) in TRAINERS.items()
    )
    + EVALUATION
    + "".join(
        f'{stage} = {{ use = "hf-causal-lm", from_stage = "{stage}" }}\n'
        for stage in POLICY_STAGES
        if stage != "ilql"
    )
)
"""The recipe, ``name`` and ``deepspeed`` (the config's path) left to fill."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The recipe under ZeRO-2 (run ``zero2``) and ZeRO-3 (run ``zero3``)."""
    runs = Runs(tmp_path_factory.mktemp("zero_all"))
    for zero in (2, 3):
        name, config = f"zero{zero}", zero_config(runs.root, zero)
        assert succeeded(runs.run(name, RECIPE.substitute(name=name, deepspeed=config)))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_every_trainer_and_the_evaluation_finish(runs, zero):
    name = f"zero{zero}"
    for stage in TRAINED:
        finished = state(runs.stage(name, stage))
        assert finished["status"] == "finished", stage
        assert finished["metrics"]["steps"] == STEPS, stage
    evaluation = state(runs.stage(name, "eval"))
    assert evaluation["status"] == "finished" and evaluation["metrics"]["num_prompts"] == 4
    policies = json.loads((runs.stage(name, "eval") / "eval.json").read_text())["policies"]
    assert set(policies) == {"sft", "ppo", "ilql[beta=1]", "grpo", "rloo", "dpo", "kto"}
    for label, result in policies.items():
        assert len(result["samples"]) == 4, label
        assert math.isfinite(result["metrics"]["reward"]), label


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_every_saved_model_reloads_whole_on_one_process(runs, zero):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_builtins.ilql.models import load_heads
    from rlhf_builtins.reward.scoring import RewardHead

    name = f"zero{zero}"
    sft = load_file(runs.stage(name, "sft") / "model.safetensors")
    for stage in POLICY_STAGES:
        directory = runs.stage(name, stage)
        _, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], stage
        if stage != "sft":  # each started from the sft model: what it saved is what it trained
            assert max_difference(load_file(directory / "model.safetensors"), sft) > 0, stage
    load_heads(runs.stage(name, "ilql"))  # load_state_dict, strict

    directory = runs.stage(name, "reward_model")
    _, info = AutoModelForSequenceClassification.from_pretrained(
        directory, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    scores = RewardHead(str(directory))(["POST: a post.\nTL;DR:"] * 2, [" one", " another"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    # freeze_fraction 0.5: the embeddings and block 0 kept the sft weights, block 1 trained
    weights = load_file(directory / "model.safetensors")
    frozen = [k for k in weights if k.startswith(("transformer.wte.", "transformer.h.0."))]
    trained = {k: v for k, v in weights.items() if k.startswith("transformer.h.1.")}
    assert frozen and all(weights[k].equal(sft[k]) for k in frozen)
    assert trained and max_difference(trained, sft) > 0


@pytest.mark.slow
def test_zero3_partitioned_the_reward_model_over_the_ranks(runs):
    """Each rank saved only its own partition of the parameters (ZeRO-2 saves them whole)."""
    for zero, files in (
        (2, {"mp_rank_00_model_states.pt"}),
        (3, {f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" for rank in (0, 1)}),
    ):
        step = (
            runs.stage(f"zero{zero}", "reward_model")
            / f"checkpoint-{STEPS}"
            / f"global_step{STEPS}"
        )
        assert {p.name for p in step.glob("*model_states.pt")} == files


def tiny_reward_model():
    from transformers import AutoModelForSequenceClassification, GPT2Config

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, num_labels=1, pad_token_id=0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_reward_model_outputs_are_what_the_head_returns_after_every_hook():
    """A hook added after ``HeadOutputs`` (DeepSpeed's, when the Trainer prepares the engine)
    changes what the head returns; the rewards are what it returns (and so backpropagate
    through DeepSpeed's gathering of the head)."""
    from rlhf_builtins.reward.models import HeadOutputs

    model = tiny_reward_model()
    head_outputs = HeadOutputs(model)
    model.score.register_forward_hook(lambda module, inputs, output: output + 100.0)
    input_ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long)
    rewards = head_outputs(model, input_ids, mask)
    pooled = model(input_ids=input_ids, attention_mask=mask).logits
    assert rewards[0, -1].item() == pytest.approx(pooled.item())
    assert rewards.min().item() > 50


def test_loading_whole_lifts_a_zero3_registration_while_it_loads():
    from transformers.integrations import (
        HfDeepSpeedConfig,
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    from rlhf_plugins._engine.zero import loading_whole

    registered = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})  # as TrainingArguments
    try:
        with loading_whole():
            assert not is_deepspeed_zero3_enabled()
            model = tiny_reward_model()  # inside deepspeed.zero.Init otherwise
        assert not any(hasattr(p, "ds_id") for p in model.parameters())
        assert is_deepspeed_zero3_enabled()  # the stage's own models still partition
    finally:
        unset_hf_deepspeed_config()
    del registered
    with loading_whole():  # nothing registered: nothing to lift or restore
        pass
    assert not is_deepspeed_zero3_enabled()
