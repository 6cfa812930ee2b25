"""The rouge evaluator's KL column: each policy's KL to a reference policy along its own
completions, checked against a direct computation and through a recipe."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_rouge import eval_recipe, tiny_checkpoint


@pytest.fixture
def checkpoints(sft_jsonl, tmp_path):
    rows = [json.loads(line) for line in sft_jsonl.read_text().splitlines()]
    texts = [r["q"] + r["a"] for r in rows[:100]]
    first = tiny_checkpoint(tmp_path / "model", texts)
    second = tiny_checkpoint(tmp_path / "other", texts)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(second)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(second)
    return first, second


def test_completion_kl_equals_the_kl_of_the_next_token_distributions(checkpoints):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_builtins.rouge.kl import completion_kl

    first, second = checkpoints
    tokenizer = AutoTokenizer.from_pretrained(first)
    p = AutoModelForCausalLM.from_pretrained(first).eval()
    q = AutoModelForCausalLM.from_pretrained(second).eval()
    prompts, completions = (
        ["POST: anna is 20 and lost a cat.\nTL;DR:", "POST: bob"],
        [" anna lost cat.", " bob (3)"],
    )
    found = completion_kl(
        p, q, tokenizer, prompts, completions, batch_size=2, max_prompt_length=None
    )
    for (kl, tokens), prompt, completion in zip(found, prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_p = p(torch.tensor([ids])).logits[0].log_softmax(-1)
            log_q = q(torch.tensor([ids])).logits[0].log_softmax(-1)
        positions = range(len(prompt_ids) - 1, len(ids) - 1)
        direct = sum(
            torch.nn.functional.kl_div(log_q[t], log_p[t], log_target=True, reduction="sum").item()
            for t in positions
        )
        assert tokens == len(ids) - len(prompt_ids)
        assert kl == pytest.approx(direct, rel=1e-4)
    assert completion_kl(
        p, p, tokenizer, prompts, completions, batch_size=2, max_prompt_length=None
    )[0][0] == pytest.approx(0.0, abs=1e-6)


def test_the_table_reports_kl_to_the_reference(run_cli, write_recipe, checkpoints, tmp_path):
    policies = 'same = { use = "hf-causal-lm", model = "model" }\nother = { use = "hf-causal-lm", model = "other" }'
    extra = 'reference = { use = "hf-causal-lm", model = "model" }'
    result = run_cli("run", write_recipe(eval_recipe("kl", policies, 6, extra)))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "kl" / "eval" / "eval.json").read_text())
    same, other = (report["policies"][label]["metrics"] for label in ("same", "other"))
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert other["kl"] > 0.01 and other["kl_per_token"] > 0
    table = (tmp_path / "runs" / "kl" / "eval" / "eval.md").read_text()
    assert "| KL | KL/token |" in table
