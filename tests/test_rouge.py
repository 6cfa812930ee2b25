"""The ``rouge`` evaluator: ROUGE numbers equal ``rouge-score``'s, reward and delta means with a
toy reward function, policy variants, the reports it writes, settings errors, and whole recipes
with tiny models (one process and two)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from rouge_score import rouge_scorer  # noqa: E402

from rlhf_plugins import StageContext, UserError  # noqa: E402
from rlhf_plugins._engine.errors import StageFailed  # noqa: E402
from rlhf_plugins._engine.registry import load_registry  # noqa: E402

REFERENCES = ["cat lost in park", "dog ate homework", "car broke down today"]
PROMPTS = [f"POST: story {i} about a {r.split()[0]}.\nTL;DR:" for i, r in enumerate(REFERENCES)]
SHORT = [r.split()[0] for r in REFERENCES]


def direct_rouge(generated: list[str], references: list[str]) -> list[dict[str, float]]:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return [
        {k: v.fmeasure for k, v in scorer.score(ref, gen).items()}
        for gen, ref in zip(generated, references, strict=True)
    ]


class CannedModel(torch.nn.Module):
    """A fake causal LM: answers each prompt with the completion stored for its text."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answers = tokenizer, answers

    def generate(self, input_ids, max_new_tokens, pad_token_id, eos_token_id, **_):
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        answers = self.tokenizer([self.answers[p] for p in prompts], add_special_tokens=False)
        tails = [[*ids[:max_new_tokens], eos_token_id] for ids in answers["input_ids"]]
        width = max(len(t) for t in tails)
        padded = [t + [pad_token_id] * (width - len(t)) for t in tails]
        return torch.cat([input_ids, torch.tensor(padded)], dim=1)


class CannedPolicy:
    """A Policy whose model is a ``CannedModel``."""

    def __init__(self, name: str, tokenizer, completions: list[str]):
        self.name, self.tokenizer = name, tokenizer
        self.answers = dict(zip(PROMPTS, completions, strict=True))

    def load_tokenizer(self):
        return self.tokenizer

    def load_model(self, **kwargs):
        return CannedModel(self.tokenizer, self.answers)


class SweepPolicy(CannedPolicy):
    """A policy with variants, like the ILQL policy's ``decode_beta`` sweep."""

    def __init__(self, variants: dict[str, CannedPolicy]):
        self._variants = variants
        self.name = "sweep"

    def variants(self):
        return self._variants


@pytest.fixture(scope="module")
def tokenizer():
    from rlhf_builtins.hf_policies.policies import train_tokenizer

    return train_tokenizer(PROMPTS + REFERENCES, vocab_size=300)


@pytest.fixture
def prompts_dataset():
    return datasets.Dataset.from_dict(
        {"prompt": PROMPTS, "reference": REFERENCES, "id": ["a", "b", "c"]}
    )


@pytest.fixture
def stage(tmp_path: Path) -> StageContext:
    return StageContext(
        recipe_name="demo", name="eval", output_dir=tmp_path / "eval", seed=0, config={}
    )


def rouge_evaluator(policies, dataset, reward=None, **settings):
    """The ``rouge`` evaluator for ``policies`` on ``dataset``, ``settings`` validated as a
    recipe's ``evaluator_settings`` would be."""
    from rlhf_builtins.rouge import RougeSettings

    factory = load_registry().get("evaluator", "rouge").factory
    return factory(policies, dataset, reward, settings=RougeSettings(**settings))


class WordCountReward:
    """Reward = number of words; remembers the extra columns it was given."""

    def __init__(self):
        self.columns: list[dict] = []

    def __call__(self, prompts, completions, **columns):
        self.columns.append(columns)
        return [float(len(c.split())) for c in completions]


def test_rouge_fmeasures_match_rouge_score_and_hand_values():
    from rlhf_builtins.rouge.scoring import rouge_fmeasures

    generated = ["the cats were running", "", "dog ate homework"]
    references = ["a cat runs", "anything", "dog ate my homework"]
    ours = rouge_fmeasures(generated, references)
    assert ours == direct_rouge(generated, references)
    # stemming: {the, cat, were, run} vs {a, cat, run}: P = 2/4, R = 2/3, F = 4/7
    assert ours[0]["rouge1"] == pytest.approx(4 / 7)
    assert ours[1] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_summary_metrics_hand_computed():
    from rlhf_builtins.rouge.scoring import summary_metrics

    samples = [
        {
            "generated": "a b",
            "rouge1": 0.5,
            "rouge2": 0.2,
            "rougeL": 0.5,
            "reward": 2.0,
            "reference_reward": 1.0,
        },
        {
            "generated": "a b c d",
            "rouge1": 0.3,
            "rouge2": 0.0,
            "rougeL": 0.1,
            "reward": -1.0,
            "reference_reward": 0.5,
        },
    ]
    metrics = summary_metrics(samples)
    assert metrics["rouge1"] == pytest.approx(0.4)
    assert metrics["rouge2"] == pytest.approx(0.1)
    assert metrics["rougeL"] == pytest.approx(0.3)
    assert metrics["rouge_avg"] == pytest.approx(0.8 / 3)
    assert metrics["words"] == 3
    assert metrics["reward"] == pytest.approx(0.5)
    assert metrics["reward_delta"] == pytest.approx(((2 - 1) + (-1 - 0.5)) / 2)
    assert "reward" not in summary_metrics(
        [{k: v for k, v in samples[0].items() if "reward" not in k}]
    )


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("total", [1, 2, 5, 7, 8])
def test_shards_are_equal_and_merge_back_in_order(total: int, world: int):
    from rlhf_builtins.rouge.evaluator import merge_shards, shard_indices

    shards = [shard_indices(total, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    gathered = [{"index": i, "rank": rank} for rank, s in enumerate(shards) for i in s]
    merged = merge_shards(gathered)
    assert [m["index"] for m in merged] == list(range(total))


def test_evaluator_metrics_rewards_and_reports(tokenizer, prompts_dataset, stage):
    reward = WordCountReward()
    evaluator = rouge_evaluator(
        policies={
            "copy": CannedPolicy("copy-model", tokenizer, REFERENCES),
            "short": CannedPolicy("short-model", tokenizer, SHORT),
        },
        dataset=prompts_dataset,
        reward=reward,
        batch_size=2,
        num_samples_shown=2,
    )
    metrics = evaluator(stage)

    assert metrics["num_prompts"] == 3
    assert metrics["copy/rouge1"] == metrics["copy/rouge_avg"] == 1.0
    assert metrics["copy/reward"] == pytest.approx(11 / 3)  # 4, 3 and 4 words
    assert metrics["copy/reward_delta"] == 0
    assert metrics["reference/reward"] == pytest.approx(11 / 3)
    # "cat" vs 4 words: P 1, R 1/4, F 0.4; "dog" vs 3 words: F 0.5; "car" vs 4 words: F 0.4
    assert metrics["short/rouge1"] == pytest.approx(1.3 / 3)
    assert metrics["short/rouge2"] == 0
    assert metrics["short/rougeL"] == pytest.approx(1.3 / 3)
    assert metrics["short/rouge_avg"] == pytest.approx(2.6 / 9)
    assert metrics["short/reward"] == 1
    assert metrics["short/reward_delta"] == pytest.approx(1 - 11 / 3)
    assert metrics["short/words"] == 1
    direct = direct_rouge(SHORT, REFERENCES)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[f"short/{key}"] == pytest.approx(sum(d[key] for d in direct) / 3)

    # every dataset column but the prompt reaches the reward function, batch by batch
    assert all(set(c) == {"reference", "id"} for c in reward.columns)
    assert [c["id"] for c in reward.columns[:2]] == [["a", "b"], ["c"]]

    report = json.loads((stage.output_dir / "eval.json").read_text())
    assert list(report["policies"]) == ["copy", "short"]
    short = report["policies"]["short"]
    assert short["policy"] == "short-model"
    assert [s["generated"] for s in short["samples"]] == SHORT
    assert [s["reference"] for s in short["samples"]] == REFERENCES
    assert [s["rouge1"] for s in short["samples"]] == [d["rouge1"] for d in direct]
    assert [s["reward"] - s["reference_reward"] for s in short["samples"]] == [-3, -2, -3]
    assert short["metrics"]["reward_delta"] == metrics["short/reward_delta"]
    assert report["reference"]["reward"] == pytest.approx(11 / 3)

    table = (stage.output_dir / "eval.md").read_text()
    assert (
        "| Policy | Model | ROUGE-1 | ROUGE-2 | ROUGE-L | Average | Words | Mean reward | Reward Δ |"
        in table
    )
    assert "| copy | copy-model | 1.000 | 1.000 | 1.000 | 1.000 | 3.7 | 3.667 | +0.000 |" in table
    assert "| short | short-model | 0.433 | 0.000 | 0.433 | 0.289 | 1.0 | 1.000 | -2.667 |" in table
    assert "| reference summaries | - | - | - | - | - | 3.7 | 3.667 | +0.000 |" in table
    assert table.count("### Sample") == 2
    assert "- **short**: dog" in table

    logged = [json.loads(line) for line in stage.metrics_path.read_text().splitlines()]
    assert logged[0]["copy/rouge1"] == 1.0
    assert logged[-1]["reference/reward"] == pytest.approx(11 / 3)


def test_variants_become_rows(tokenizer, prompts_dataset, stage):
    sweep = SweepPolicy(
        {
            "beta=0": CannedPolicy("m", tokenizer, SHORT),
            "beta=1": CannedPolicy("m", tokenizer, REFERENCES),
        }
    )
    metrics = rouge_evaluator(
        policies={"ilql": sweep, "sft": CannedPolicy("m", tokenizer, SHORT)},
        dataset=prompts_dataset,
    )(stage)
    assert metrics["ilql[beta=1]/rouge1"] == 1.0
    assert metrics["ilql[beta=0]/rouge1"] == metrics["sft/rouge1"] == pytest.approx(1.3 / 3)
    assert "reference/reward" not in metrics and "sft/reward" not in metrics
    report = json.loads((stage.output_dir / "eval.json").read_text())
    assert list(report["policies"]) == ["ilql[beta=0]", "ilql[beta=1]", "sft"]
    table = (stage.output_dir / "eval.md").read_text()
    assert "| ilql[beta=1] | m | 1.000 |" in table and "Mean reward" not in table


def test_a_variant_that_is_not_a_policy_is_a_user_error(tokenizer, prompts_dataset, stage):
    sweep = SweepPolicy({"beta=1": object()})
    evaluator = rouge_evaluator(policies={"ilql": sweep}, dataset=prompts_dataset)
    with pytest.raises(UserError, match=r"policy 'ilql': variant 'beta=1' is not a Policy"):
        evaluator(stage)


def test_limit_keeps_the_first_rows(tokenizer, prompts_dataset, stage):
    metrics = rouge_evaluator(
        policies={"short": CannedPolicy("m", tokenizer, SHORT)},
        dataset=prompts_dataset,
        limit=2,
        num_samples_shown=0,
    )(stage)
    assert metrics["num_prompts"] == 2
    assert metrics["short/rouge1"] == pytest.approx((0.4 + 0.5) / 2)
    assert "## Samples" not in (stage.output_dir / "eval.md").read_text()


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (lambda prompts, completions, **_: [1.0], "returned 1 scores for 3 completions"),
        (lambda prompts, completions, **_: [float("nan")] * len(prompts), "NaN/inf"),
        (lambda prompts, completions, **_: ["0.5"] * len(prompts), "not numbers"),
    ],
)
def test_broken_reward_functions_fail_the_stage(tokenizer, prompts_dataset, stage, reward, message):
    evaluator = rouge_evaluator(
        policies={"s": CannedPolicy("m", tokenizer, SHORT)}, dataset=prompts_dataset, reward=reward
    )
    with pytest.raises(StageFailed, match=message):
        evaluator(stage)


def test_dataset_without_reference_is_a_user_error(tokenizer, stage):
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "completion": REFERENCES})
    evaluator = rouge_evaluator(policies={"s": CannedPolicy("m", tokenizer, SHORT)}, dataset=data)
    with pytest.raises(UserError, match=r"needs columns prompt, reference \(a 'prompts' view\)"):
        evaluator(stage)


def test_policy_labels_are_checked_together(prompts_dataset):
    with pytest.raises(UserError, match="labelled 'reference'"):
        rouge_evaluator(policies={"reference": object()}, dataset=prompts_dataset)
    with pytest.raises(UserError, match="'policies' is empty"):
        rouge_evaluator(policies={}, dataset=prompts_dataset)


TOY_REWARD_PLUGIN = '''
from rlhf_plugins import hookimpl


def words(prompts, completions, reference, **columns):
    """Reward: the number of generated words that also occur in the reference summary."""
    return [float(sum(w in ref.split() for w in c.split()))
            for c, ref in zip(completions, reference)]


@hookimpl
def register_reward_functions(register):
    register("shared-words", lambda: words)
'''

TINY_POLICIES = """
small = { use = "tiny-causal-lm", n_layer = 1, n_embd = 32, vocab_size = 400 }
neox = { use = "tiny-causal-lm", architecture = "gpt_neox", n_layer = 1, n_embd = 32, vocab_size = 400 }
"""


def eval_recipe(name: str, policies: str, limit: int, extra: str = "") -> str:
    """A one-stage recipe evaluating ``policies`` on ``limit`` rows of data.jsonl."""
    return f"""
[recipe]
name = "{name}"
seed = 3

[stages.eval]
evaluator = "rouge"
dataset = {{ use = "jsonl", path = "data.jsonl", columns = {{ prompt = "q", reference = "a" }} }}
evaluator_settings = {{ limit = {limit}, batch_size = 4, max_new_tokens = 6, do_sample = true, top_k = 20 }}
{extra}

[stages.eval.policies]
{policies}
"""


def assert_consistent_report(stage_dir: Path, policies: list[str], rows: int) -> dict:
    """eval.json's ROUGE equals rouge-score on its own samples; the state file has the metrics."""
    report = json.loads((stage_dir / "eval.json").read_text())
    assert list(report["policies"]) == policies
    for result in report["policies"].values():
        samples = result["samples"]
        assert [s["index"] for s in samples] == list(range(rows))
        direct = direct_rouge([s["generated"] for s in samples], [s["reference"] for s in samples])
        for key in ("rouge1", "rouge2", "rougeL"):
            assert result["metrics"][key] == pytest.approx(sum(d[key] for d in direct) / rows)
    state = json.loads((stage_dir / "stage_state.json").read_text())
    assert state["status"] == "finished"
    assert {f"{p}/rouge_avg" for p in policies} <= set(state["metrics"])
    return report


def test_recipe_with_tiny_policies_and_a_plugin_reward(
    run_cli, write_recipe, sft_jsonl, plugin_dist, tmp_path
):
    plugin_dist("toy-reward", "toy_reward_plugin", TOY_REWARD_PLUGIN)
    recipe = eval_recipe("evaldemo", TINY_POLICIES, 6, 'reward = { use = "shared-words" }')
    result = run_cli("run", write_recipe(recipe))
    assert result.exit_code == 0, result.output
    report = assert_consistent_report(tmp_path / "runs/evaldemo/eval", ["small", "neox"], 6)
    samples = report["policies"]["small"]["samples"]
    assert [s["reference_reward"] for s in samples] == [
        float(len(s["reference"].split())) for s in samples
    ]
    assert "small/rouge1=" in result.output


def tiny_checkpoint(directory: Path, texts: list[str]) -> Path:
    """A saved GPT-2-shaped model and tokenizer, as an SFT stage would leave them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_builtins.hf_policies.policies import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_two_processes_shard_and_gather(run_cli, write_recipe, sft_jsonl, tmp_path):
    rows = [json.loads(line) for line in sft_jsonl.read_text().splitlines()]
    tiny_checkpoint(tmp_path / "model", [r["q"] + r["a"] for r in rows[:100]])
    recipe = eval_recipe("evaldemo2", 'saved = { use = "hf-causal-lm", model = "model" }', 7)
    result = run_cli("run", write_recipe(recipe), "--num-processes", "2")
    assert result.exit_code == 0, result.output
    assert_consistent_report(tmp_path / "runs/evaldemo2/eval", ["saved"], 7)
