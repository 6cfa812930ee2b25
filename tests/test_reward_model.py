"""The reward model through the plugin surface: the ``reward-model`` trainer on tiny GPT-J,
GPT-2 and GPT-NeoX trunks, the ``gptj-reward-head`` reward function (save -> reload, batching,
trlX import) and a recipe run under two processes."""

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from rlhf_plugins import UserError
from rlhf_plugins._engine.registry import load_registry
from rlhf_plugins._engine.stage_context import StageContext
from tests.conftest import build_component

TOPICS = ["cats", "dogs", "rain", "coffee", "trains", "music", "code", "books", "tea", "snow"]
GOOD = ["great", "useful", "kind", "clear", "calm"]
BAD = ["awful", "broken", "rude", "messy", "loud"]
TINY_SHAPE = {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 300, "max_positions": 128}


def comparison_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Pairs where the chosen summary praises the topic and the rejected one rambles and pans it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        rows.append(
            {
                "prompt": f"POST: I keep thinking about {topic} these days.\nTL;DR:",
                "chosen": f" {topic} is {rng.choice(GOOD)}",
                "rejected": f" {topic} is {rng.choice(BAD)} and {rng.choice(BAD)}",
            }
        )
    return rows


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def comparisons():
    return Dataset.from_list(comparison_rows(192, seed=0))


@pytest.fixture(scope="module")
def held_out():
    return Dataset.from_list(comparison_rows(48, seed=1))


def make_stage(root: Path, name: str, **components) -> StageContext:
    return StageContext(
        recipe_name="test",
        name=name,
        output_dir=root / name,
        seed=7,
        config={},
        components=dict(components),
    )


@pytest.fixture(scope="module")
def trunk_dir(registry, comparisons, tmp_path_factory):
    """Save a tiny causal LM of an architecture (tokenizer trained on the comparisons)."""
    root = tmp_path_factory.mktemp("trunks")
    saved: dict[str, Path] = {}

    def build(architecture: str) -> Path:
        if architecture not in saved:
            stage = make_stage(root, architecture, dataset=comparisons)
            policy = build_component(
                "policy", "tiny-causal-lm", stage=stage, architecture=architecture, **TINY_SHAPE
            )
            policy.load_model().save_pretrained(stage.output_dir)
            policy.load_tokenizer().save_pretrained(stage.output_dir)
            saved[architecture] = stage.output_dir
        return saved[architecture]

    return build


def train(registry, root: Path, trunk: Path, dataset, **settings) -> tuple[StageContext, dict]:
    stage = make_stage(root, "reward_model")
    policy = registry.get("policy", "hf-causal-lm").factory(stage=stage, model=str(trunk))
    run = build_component("trainer", "reward-model", policy=policy, dataset=dataset, **settings)
    return stage, run(stage)


def reward_function(registry, **settings):
    return registry.get("reward_function", "gptj-reward-head").factory(**settings)


def pair_accuracy(score, rows) -> float:
    prompts = [r["prompt"] for r in rows]
    chosen = score(prompts, [r["chosen"] for r in rows])
    rejected = score(prompts, [r["rejected"] for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)


@pytest.mark.slow
def test_training_improves_held_out_accuracy(registry, trunk_dir, comparisons, held_out, tmp_path):
    stage, metrics = train(
        registry,
        tmp_path,
        trunk_dir("gptj"),
        comparisons.select(range(96)),
        eval_dataset=held_out,
        learning_rate=5e-3,
        logging_steps=3,
        per_device_train_batch_size=8,
        eval_steps=6,
        freeze_fraction=0.5,
    )
    records = [json.loads(line) for line in stage.metrics_path.read_text().splitlines()]
    first = next(r for r in records if "accuracy" in r)
    evaluations = [r for r in records if "eval_accuracy" in r]
    assert first["step"] == 1 and first["accuracy"] < 0.8
    assert len(evaluations) >= 2  # every 6 of 12 steps, and at the end
    assert metrics["eval_accuracy"] >= 0.95 > first["accuracy"]
    assert metrics["eval_loss"] < math.log(2) and metrics["eval_margin"] > 0
    assert {"chosen_reward", "rejected_reward", "margin", "loss"} <= set(first)
    assert metrics["frozen_layers"] == 1
    # the saved model scores held-out pairs as the stage's own evaluation did
    score = reward_function(registry, from_stage=str(stage.output_dir))
    assert pair_accuracy(score, held_out) == pytest.approx(metrics["eval_accuracy"])


@pytest.mark.parametrize(
    ("architecture", "loss_type"),
    [("gptj", "divergence"), ("gpt2", "last-token"), ("gpt_neox", "divergence")],
)
def test_each_architecture_trains_saves_and_reloads(
    registry, trunk_dir, comparisons, tmp_path, architecture, loss_type
):
    stage, metrics = train(
        registry,
        tmp_path,
        trunk_dir(architecture),
        comparisons.select(range(8)),
        loss_type=loss_type,
        max_steps=2,
        per_device_train_batch_size=4,
        freeze_fraction=0.5,
        learning_rate=1e-3,
    )
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    model, info = AutoModelForSequenceClassification.from_pretrained(
        stage.output_dir, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_labels == 1
    dropouts = {
        k: v
        for k, v in model.config.to_dict().items()
        if isinstance(v, float) and ("dropout" in k or "pdrop" in k)
    }
    assert dropouts and set(dropouts.values()) == {0.0}
    trunk = AutoModelForSequenceClassification.from_pretrained(trunk_dir(architecture))
    frozen = [
        n
        for n, p in trunk.named_parameters()
        if torch.equal(p, model.state_dict()[n]) and not n.startswith("score")
    ]
    assert any(".0." in n for n in frozen) and not any(".1." in n for n in frozen)


def test_head_is_initialised_with_the_std_of_stiennon_et_al(trunk_dir):
    from rlhf_builtins.reward.models import RewardModelLoader

    config = AutoModelForSequenceClassification.from_pretrained(trunk_dir("gpt2")).config
    config.n_embd, config.n_head = 1023, 1
    torch.manual_seed(0)
    head = RewardModelLoader(pad_token_id=1).from_config(config).score.weight
    assert head.shape == (1, 1023)
    assert head.std().item() == pytest.approx(1 / math.sqrt(1024), rel=0.1)


@pytest.fixture(scope="module")
def saved_reward_model(registry, trunk_dir, comparisons, tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    stage, _ = train(
        registry,
        root,
        trunk_dir("gptj"),
        comparisons.select(range(16)),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
    )
    return stage.output_dir


def varied_rows():
    rows = comparison_rows(7, seed=3)
    prompts = [r["prompt"] for r in rows]
    completions = [r["chosen"] * (1 + i % 3) for i, r in enumerate(rows)]
    return prompts, completions


def direct_scores(model, rows, pad_token_id: int) -> list[float]:
    """The head's output at the last token of each row, one row at a time (no padding)."""
    from rlhf_builtins.reward.models import HeadOutputs, pad_right

    head_outputs = HeadOutputs(model)
    scores = []
    for row in rows:
        input_ids, mask = pad_right([row], pad_token_id)
        scores.append(head_outputs(model, input_ids, mask)[0, -1].item())
    head_outputs.remove()
    return scores


def test_reload_gives_identical_scores(registry, saved_reward_model):
    from rlhf_builtins.reward.models import tokenize_texts

    prompts, completions = varied_rows()
    score = reward_function(registry, path=str(saved_reward_model))
    first = score(prompts, completions)
    again = reward_function(registry, from_stage=str(saved_reward_model))(prompts, completions)
    assert first == again
    model = AutoModelForSequenceClassification.from_pretrained(saved_reward_model)
    tokenizer = score.loaded[1]
    pairs = zip(
        tokenize_texts(tokenizer, prompts), tokenize_texts(tokenizer, completions), strict=True
    )
    direct = direct_scores(model, [p + c for p, c in pairs], tokenizer.pad_token_id)
    assert first == pytest.approx(direct, abs=1e-5)


def test_batched_scores_equal_unbatched(registry, saved_reward_model):
    prompts, completions = varied_rows()
    one = reward_function(registry, path=str(saved_reward_model), batch_size=1)
    four = reward_function(registry, path=str(saved_reward_model), batch_size=4)
    assert four(prompts, completions) == pytest.approx(one(prompts, completions), abs=1e-5)
    assert four([], []) == []


def test_max_length_keeps_the_completion(registry, saved_reward_model):
    prompts, completions = varied_rows()
    long_prompts = [p * 20 for p in prompts]
    score = reward_function(registry, path=str(saved_reward_model), max_length=48)
    rows = score.encode(long_prompts, completions)
    tokenizer = score.loaded[1]
    assert max(len(r) for r in rows) == 48
    for row, completion in zip(rows, completions, strict=True):
        assert tokenizer.decode(row).endswith(completion)


def test_legacy_trlx_checkpoint_imports(registry, saved_reward_model, trunk_dir, tmp_path):
    from rlhf_builtins.reward.legacy import import_trlx_checkpoint

    model = AutoModelForSequenceClassification.from_pretrained(saved_reward_model)
    legacy = {f"transformer.{k}": v for k, v in model.transformer.state_dict().items()}
    legacy["v_head.weight"] = model.score.weight.detach().clone()
    legacy["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e9)
    checkpoint = tmp_path / "trlx_rm"
    checkpoint.mkdir()
    torch.save(legacy, checkpoint / "pytorch_model.bin")
    prompts, completions = varied_rows()
    imported = reward_function(registry, path=str(checkpoint), base_model=str(trunk_dir("gptj")))
    # the same weights, read on trlX's text (tests/test_reward_tokens.py checks that text)
    trlx_text = direct_scores(
        model, imported.encode(prompts, completions), model.config.pad_token_id
    )
    assert imported(prompts, completions) == pytest.approx(trlx_text, abs=1e-5)
    expected = reward_function(registry, path=str(saved_reward_model))(prompts, completions)
    converted = import_trlx_checkpoint(str(checkpoint), str(trunk_dir("gptj")), tmp_path / "out")
    assert reward_function(registry, path=str(converted))(prompts, completions) == pytest.approx(
        expected, abs=1e-6
    )


def test_legacy_checkpoint_that_does_not_fit_is_a_user_error(registry, trunk_dir, tmp_path):
    torch.save(
        {"v_head.weight": torch.zeros(1, 32), "transformer.wte.weight": torch.zeros(3, 32)},
        tmp_path / "pytorch_model.bin",
    )
    score = reward_function(registry, path=str(tmp_path), base_model=str(trunk_dir("gptj")))
    with pytest.raises(UserError, match="does not fit"):
        score(["p"], ["c"])


def test_user_errors(registry, trunk_dir, comparisons, tmp_path):
    with pytest.raises(UserError, match="exactly one"):
        reward_function(registry)
    with pytest.raises(UserError, match=r"no config\.json"):
        reward_function(registry, path=str(tmp_path))(["p"], ["c"])
    with pytest.raises(UserError, match="comparisons"):
        train(registry, tmp_path, trunk_dir("gptj"), comparisons.remove_columns("rejected"))


def test_trunk_with_missing_weights_is_a_user_error(registry, trunk_dir, comparisons, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trunk_dir("gpt2"), broken)
    weights = load_file(broken / "model.safetensors")
    kept = {k: v for k, v in weights.items() if ".h.1." not in k}
    save_file(kept, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"lacks \d+ trunk weights"):
        train(registry, tmp_path, broken, comparisons.select(range(4)), max_steps=1)


RECIPE = """
[recipe]
name = "rm_two_processes"

[launch]
num_processes = 2

[stages.reward_model]
trainer = "reward-model"
policy = {{ use = "hf-causal-lm", model = "{trunk}" }}
dataset = {{ use = "jsonl", path = "pairs.jsonl" }}
eval_dataset = {{ use = "jsonl", path = "pairs.jsonl", limit = 8 }}
trainer_settings = {{ max_steps = 2, per_device_train_batch_size = 4, logging_steps = 1 }}
"""


@pytest.mark.slow
def test_recipe_runs_under_two_processes(trunk_dir, run_cli, write_recipe, tmp_path):
    with (tmp_path / "pairs.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in comparison_rows(16, seed=4))
    recipe = write_recipe(RECIPE.format(trunk=trunk_dir("gpt2")))
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    state = json.loads(
        (tmp_path / "runs/rm_two_processes/reward_model/stage_state.json").read_text()
    )
    assert state["status"] == "finished"
    assert state["metrics"]["steps"] == 2 and 0.0 <= state["metrics"]["eval_accuracy"] <= 1.0
    assert (tmp_path / "runs/rm_two_processes/reward_model/model.safetensors").is_file()
