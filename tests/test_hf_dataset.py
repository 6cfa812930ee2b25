"""Dataset ``hf-dataset`` on TRL's standard sets as they are laid out, written here by hand
(nothing is downloaded): ``trl-lib/tldr`` (prompt/completion), ``trl-lib/tldr-preference``
(prompt/chosen/rejected), ``trl-lib/ultrafeedback_binarized`` (chosen/rejected as message lists,
no prompt column) and ``Anthropic/hh-rlhf`` (chosen/rejected as whole ``\\n\\nHuman: ...
\\n\\nAssistant: ...`` dialogues), each as the hub's files in a local folder and as a
``save_to_disk`` folder; column mapping, limit and shuffle; every error a user can cause."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf_plugins import UserError
from tests.conftest import build_component


def post(subreddit: str, title: str, body: str) -> str:
    return f"SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {body}\n\nTL;DR:"


PROMPTS = [
    post("dogs", "My dog (3) will not stop barking at night", "We moved to a flat in Leeds."),
    post("jobs", "Quit after two weeks?", "My new manager shouts at everyone, me included."),
    post("running", "First marathon in May", "I run 30 km a week and my knee hurts after 20 km."),
]
TLDR = {
    "train": [
        {"prompt": PROMPTS[0], "completion": " Dog barks every night since we moved."},
        {"prompt": PROMPTS[1], "completion": " Manager shouts, should I quit my new job?"},
    ],
    "validation": [{"prompt": PROMPTS[2], "completion": " Knee hurts, marathon in May."}],
}
TLDR_PREFERENCE = {
    "train": [
        {
            "prompt": PROMPTS[0],
            "chosen": " My dog barks at night since we moved to Leeds.",
            "rejected": " Dog.",
        },
        {
            "prompt": PROMPTS[1],
            "chosen": " New manager shouts at everyone; quit?",
            "rejected": " I have a job and a manager and I do not know what to do about it.",
        },
    ],
    "validation": [
        {"prompt": PROMPTS[2], "chosen": " Knee pain before a marathon.", "rejected": " Running"}
    ],
}


def turn(role: str, content: str) -> dict:
    return {"content": content, "role": role}


ULTRAFEEDBACK = {
    "train": [
        {
            "chosen": [turn("user", "Name a prime above 10."), turn("assistant", "11 is prime.")],
            "rejected": [turn("user", "Name a prime above 10."), turn("assistant", "12.")],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        },
        {
            "chosen": [
                turn("user", "Hi!"),
                turn("assistant", "Hello. How can I help?"),
                turn("user", "Say a colour."),
                turn("assistant", "Blue."),
            ],
            "rejected": [
                turn("user", "Hi!"),
                turn("assistant", "Hello. How can I help?"),
                turn("user", "Say a colour."),
                turn("assistant", "I cannot."),
            ],
            "score_chosen": 7.5,
            "score_rejected": 3.0,
        },
    ],
    "test": [
        {
            "chosen": [turn("user", "2 + 2?"), turn("assistant", "4")],
            "rejected": [turn("user", "2 + 2?"), turn("assistant", "5")],
            "score_chosen": 10.0,
            "score_rejected": 1.0,
        }
    ],
}
HH_DIALOGUE = "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure. What flour do you have?"
HH = {
    "train": [
        {
            "chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: How about Miso?",
            "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: How about Dog?",
        },
        {
            "chosen": HH_DIALOGUE + "\n\nHuman: Rye.\n\nAssistant: I would mix it with wheat.",
            "rejected": HH_DIALOGUE + "\n\nHuman: Rye.\n\nAssistant: I don't know.",
        },
    ],
    "test": [
        {
            "chosen": "\n\nHuman: Is the sun a star?\n\nAssistant: Yes, it is.",
            "rejected": "\n\nHuman: Is the sun a star?\n\nAssistant: No.",
        }
    ],
}


def write_parquet_layout(root: Path, splits: dict[str, list[dict]]) -> Path:
    """The hub's layout of trl-lib's sets: ``data/<split>-00000-of-00001.parquet``."""
    import datasets

    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        datasets.Dataset.from_list(rows).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def write_hh_layout(root: Path, splits: dict[str, list[dict]]) -> Path:
    """Anthropic/hh-rlhf's layout: ``<subset>/<split>.jsonl.gz`` per subset."""
    for subset in ("helpful-base", "harmless-base"):
        (root / subset).mkdir(parents=True)
        for split, rows in splits.items():
            kept = rows if subset == "helpful-base" else rows[:1]
            with gzip.open(root / subset / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in kept)
    return root


def write_saved(root: Path, splits: dict[str, list[dict]]) -> Path:
    import datasets

    datasets.DatasetDict(
        {split: datasets.Dataset.from_list(rows) for split, rows in splits.items()}
    ).save_to_disk(str(root))
    return root


SETS = {
    "tldr": (TLDR, write_parquet_layout),
    "tldr-preference": (TLDR_PREFERENCE, write_parquet_layout),
    "ultrafeedback_binarized": (ULTRAFEEDBACK, write_parquet_layout),
    "hh-rlhf": (HH, write_hh_layout),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    for name, (splits, write_files) in SETS.items():
        write_files(root / "files" / name, splits)
        write_saved(root / "saved" / name, splits)
    return root


def load(root: Path, path: str, seed: int = 0, **settings):
    """The built ``hf-dataset`` as a recipe beside ``root`` gets it, rows as dicts."""

    def local_path(value: str) -> Path | None:
        return root / value if (root / value).exists() else None

    stage = SimpleNamespace(seed=seed, local_path=local_path)
    data = build_component("dataset", "hf-dataset", stage=stage, path=path, **settings)
    return data.to_list()


def hh_split(text: str) -> tuple[str, str]:
    cut = text.rindex("\n\nAssistant:") + len("\n\nAssistant:")
    return text[:cut], text[cut:]


def expected(name: str, view: str, split: str) -> list[dict]:
    """The rows of ``view`` that each set's split gives, written out from the rows above."""
    rows = SETS[name][0][split]
    if name == "tldr":
        other = "completion" if view == "sft" else "reference"
        return [{"prompt": r["prompt"], other: r["completion"]} for r in rows]
    if name == "tldr-preference":
        pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    elif name == "ultrafeedback_binarized":
        pairs = []
        for r in rows:
            shared = len(r["chosen"]) - 1
            pairs.append((r["chosen"][:shared], r["chosen"][shared:], r["rejected"][shared:]))
    else:
        pairs = []
        for r in rows:
            prompt, chosen = hh_split(r["chosen"])
            pairs.append((prompt, chosen, hh_split(r["rejected"])[1]))
    if view == "comparisons":
        return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    if view == "offline":
        return [
            {"prompt": p, "completion": text, "reward": reward}
            for p, c, r in pairs
            for text, reward in ((c, 1.0), (r, -1.0))
        ]
    if view == "sft":
        return [{"prompt": p, "completion": c} for p, c, _ in pairs]
    text = [c if isinstance(c, str) else "\n\n".join(m["content"] for m in c) for _, c, _ in pairs]
    found = [{"prompt": p, "reference": t} for (p, _, _), t in zip(pairs, text, strict=True)]
    if name == "ultrafeedback_binarized":  # the other columns reach reward functions
        for row, source in zip(found, rows, strict=True):
            row.update(score_chosen=source["score_chosen"], score_rejected=source["score_rejected"])
    return found


VIEW_SPLITS = {
    "tldr": "sft/train prompts/validation",
    "tldr-preference": "comparisons/train offline/validation sft/train prompts/train",
    "ultrafeedback_binarized": "comparisons/train sft/test prompts/train offline/train",
    "hh-rlhf": "comparisons/train offline/test prompts/train",
}
"""Each standard set -> the ``view/split`` pairs read from it."""
CASES = [(name, *pair.split("/")) for name, pairs in VIEW_SPLITS.items() for pair in pairs.split()]


@pytest.mark.parametrize("layout", ["files", "saved"])
@pytest.mark.parametrize(("name", "view", "split"), CASES, ids=["-".join(c) for c in CASES])
def test_trl_standard_sets_as_laid_out(data_dir, layout, name, view, split):
    settings = {"data_dir": "helpful-base"} if name == "hh-rlhf" and layout == "files" else {}
    rows = load(data_dir, f"{layout}/{name}", view=view, split=split, **settings)
    assert rows == expected(name, view, split)


def test_the_shared_prompt_of_the_standard_layouts(data_dir):
    """Spelled out once: ultrafeedback's prompt is the first user turn (the later shared turns
    too in a longer dialogue); hh-rlhf's ends with the last shared ``Assistant:``, its answers
    start with the space after it."""
    ultra = load(data_dir, "saved/ultrafeedback_binarized", view="comparisons")
    assert ultra[0] == {
        "prompt": [turn("user", "Name a prime above 10.")],
        "chosen": [turn("assistant", "11 is prime.")],
        "rejected": [turn("assistant", "12.")],
    }
    assert [m["role"] for m in ultra[1]["prompt"]] == ["user", "assistant", "user"]
    hh = load(data_dir, "files/hh-rlhf", view="comparisons", data_dir="helpful-base")
    assert hh[0] == {
        "prompt": "\n\nHuman: What is a good name for a cat?\n\nAssistant:",
        "chosen": " How about Miso?",
        "rejected": " How about Dog?",
    }
    assert hh[1]["prompt"] == HH_DIALOGUE + "\n\nHuman: Rye.\n\nAssistant:"
    assert hh[1]["chosen"] == " I would mix it with wheat."
    everything = load(data_dir, "files/hh-rlhf", view="comparisons")
    assert len(everything) == 3, "without data_dir: every subset's train file"


def test_local_files_and_builders(data_dir, tmp_path):
    """A data file, a folder of split files and a builder with data_files beside the recipe."""
    pairs = TLDR_PREFERENCE["train"]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    want = expected("tldr-preference", "comparisons", "train")
    assert load(tmp_path, "pairs.jsonl", view="comparisons") == want
    found = load(tmp_path, "json", view="comparisons", data_files="pairs.jsonl")
    assert found == want, "data_files relative to the recipe"
    folder = tmp_path / "folder"
    folder.mkdir()
    for split, rows in ULTRAFEEDBACK.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversational = load(tmp_path, "folder", view="sft", split="test")
    assert conversational == expected("ultrafeedback_binarized", "sft", "test")


def test_column_mapping_limit_and_shuffle(data_dir, tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f" A{i}.", "score": i / 10} for i in range(20)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = {"prompt": "question", "completion": "answer", "reward": "score"}
    sft = load(tmp_path, "qa.jsonl", view="sft", columns=mapping, limit=3)
    assert sft == [{"prompt": f"Q{i}?", "completion": f" A{i}."} for i in range(3)]
    offline = load(tmp_path, "qa.jsonl", view="offline", columns=mapping, limit=2)
    assert offline[1] == {"prompt": "Q1?", "completion": " A1.", "reward": 0.1}
    shuffled = load(tmp_path, "qa.jsonl", seed=7, view="sft", columns=mapping, shuffle=True)
    again = load(tmp_path, "qa.jsonl", seed=7, view="sft", columns=mapping, shuffle=True)
    other = load(tmp_path, "qa.jsonl", seed=8, view="sft", columns=mapping, shuffle=True)
    assert shuffled == again != other, "the recipe seed decides the order"
    assert sorted(r["prompt"] for r in shuffled) == sorted(r["question"] for r in rows)
    pairs = load(data_dir, "saved/tldr-preference", view="offline", limit=1)
    assert len(pairs) == 2, "limit counts pairs; the offline view gives two rows each"
    labelled = [
        {"prompt": "P", "completion": " good", "label": True},
        {"prompt": "Q", "completion": " bad", "label": False},
    ]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    kto = load(tmp_path, "kto.jsonl", view="offline")
    assert [r["reward"] for r in kto] == [1.0, -1.0], "TRL's unpaired label: true +1, false -1"


def write_rows(tmp_path: Path, rows: list[dict], name: str = "rows.jsonl") -> str:
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return name


ERRORS = [
    (
        "files/tldr",
        {"view": "comparisons"},
        "files/tldr' (split 'train')",
        "view 'comparisons' needs chosen and rejected (and prompt; without it, the prompt is "
        "what they share); columns found: prompt, completion; map yours with the columns "
        'setting, e.g. columns = { prompt = "...", chosen = "...", rejected = "..." }',
    ),
    (
        "saved/hh-rlhf",
        {"view": "sft", "columns": {"prompt": "question"}},
        "saved/hh-rlhf (split 'train')",
        "no column 'question' (columns.prompt); columns found: chosen, rejected",
    ),
    (
        "saved/tldr-preference",
        {"view": "comparisons", "split": "valid"},
        "saved/tldr-preference has no split 'valid'",
        "did you mean 'validation'?",
    ),
    (
        "files/tldr",
        {"view": "sft", "split": "valid"},
        "could not load",
        "(split 'valid') with datasets.load_dataset",
    ),
    ("nope.jsonl", {"view": "sft"}, "'nope.jsonl': no such file or folder", "recipe file"),
    (
        "trl-lib/tldr",
        {"view": "sft"},
        "could not load 'trl-lib/tldr' (split 'train') with datasets.load_dataset",
        "no local file or folder has that name either",
    ),
    (
        "saved/tldr",
        {"view": "sft", "data_dir": "x"},
        "is a save_to_disk folder: leave out 'data_dir'",
        "",
    ),
]


@pytest.mark.parametrize(("path", "settings", "where", "message"), ERRORS)
def test_a_source_that_cannot_give_the_view_is_one_clear_error(
    data_dir, path, settings, where, message
):
    with pytest.raises(UserError) as error:
        load(data_dir, path, **settings)
    assert where in str(error.value) and message in str(error.value), str(error.value)


BAD_ROWS = [
    (
        [{"prompt": "P", "chosen": [turn("assistant", "a")], "rejected": [turn("assistant", "b")]}],
        "comparisons",
        "prompt is text, chosen is messages, rejected is messages; give them all as text or all "
        "as conversational messages",
    ),
    (
        [{"prompt": "P", "completion": " c"}, {"prompt": None, "completion": " d"}],
        "sft",
        "row 2: column 'prompt' is null",
    ),
    (
        [{"prompt": "P", "completion": 3}],
        "sft",
        "column 'completion' holds numbers, not text or a list of {role, content} messages",
    ),
    (
        [{"chosen": "Yes please", "rejected": "No"}],
        "comparisons",
        "row 1: chosen and rejected share no prompt (and there is no prompt column)",
    ),
    (
        [{"messages": [turn("user", "hi"), turn("assistant", "yo"), turn("user", "and?")]}],
        "sft",
        "row 1: 'messages' must end with an assistant turn after the prompt",
    ),
]


@pytest.mark.parametrize(("rows", "view", "message"), BAD_ROWS)
def test_bad_rows_are_named(tmp_path, rows, view, message):
    with pytest.raises(UserError) as error:
        load(tmp_path, write_rows(tmp_path, rows), view=view)
    assert message in str(error.value), str(error.value)


def test_messages_give_sft_and_prompts(tmp_path):
    chat = [
        turn("system", "Be brief."),
        turn("user", "Capital of France?"),
        turn("assistant", "Paris."),
    ]
    name = write_rows(tmp_path, [{"messages": chat, "topic": "geo"}])
    assert load(tmp_path, name, view="sft") == [{"prompt": chat[:2], "completion": chat[2:]}]
    assert load(tmp_path, name, view="prompts") == [
        {"prompt": chat[:2], "reference": "Paris.", "topic": "geo"}
    ]


SFT_RECIPE = """
[recipe]
name = "hub_sft"
seed = 3

[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm", architecture = "gpt2", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300 }
dataset = { use = "hf-dataset", path = "PATH", view = "VIEW", limit = 2 }
trainer_settings = { max_steps = 1, per_device_train_batch_size = 2 }
"""


def test_through_the_cli(run_cli, write_recipe, data_dir):
    """``rlhf validate`` checks the declared view against the trainer's; ``rlhf run`` trains
    on the hub layout of trl-lib/tldr."""
    recipe = SFT_RECIPE.replace("PATH", str(data_dir / "files" / "tldr"))
    wrong = run_cli("validate", write_recipe(recipe.replace("VIEW", "comparisons")))
    assert wrong.exit_code == 2
    assert "stages.sft.dataset.view: sft needs a 'sft' view here, got 'comparisons'" in wrong.output
    result = run_cli("run", write_recipe(recipe.replace("VIEW", "sft")))
    assert result.exit_code == 0, result.output
