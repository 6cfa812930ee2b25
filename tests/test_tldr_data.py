"""The ``tldr`` and ``tldr-synthetic`` datasets through their registered factories and recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlhf_plugins import StageContext
from rlhf_plugins._engine.registry import load_registry

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


SENTENCE_OPENINGS = {"I", "My", "After", "Started", "Rented", "Lent"}


def summary_defects(prompt: str, summary: str) -> set[str]:
    """Which of the generator's defects a summary shows, judged from the text alone."""
    words = summary.split()
    post_words = set(re.findall(r"[\w$]+", prompt))
    facts = [w for w in re.findall(r"[\w$]+", summary) if w[0].isupper() or w[-1].isdigit()]
    durations = re.findall(r"\d+ (?:days|weeks|months|years)", summary)
    found = set()
    if any(f not in post_words and f not in SENTENCE_OPENINGS for f in facts) or any(
        d not in prompt for d in durations
    ):
        found.add("wrong_fact")
    if len(words) >= 30:
        found.add("ramble")
    if not summary.endswith("."):
        found.add("cut_off")
    return found


def test_synthetic_pairs_are_faithful_versus_defective():
    data = factory("tldr-synthetic")(view="comparisons", split="valid", num_examples=300)
    shown = set()
    for row in data:
        assert summary_defects(row["prompt"], row["chosen"]) == set()
        assert 8 <= len(row["chosen"].split()) <= 20
        assert 40 <= len(row["prompt"].split()) <= 90
        defects = summary_defects(row["prompt"], row["rejected"])
        assert defects, row
        shown |= defects
    assert shown == {"wrong_fact", "ramble", "cut_off"}
    vocabulary = {w for row in data for text in row.values() for w in text.split()}
    assert len(vocabulary) < 700


# ---------------------------------------------------------------- tldr: input shapes

POSTS = [
    {
        "id": f"t3_{i}",
        "subreddit": "relationships",
        "title": f"Title number {i}",
        "post": f"My friend number {i} borrowed my car for {i + 2} weeks and never said thanks.",
        "summary": f" Friend {i} kept my car for {i + 2} weeks.",
    }
    for i in range(6)
]


def Seeded(seed: int) -> StageContext:
    """A running stage with the recipe seed ``seed`` (no recipe directory)."""
    return StageContext(
        recipe_name="data", name="data", output_dir=Path("unused"), seed=seed, config={}
    )


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def openai_comparison(i: int, choice: int, split: str = "train", **info):
    summaries = [
        f" Friend {i} kept my car for weeks and I am upset.",
        f" I lent a car to friend {i} and got no thanks at all.",
    ]
    return {
        "info": {
            "id": f"t3_{i}",
            "post": POSTS[i]["post"],
            "title": POSTS[i]["title"],
            "subreddit": "relationships",
            **info,
        },
        "summaries": [{"text": t, "policy": "ref", "note": None} for t in summaries],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
        "split": split,
        "extra": {},
    }


def carper_prompt(row) -> str:
    return f"SUBREDDIT: r/{row['subreddit']}\nTITLE: {row['title']}\nPOST: {row['post']}\nTL;DR: "


def test_openai_tldr_filtered_directory_by_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", POSTS[:4])
    write_jsonl(tmp_path / "valid.jsonl", POSTS[4:])
    data = factory("tldr")(source=str(tmp_path), split="valid", view="prompts")
    assert data.column_names == ["prompt", "reference"]
    assert data[0] == {
        "prompt": f"SUBREDDIT: r/relationships\nTITLE: Title number 4\nPOST: {POSTS[4]['post']}"
        "\nTL;DR:",
        "reference": " Friend 4 kept my car for 6 weeks.",
    }
    assert len(factory("tldr")(source=str(tmp_path / "train.jsonl"))) == 4
    (tmp_path / "array.json").write_text(json.dumps(POSTS))
    as_array = factory("tldr")(source=str(tmp_path / "array.json"), view="prompts")
    assert as_array[4] == data[0]


def test_openai_comparison_batches(tmp_path):
    rows = [
        openai_comparison(0, 0),
        openai_comparison(1, 1),
        openai_comparison(2, 0, "valid1"),
        {**openai_comparison(3, 0), "info": {"id": "cnn", "article": "News text", "site": "cnn"}},
    ]
    write_jsonl(tmp_path / "comparisons" / "batch3.json", rows)
    data = factory("tldr")(source=str(tmp_path / "comparisons"), view="comparisons", split="train")
    assert data["chosen"] == [
        " Friend 0 kept my car for weeks and I am upset.",
        " I lent a car to friend 1 and got no thanks at all.",
    ]
    assert data["rejected"][1] == " Friend 1 kept my car for weeks and I am upset."
    everything = factory("tldr")(
        source=str(tmp_path / "comparisons" / "batch3.json"), view="comparisons"
    )
    assert len(everything) == 3  # the CNN/DM row has no Reddit post


@pytest.fixture
def carper_hub(monkeypatch):
    """``datasets.load_dataset`` answering CarperAI's two hub ids with their column layout."""
    import datasets

    tldr = datasets.Dataset.from_dict(
        {
            "prompt": [carper_prompt(r) for r in POSTS],
            "label": [r["summary"].strip() for r in POSTS],
        }
    )
    comparisons = datasets.Dataset.from_dict(
        {
            "prompt": [carper_prompt(r).rstrip() for r in POSTS],
            "chosen": [f"TL;DR: Friend {i} kept my car and said nothing." for i in range(6)],
            "rejected": [f"TL;DR: Someone {i} borrowed a car, whatever." for i in range(6)],
        }
    )
    hub = {
        "CarperAI/openai_summarize_tldr": {"train": tldr, "valid": tldr, "test": tldr},
        "CarperAI/openai_summarize_comparisons": {"train": comparisons, "valid1": comparisons},
    }
    calls = []

    def load_dataset(path, *args, **kwargs):
        calls.append(path)
        if path not in hub:
            raise FileNotFoundError(f"Couldn't find dataset {path} on the Hub (offline)")
        return datasets.DatasetDict(hub[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_carper_hub_defaults_per_view(carper_hub):
    sft = factory("tldr")(view="sft")
    assert carper_hub == ["CarperAI/openai_summarize_tldr"]
    assert sft[0]["prompt"] == carper_prompt(POSTS[0]).rstrip()
    assert sft[0]["completion"] == " Friend 0 kept my car for 2 weeks."
    pairs = factory("tldr")(view="comparisons")
    assert carper_hub[-1] == "CarperAI/openai_summarize_comparisons"
    assert pairs[0]["chosen"] == " Friend 0 kept my car and said nothing."
    assert pairs[0]["rejected"] == " Someone 0 borrowed a car, whatever."


def test_carper_hub_errors(carper_hub):
    from rlhf_plugins import UserError

    with pytest.raises(UserError, match="no split 'valid'; did you mean 'valid1'"):
        factory("tldr")(view="comparisons", split="valid")
    with pytest.raises(UserError, match="could not load dataset 'someone/missing'"):
        factory("tldr")(source="someone/missing")


def test_local_hub_shaped_folder_and_saved_dataset(tmp_path):
    import datasets

    rows = {"prompt": [carper_prompt(r) for r in POSTS], "label": [r["summary"] for r in POSTS]}
    table = datasets.Dataset.from_dict(rows)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet"))
    (tmp_path / "hub" / "dataset_infos.json").write_text("{}\n")
    from_folder = factory("tldr")(source=str(tmp_path / "hub"), split="test")
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    from_saved = factory("tldr")(source=str(tmp_path / "saved"), split="test")
    table.save_to_disk(str(tmp_path / "one"))
    from_one = factory("tldr")(source=str(tmp_path / "one"))
    assert from_folder.to_dict() == from_saved.to_dict() == from_one.to_dict()
    assert from_folder["completion"][5] == " Friend 5 kept my car for 7 weeks."


# ---------------------------------------------------------------- tldr: real samples


def test_real_samples_every_view(tldr_samples_dir):
    make = factory("tldr")
    sft = make(source=str(tldr_samples_dir), view="sft", limit=50)
    prompts = make(source=str(tldr_samples_dir / "tldr_filtered.jsonl"), view="prompts", limit=5)
    pairs = make(source=str(tldr_samples_dir), view="comparisons")
    offline = make(source=str(tldr_samples_dir), view="offline", limit=10)
    assert len(sft) == 50 and len(prompts) == 5 and len(offline) == 20
    assert 9900 < len(pairs) < 10_000  # a few identical or short pairs are filtered out
    for row in sft:
        assert re.match(PROMPT_LAYOUT, row["prompt"], re.DOTALL)
        assert row["completion"].startswith(" ") and row["completion"].strip()
    first = json.loads((tldr_samples_dir / "tldr_filtered.jsonl").open().readline())
    assert sft[0]["completion"] == " " + first["summary"].strip()
    assert sft[0]["prompt"] == carper_prompt({**first, "post": first["post"].strip()}).rstrip()


# ---------------------------------------------------------------- filters, views, selection


def test_comparison_filters(tmp_path):
    rows = [
        {
            "post": "p one",
            "chosen": "a good long summary here",
            "rejected": "another long summary right here",
        },
        {
            "post": "p two",
            "chosen": "same words in both summaries",
            "rejected": " same words in both summaries",
        },
        {"post": "p three", "chosen": "too short", "rejected": "a long enough rejected summary"},
        {"post": "p four", "chosen": "a long enough chosen summary", "rejected": "short one"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kept = factory("tldr")(source=str(path), view="comparisons")
    assert kept["prompt"] == ["SUBREDDIT: r/\nTITLE: \nPOST: p one\nTL;DR:"]
    loose = factory("tldr")(source=str(path), view="comparisons", min_summary_words=0)
    assert len(loose) == 3  # identical summaries are dropped whatever the word count


def test_shuffle_uses_recipe_seed_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "posts.jsonl", POSTS)
    make = factory("tldr")
    plain = make(source=str(path), limit=3)["prompt"]
    first = make(source=str(path), shuffle=True, stage=Seeded(1))["prompt"]
    again = make(source=str(path), shuffle=True, stage=Seeded(1))["prompt"]
    other = make(source=str(path), shuffle=True, stage=Seeded(2))["prompt"]
    assert plain == make(source=str(path))["prompt"][:3]
    assert first == again and first != other and sorted(first) == sorted(other)
    assert make(source=str(path), shuffle=True, stage=Seeded(1), limit=2)["prompt"] == first[:2]


# ---------------------------------------------------------------- truncation


def test_word_truncation_hand_computed(tmp_path):
    row = {"subreddit": "x", "title": "t u", "post": "a b c d e f", "summary": "s"}
    path = write_jsonl(tmp_path / "one.jsonl", [row])
    # 12 words before the suffix + 1 for "TL;DR:" = 13; 10 allowed -> keep 9 words of the head.
    cut = factory("tldr")(source=str(path), max_prompt_tokens=10)["prompt"][0]
    assert cut == "SUBREDDIT: r/x\nTITLE: t u\nPOST: a b c\nTL;DR:"
    whole = factory("tldr")(source=str(path), max_prompt_tokens=13)["prompt"][0]
    assert whole == "SUBREDDIT: r/x\nTITLE: t u\nPOST: a b c d e f\nTL;DR:"


def test_token_truncation_keeps_suffix(tmp_path):
    from rlhf_builtins.hf_policies.policies import train_tokenizer

    texts = [carper_prompt(r) + r["summary"] for r in POSTS] * 5
    tokenizer = train_tokenizer(texts, vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    path = write_jsonl(tmp_path / "posts.jsonl", POSTS)
    full = factory("tldr")(source=str(path))["prompt"]
    for limit in (12, 25, 40):
        cut = factory("tldr")(
            source=str(path), max_prompt_tokens=limit, tokenizer=str(tmp_path / "tok")
        )["prompt"]
        for short, long in zip(cut, full, strict=True):
            assert short.endswith("\nTL;DR:")
            assert len(tokenizer(short, add_special_tokens=False)["input_ids"]) <= limit
            assert long.startswith(short.removesuffix("\nTL;DR:"))
            if len(tokenizer(long, add_special_tokens=False)["input_ids"]) <= limit:
                assert short == long


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("source", "settings", "message"),
    [
        ("missing.jsonl", {}, "no such file or directory"),
        ("weird.jsonl", {}, "unknown TL;DR format with keys a, b"),
        ("posts.jsonl", {"view": "comparisons"}, "view 'comparisons' needs a comparisons source"),
        ("pairs.jsonl", {"view": "sft"}, "view 'sft' needs a source with reference summaries"),
        ("posts.jsonl", {"split": "train"}, "has no splits; leave out 'split'"),
        ("posts.jsonl", {"max_prompt_tokens": 1}, "leaves no room"),
        (".", {"view": "comparisons"}, "holds summaries but no comparisons"),
        ("bad.jsonl", {}, "bad.jsonl: line 3 is not JSON (Expecting property name"),
        ("latin1.jsonl", {}, "not UTF-8 text"),
        ("null.jsonl", {}, "null.jsonl: line 3: column 'summary' is null, not text"),
        ("number.jsonl", {}, "number.jsonl: line 1: column 'post' is int 7, not text"),
        ("empty.jsonl", {}, "empty.jsonl: the file is empty"),
    ],
)
def test_user_errors(tmp_path, monkeypatch, source, settings, message):
    from rlhf_plugins import UserError

    write_jsonl(tmp_path / "posts.jsonl", POSTS)
    write_jsonl(tmp_path / "weird.jsonl", [{"a": 1, "b": 2}])
    (tmp_path / "bad.jsonl").write_text('\n{"post": "p", "summary": "s"}\n{not json\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"post": "caf\xe9", "summary": "s"}\n')
    (tmp_path / "null.jsonl").write_text(
        '{"post": "p", "summary": "s"}\n\n{"post": "p", "summary": null}\n'
    )
    write_jsonl(tmp_path / "number.jsonl", [{"post": 7, "summary": "s"}])
    (tmp_path / "empty.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    pairs = write_jsonl(
        tmp_path / "sub" / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    )
    source = str(pairs) if source == "pairs.jsonl" else source
    if source == ".":
        for name in ("bad", "weird", "latin1", "null", "number", "empty"):
            (tmp_path / f"{name}.jsonl").unlink()
    with pytest.raises(UserError, match=re.escape(message)):
        factory("tldr")(source=source, **settings)


# ---------------------------------------------------------------- recipes


RECIPE = """
[recipe]
name = "tldr_check"

[stages.sft]
trainer = "sft"
policy = {{ use = "tiny-causal-lm" }}
dataset = {{ use = "{dataset}", view = "{view}" }}
"""


def test_recipe_validation_suggests_view(run_cli, write_recipe):
    for dataset in ("tldr", "tldr-synthetic"):
        ok = run_cli("validate", write_recipe(RECIPE.format(dataset=dataset, view="sft")))
        assert ok.exit_code == 0, ok.output
        bad = run_cli("validate", write_recipe(RECIPE.format(dataset=dataset, view="comparison")))
        assert bad.exit_code == 2
        assert "stages.sft.dataset.view" in bad.output
        assert "did you mean 'comparisons'?" in bad.output
