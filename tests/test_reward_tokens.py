"""The token rows a reward model reads, on real-length rows: the whole text when it fits in
``max_length``, the last ``max_length`` tokens' rule when it does not, training and scoring
alike; separate prompt/completion tokenization; trlX checkpoints scored on trlX's text
(fixtures computed with trlX's own ``GPTRewardModel``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rlhf_plugins._engine.registry import load_registry
from rlhf_plugins._engine.stage_context import StageContext
from tests.conftest import build_component

WORDS = [
    "i",
    "my",
    "we",
    "he",
    "she",
    "they",
    "the",
    "a",
    "an",
    "and",
    "but",
    "so",
    "because",
    "then",
    "when",
    "after",
    "before",
    "work",
    "home",
    "friend",
    "family",
    "money",
    "time",
    "week",
    "year",
    "month",
    "day",
    "night",
    "car",
    "house",
    "job",
    "school",
    "boss",
    "girlfriend",
    "boyfriend",
    "dog",
    "cat",
    "told",
    "asked",
    "want",
    "need",
    "feel",
    "think",
    "know",
    "said",
    "help",
    "advice",
]
LAYOUT = "SUBREDDIT: r/{sub}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def written_rows(seed: int = 0) -> list[dict[str, str]]:
    """Comparison rows in the TL;DR layout whose posts run from 70 to 460 words (prompt +
    summary: 100 to 540 tokens of the tokenizer below); summaries of 5 to 50 words."""
    rng = random.Random(seed)
    rows = []
    for words in range(70, 461, 15):
        rows.append(
            {
                "prompt": LAYOUT.format(
                    sub="relationships", title=sentence(rng, 8), post=sentence(rng, words)
                ),
                "chosen": " " + sentence(rng, rng.randint(5, 50)),
                "rejected": " " + sentence(rng, rng.randint(5, 50)),
            }
        )
    return rows


def stage_with(root: Path, name: str, dataset: Dataset) -> StageContext:
    return StageContext(
        recipe_name="tokens",
        name=name,
        output_dir=root / name,
        seed=11,
        config={},
        components={"dataset": dataset},
    )


def tiny_policy(root: Path, name: str, dataset: Dataset, **shape):
    """The ``tiny-causal-lm`` policy, its tokenizer trained on ``dataset``."""
    return build_component(
        "policy", "tiny-causal-lm", stage=stage_with(root, name, dataset), **shape
    )


def save_reward_model(policy, directory: Path) -> Path:
    """A (random) reward model on ``policy``'s trunk with its tokenizer, as a stage saves it."""
    from rlhf_builtins.reward.models import load_reward_model

    tokenizer = policy.load_tokenizer()
    load_reward_model(policy, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def reward_head(**settings):
    return load_registry().get("reward_function", "gptj-reward-head").factory(**settings)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_rows(tokenizer, rows: list[dict[str, str]], max_length: int) -> int:
    """Assert the contract on every pair and on every single completion; return how many
    pairs fit whole."""
    from rlhf_builtins.reward.models import encode_groups

    columns = {
        k: tokenizer([r[k] for r in rows], add_special_tokens=False)["input_ids"]
        for k in ("prompt", "chosen", "rejected")
    }
    prompts = [r["prompt"] for r in rows]
    pairs = encode_groups(
        tokenizer, prompts, [(r["chosen"], r["rejected"]) for r in rows], max_length
    )
    singles = encode_groups(tokenizer, prompts, [(r["chosen"],) for r in rows], max_length)
    fitting = 0
    for prompt, chosen, rejected, (chosen_row, rejected_row), (single,) in zip(
        *columns.values(), pairs, singles, strict=True
    ):
        assert len(chosen) <= max_length and len(rejected) <= max_length
        # one completion: the whole text when it fits, else its last max_length tokens
        assert single == (prompt + chosen)[-max_length:]
        longer, longer_row, shorter, shorter_row = (
            (chosen, chosen_row, rejected, rejected_row)
            if len(chosen) >= len(rejected)
            else (rejected, rejected_row, chosen, chosen_row)
        )
        if len(prompt) + len(longer) <= max_length:
            fitting += 1
            assert chosen_row == prompt + chosen and rejected_row == prompt + rejected
        # the longer member follows the last-max_length rule, the shorter keeps the same prefix
        assert longer_row == (prompt + longer)[-max_length:]
        assert shorter_row == longer_row[: len(longer_row) - len(longer)] + shorter
    return fitting


@pytest.fixture(scope="module")
def written():
    return written_rows()


@pytest.fixture(scope="module")
def written_tokenizer(written, tmp_path_factory):
    policy = tiny_policy(
        tmp_path_factory.mktemp("written"), "tok", Dataset.from_list(written), vocab_size=600
    )
    return policy.load_tokenizer()


def test_written_rows_span_real_lengths(written, written_tokenizer):
    lengths = [
        len(ids(written_tokenizer, r["prompt"] + max(r["chosen"], r["rejected"], key=len)))
        for r in written
    ]
    assert 100 <= min(lengths) <= 130 and 500 <= max(lengths) <= 540


@pytest.mark.parametrize("max_length", [550, 300, 128])
def test_written_rows_keep_the_whole_text_or_its_last_tokens(
    written, written_tokenizer, max_length
):
    fitting = check_rows(written_tokenizer, written, max_length)
    if max_length == 550:
        assert fitting == len(written)  # every row fits: nothing may be dropped
    else:
        assert 0 < fitting < len(written)


def test_a_completion_longer_than_max_length_is_cut_from_the_right(written_tokenizer):
    from rlhf_builtins.reward.models import encode_groups

    completion = " " + " ".join(WORDS)
    tokens = ids(written_tokenizer, completion)
    [[row]] = encode_groups(written_tokenizer, ["POST: hi\nTL;DR:"], [(completion,)], 10)
    assert len(tokens) > 10 and row == tokens[:10]


def test_prompt_and_summary_are_tokenized_separately(written, written_tokenizer):
    """The TL;DR layout (summary after ``TL;DR:``, starting with one space) gives the ids of
    the joined text; a completion that continues a word does not, but still keeps the
    prompt's own ids as the common prefix of a pair."""
    from rlhf_builtins.reward.models import encode_groups

    for row in written:
        [[joined_row]] = encode_groups(written_tokenizer, [row["prompt"]], [(row["chosen"],)], 550)
        assert joined_row == ids(written_tokenizer, row["prompt"] + row["chosen"])
    prompt = "POST: my girlfriend and my fam"
    [rows] = encode_groups(written_tokenizer, [prompt], [("ily", "ily said")], 550)
    assert ids(written_tokenizer, prompt + "ily") != rows[0]
    assert all(
        r[: len(ids(written_tokenizer, prompt))] == ids(written_tokenizer, prompt) for r in rows
    )


@pytest.fixture
def real_rows(tldr_samples_dir):
    """The first 3000 real comparison pairs (about 500 posts)."""
    tldr = load_registry().get("dataset", "tldr").factory
    return tldr(source=str(tldr_samples_dir), view="comparisons", limit=3000)


@pytest.fixture
def real_tokenizer(real_rows, tmp_path):
    """A 16k BPE trained on the real rows: about GPT-2's token count for these posts."""
    policy = tiny_policy(
        tmp_path,
        "tok",
        real_rows,
        vocab_size=16384,
        tokenizer_samples=2000,
    )
    return policy.load_tokenizer()


def test_real_comparisons_keep_the_whole_text_or_its_last_tokens(real_rows, real_tokenizer):
    rows = real_rows.to_list()
    fitting = check_rows(real_tokenizer, rows, 550)
    assert fitting > 0.95 * len(rows)  # the real posts mostly fit: few may lose any token


def test_training_and_scoring_read_the_same_ids(written, tmp_path):
    """``gptj-reward-head`` scores a (prompt, completion) on the ids training uses for it:
    always when both members of the pair are that completion, and for every real pair that
    fits (a pair that does not fit loses the prompt tokens its longer member needs)."""
    from rlhf_builtins.reward.trainer import tokenize_comparisons

    policy = tiny_policy(tmp_path, "rm", Dataset.from_list(written), vocab_size=600, n_layer=1)
    directory = save_reward_model(policy, tmp_path / "saved")
    prompts = [r["prompt"] for r in written]
    for max_length in (550, 200):
        head = reward_head(path=str(directory), max_length=max_length)
        tokenizer = head.loaded[1]
        pairs = tokenize_comparisons(Dataset.from_list(written), tokenizer, max_length)
        fits = [
            len(ids(tokenizer, r["prompt"] + max(r["chosen"], r["rejected"], key=len)))
            <= max_length
            for r in written
        ]
        for column in ("chosen", "rejected"):
            completions = [r[column] for r in written]
            scored = head.encode(prompts, completions)
            alone = Dataset.from_dict(
                {"prompt": prompts, "chosen": completions, "rejected": completions}
            )
            assert tokenize_comparisons(alone, tokenizer, max_length)["chosen_ids"] == scored
            for trained, score_row, fit in zip(pairs[f"{column}_ids"], scored, fits, strict=True):
                assert trained == score_row or not fit
        assert any(fits) and (max_length == 550) == all(fits)


# ------------------------------------------------------------- trlX GPTRewardModel checkpoints

LEGACY_ROWS = [
    (
        "SUBREDDIT: r/cats\nTITLE: my cat\nPOST: my cat will not eat after the move\nTL;DR:",
        " cat sad",
    ),
    (
        "SUBREDDIT: r/jobs\nTITLE: boss\nPOST: my boss asked me to work every night\nTL;DR:",
        " boss bad",
    ),
    ("POST: we moved to a new house and the dog is scared of the stairs\nTL;DR:", " dog scared"),
    ("POST: " + "my friend told me she needs help with money " * 8 + "\nTL;DR:", " friend money"),
]
"""Prompt and completion pairs; the last one is longer than ``LEGACY_MAX_LENGTH`` tokens."""
LEGACY_MAX_LENGTH = 64
TRLX_SCORES = [-5.217425346, -7.086172104, -2.604928493, -2.095913649]
"""trlX's own ``GPTRewardModel`` (examples/summarize_rlhf/reward_model/reward_model.py) and the
``get_scores`` of trlx_gptj_text_summarization.py, run outside this project on the toy below
(its tokenizer standing in for GPT-J's, pad = EOS, seq_length = ``LEGACY_MAX_LENGTH``)."""


def fill(tensor: torch.Tensor, phase: float, scale: float, offset: float = 0.0) -> None:
    """Deterministic weights that do not depend on torch's random generator."""
    values = torch.arange(tensor.numel(), dtype=torch.float64) * 0.61803 + phase
    tensor.copy_((offset + scale * torch.sin(values)).reshape(tensor.shape))


@torch.no_grad()
def legacy_toy(root: Path) -> tuple[Path, Path]:
    """``(base_model, checkpoint)``: a tiny GPT-J trunk saved as a causal LM with its
    tokenizer (trained on ``LEGACY_ROWS``), and a trlX-style ``pytorch_model.bin``
    (``transformer.*`` + ``v_head.weight``) of the same trunk."""
    rows = Dataset.from_dict(
        {"prompt": [p for p, _ in LEGACY_ROWS], "completion": [c for _, c in LEGACY_ROWS]}
    )
    policy = tiny_policy(
        root, "trunk", rows, n_layer=2, n_embd=32, n_head=4, vocab_size=320, max_positions=128
    )
    model = policy.load_model()
    for index, (name, parameter) in enumerate(model.named_parameters()):
        norm = name.endswith(("ln_1.weight", "ln_f.weight"))
        fill(parameter, phase=index, scale=0.1 if norm else 0.3, offset=1.0 if norm else 0.0)
    base = root / "base"
    model.save_pretrained(base)
    policy.load_tokenizer().save_pretrained(base)
    head = torch.empty(1, 32)
    fill(head, phase=0.5, scale=1.0)
    state = {f"transformer.{k}": v for k, v in model.transformer.state_dict().items()}
    state["v_head.weight"] = head
    checkpoint = root / "rm_checkpoint"
    checkpoint.mkdir()
    torch.save(state, checkpoint / "pytorch_model.bin")
    return base, checkpoint


def test_a_trlx_checkpoint_scores_as_trlx_did(tmp_path):
    """trlX's text: ``<|startoftext|>`` + prompt + completion + ``<|endoftext|>`` as one string,
    cut from the right, scored before the EOS (rows 2 and 4: exactly ``LEGACY_MAX_LENGTH``
    tokens with the EOS, and longer than that); the imported directory, scored as a model of
    this package, reads other text and gives other scores."""
    from rlhf_builtins.reward.legacy import import_trlx_checkpoint

    base, checkpoint = legacy_toy(tmp_path)
    prompts, completions = [p for p, _ in LEGACY_ROWS], [c for _, c in LEGACY_ROWS]
    legacy = reward_head(path=str(checkpoint), base_model=str(base), max_length=LEGACY_MAX_LENGTH)
    assert legacy(prompts, completions) == pytest.approx(TRLX_SCORES, abs=1e-5)
    tokenizer = legacy.loaded[1]
    texts = [f"<|startoftext|>{p}{c}<|endoftext|>" for p, c in LEGACY_ROWS]
    full = [ids(tokenizer, text) for text in texts]
    assert [len(row) for row in full][1] == LEGACY_MAX_LENGTH < len(full[3])
    # the whole text without its EOS when it fits, else its first LEGACY_MAX_LENGTH tokens
    assert legacy.encode(prompts, completions) == [
        row[:-1] if len(row) <= LEGACY_MAX_LENGTH else row[:LEGACY_MAX_LENGTH] for row in full
    ]
    converted = import_trlx_checkpoint(str(checkpoint), str(base), tmp_path / "converted")
    native = reward_head(path=str(converted), max_length=LEGACY_MAX_LENGTH)(prompts, completions)
    assert all(abs(n - t) > 1e-3 for n, t in zip(native, TRLX_SCORES, strict=True))
