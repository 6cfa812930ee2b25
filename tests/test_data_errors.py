"""Bad data and bad files end as one line naming the file, line or row and column (exit 2),
never a traceback: ``jsonl`` and ``tldr`` datasets, and a legacy trlX ``.bin`` that pickles
more than tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SFT_RECIPE = """
[recipe]
name = "bad_data"

[stages.sft]
trainer = "sft"
policy = {{ use = "tiny-causal-lm", architecture = "gpt2", n_layer = 1, n_embd = 32, n_head = 2, vocab_size = 300 }}
dataset = {dataset}
trainer_settings = {{ max_steps = 1, per_device_train_batch_size = 2 }}
"""
JSONL = '{ use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }'
TLDR = '{ use = "tldr", source = "data.jsonl" }'


def rows(count: int = 6) -> list[dict]:
    return [{"q": f"POST: story {i}\nTL;DR:", "a": f" summary {i}"} for i in range(count)]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(("value", "got"), [(None, "null"), (3, "int 3"), (["a"], "list ['a']")])
def test_a_jsonl_completion_that_is_not_text_names_file_line_and_column(
    run_cli, write_recipe, tmp_path, value, got
):
    data = rows()
    data[3]["a"] = value
    write_lines(tmp_path / "data.jsonl", [json.dumps(data[0]), "", *map(json.dumps, data[1:])])
    result = run_cli("run", write_recipe(SFT_RECIPE.format(dataset=JSONL)))
    # row 4 is on line 5: the blank line 2 is no row
    assert_one_line_error(
        result,
        2,
        f"{tmp_path / 'data.jsonl'}: line 5: column 'a' (the completion column) is {got}, not text",
    )


def test_a_malformed_jsonl_line_is_named(run_cli, write_recipe, tmp_path):
    lines = [json.dumps(r) for r in rows()]
    lines[2] = '{"q": "POST: x", "a": oops}'
    write_lines(tmp_path / "data.jsonl", lines)
    result = run_cli("run", write_recipe(SFT_RECIPE.format(dataset=JSONL)))
    assert_one_line_error(result, 2, "data.jsonl: line 3 is not valid JSON")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_empty_jsonl_file_is_called_empty(run_cli, write_recipe, tmp_path, content):
    (tmp_path / "data.jsonl").write_text(content)
    result = run_cli("run", write_recipe(SFT_RECIPE.format(dataset=JSONL)))
    assert_one_line_error(result, 2, "data.jsonl: the file is empty")


def test_a_non_numeric_reward_is_named(run_cli, write_recipe, tmp_path):
    data = [{"prompt": "p", "completion": " c", "reward": 1.0} for _ in range(4)]
    data[1]["reward"] = "0.5"
    write_lines(tmp_path / "data.jsonl", [json.dumps(r) for r in data])
    dataset = '{ use = "jsonl", path = "data.jsonl" }'
    result = run_cli("run", write_recipe(SFT_RECIPE.format(dataset=dataset)))
    assert_one_line_error(result, 2, "data.jsonl: line 2: column 'reward' is str '0.5'")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"post": "p", "summary": "s"}', '{"post": "p", "summary": null}'],
            "line 2: column 'summary' is null, not text",
        ),
        (['{"post": "p", "summary": "s"}', "", "{oops"], "line 3 is not JSON"),
        ([], "the file is empty"),
    ],
)
def test_tldr_files_name_the_line_and_column(run_cli, write_recipe, tmp_path, lines, message):
    write_lines(tmp_path / "data.jsonl", lines)
    result = run_cli("run", write_recipe(SFT_RECIPE.format(dataset=TLDR)))
    assert_one_line_error(result, 2, f"{tmp_path / 'data.jsonl'}: {message}")


class RunsCode:
    """Pickles as a call of ``print``: what a malicious checkpoint would do with ``os.system``."""

    def __reduce__(self):
        return (print, ("this ran while unpickling",))


EVAL_RECIPE = """
[recipe]
name = "legacy"

[stages.eval]
evaluator = "rouge"
policies = { base = { use = "hf-causal-lm", model = "base" } }
dataset = { use = "jsonl", path = "prompts.jsonl" }
reward = { use = "gptj-reward-head", path = "trlx", base_model = "base" }
evaluator_settings = { max_new_tokens = 2 }
"""


def test_a_legacy_bin_that_pickles_code_is_refused(run_cli, write_recipe, tmp_path, capfd):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_builtins.hf_policies.policies import train_tokenizer

    tokenizer = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=280)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "trlx").mkdir()
    state = {"v_head.weight": torch.zeros(1, 16), "extra": RunsCode()}
    torch.save(state, tmp_path / "trlx" / "pytorch_model.bin")
    write_lines(
        tmp_path / "prompts.jsonl", [json.dumps({"prompt": "the cat", "reference": " sat"})] * 2
    )
    result = run_cli("run", write_recipe(EVAL_RECIPE))
    assert_one_line_error(
        result,
        2,
        f"{tmp_path / 'trlx' / 'pytorch_model.bin'}: refused",
        "(it references print)",
        "could run arbitrary code",
        "no recipe setting turns this check off",
    )
    assert "this ran while unpickling" not in capfd.readouterr().out
