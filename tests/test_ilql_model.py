"""ILQL heads on tiny causal LMs: the trunk path, saving and reloading, Q-guided decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf_builtins.hf_policies.policies import PretrainedPolicy, _config, train_tokenizer
from rlhf_builtins.ilql import ilql_policy
from rlhf_builtins.ilql.batches import Episode, collate
from rlhf_builtins.ilql.models import ILQLModel, heads_for, save_ilql_model
from rlhf_builtins.ilql.policy import ILQLPolicy
from rlhf_plugins import UserError
from rlhf_plugins._engine.generation import SamplingSettings, generate_texts

TEXTS = [
    f"POST: {n} lost a {t}.\nTL;DR: {n} lost {t}."
    for n in ("ann", "bob", "cy")
    for t in ("cat", "dog", "key")
]
PROMPTS = ["POST: ann lost a cat.\nTL;DR:", "POST: bob lost a dog and more.\nTL;DR:"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=120)


def tiny_lm(tokenizer, architecture: str = "gptj", n_layer: int = 1):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _config(
        architecture,
        len(tokenizer),
        n_layer=n_layer,
        n_embd=32,
        n_head=4,
        positions=64,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory) -> Path:
    """A saved ILQL model whose heads are random (as after a few steps of training)."""
    directory = tmp_path_factory.mktemp("ilql")
    model = ILQLModel(tiny_lm(tokenizer), heads_for(tiny_lm(tokenizer), two_qs=True))
    for head in model.heads.target_q_heads:
        torch.nn.init.normal_(head[2].weight, std=0.5)
    save_ilql_model(directory, model)
    tokenizer.save_pretrained(directory)
    return directory


def padded_batch(tokenizer) -> dict[str, torch.Tensor]:
    rows = []
    for prompt, completion in (
        ("POST: ann lost a cat.\nTL;DR:", " ann lost cat."),
        ("POST: cy.\nTL;DR:", " cy lost a key and a dog."),
    ):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(Episode(tokens=p + c, prompt_length=len(p), reward=1.0))
    return collate(rows, tokenizer.pad_token_id)


@pytest.mark.parametrize("architecture", ["gptj", "gpt2", "gpt_neox"])
def test_lm_logprobs_at_the_states_are_the_causal_lms(tokenizer, architecture):
    base = tiny_lm(tokenizer, architecture)
    model = ILQLModel(base, heads_for(base, two_qs=False)).eval()
    batch = padded_batch(tokenizer)
    with torch.no_grad():
        outputs = model(
            batch["input_ids"], batch["attention_mask"], batch["state_indices"], batch["actions"]
        )
        full = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["terminal"][:, :-1] == 0
    positions = batch["state_indices"][:, :-1]
    expected = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    logprobs = expected.float().log_softmax(-1).gather(-1, batch["actions"].unsqueeze(-1))
    assert torch.allclose(outputs.lm_logprobs[real], logprobs.squeeze(-1)[real], atol=1e-5)
    assert outputs.values.shape == batch["state_indices"].shape
    assert outputs.target_q.shape == outputs.lm_logprobs.shape == batch["actions"].shape
    assert len(outputs.q_taken) == len(outputs.q_logprobs) == 1
    # Q at the taken actions and their log-probabilities under softmax(Q): the full Q's
    with torch.no_grad():
        states = model.base.base_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        q = model.heads.q_heads[0](
            states.gather(1, positions.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
        )
    taken = batch["actions"].unsqueeze(-1)
    torch.testing.assert_close(
        outputs.q_taken[0], q.gather(-1, taken).squeeze(-1), atol=1e-5, rtol=0
    )
    q_logprobs = q.float().log_softmax(-1).gather(-1, taken).squeeze(-1)
    torch.testing.assert_close(outputs.q_logprobs[0], q_logprobs, atol=1e-5, rtol=0)


def test_the_objective_equals_trlx_form_on_full_logits_with_gradients(tokenizer):
    from rlhf_builtins.ilql.maths import ilql_loss, ilql_objective
    from rlhf_builtins.ilql.models import gather_positions
    from rlhf_builtins.ilql.settings import ILQLSettings

    torch.manual_seed(0)
    base = tiny_lm(tokenizer, "gpt2")
    model = ILQLModel(base, heads_for(base, two_qs=True))
    batch = padded_batch(tokenizer)
    weights = ILQLSettings(cql_scale=0.5, awac_beta=0.5)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["state_indices"], batch["actions"])
    rest = dict(rewards=batch["rewards"], terminal=batch["terminal"], weights=weights)

    outputs = model(*inputs)
    found = ilql_objective(**vars(outputs), **rest)
    found_grads = torch.autograd.grad(found["loss"], list(model.heads.q_heads.parameters()))

    hidden = base.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    states = gather_positions(hidden, batch["state_indices"])
    expected = ilql_loss(
        lm_logits=base.get_output_embeddings()(states[:, :-1]),
        q_logits=tuple(head(states[:, :-1]) for head in model.heads.q_heads),
        target_q=outputs.target_q,
        values=model.heads.v_head(states).squeeze(-1),
        actions=batch["actions"],
        **rest,
    )
    expected_grads = torch.autograd.grad(expected["loss"], list(model.heads.q_heads.parameters()))
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=1e-5, atol=1e-6)
    for got, want in zip(found_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_save_then_reload_is_identical(tokenizer, saved):
    batch = padded_batch(tokenizer)
    policy = ILQLPolicy(saved, decode_beta=1.0, top_k=None, temperature=None)
    first = ILQLModel(*policy.load_parts()).eval()
    save_ilql_model(saved.parent / "again", first)
    second = ILQLModel(
        *ILQLPolicy(
            saved.parent / "again", decode_beta=1.0, top_k=None, temperature=None
        ).load_parts()
    ).eval()
    inputs = (batch["input_ids"], batch["attention_mask"], batch["state_indices"], batch["actions"])
    with torch.no_grad():
        a, b = first(*inputs), second(*inputs)
    assert torch.equal(a.lm_logprobs, b.lm_logprobs) and torch.equal(a.values, b.values)
    assert torch.equal(a.target_q, b.target_q)
    for x, y in zip(a.q_taken + a.q_logprobs, b.q_taken + b.q_logprobs, strict=True):
        assert torch.equal(x, y)
    # the base LM alone is a plain from_pretrained causal LM (hf-causal-lm from_stage)
    plain = PretrainedPolicy(str(saved)).load_model().eval()
    with torch.no_grad():
        logits = plain(input_ids=batch["input_ids"]).logits
    assert torch.equal(logits, first.base(input_ids=batch["input_ids"]).logits)


def sample(model, tokenizer, sampling: SamplingSettings, seed: int = 3) -> list[str]:
    torch.manual_seed(seed)
    return generate_texts(model, tokenizer, PROMPTS, sampling, batch_size=2)


def test_decode_beta_zero_samples_exactly_like_the_base_model(tokenizer, saved):
    sampling = SamplingSettings(max_new_tokens=12, do_sample=True, top_k=20)
    guided = ILQLPolicy(saved, decode_beta=0.0, top_k=None, temperature=None).load_model()
    plain = PretrainedPolicy(str(saved)).load_model()
    assert sample(guided, tokenizer, sampling) == sample(plain, tokenizer, sampling)
    shifted = ILQLPolicy(saved, decode_beta=3.0, top_k=None, temperature=None).load_model()
    assert sample(shifted, tokenizer, sampling) != sample(plain, tokenizer, sampling)


def test_positive_decode_beta_follows_the_advantage(tokenizer, saved):
    favourite = tokenizer.convert_tokens_to_ids("x")
    assert favourite is not None
    model = ILQLPolicy(saved, decode_beta=1.0, top_k=None, temperature=0.0).load_model()
    with torch.no_grad():
        for head in model.ilql_heads.target_q_heads:
            head[2].weight.zero_()
            head[2].bias.zero_()
            head[2].bias[favourite] = 1000.0
    # the policy's temperature 0 (argmax) wins over the caller's sampling settings
    batch = tokenizer(PROMPTS[:1], return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **batch, max_new_tokens=5, do_sample=True, top_k=50, pad_token_id=tokenizer.pad_token_id
    )
    assert out[0, batch["input_ids"].shape[1] :].tolist() == [favourite] * 5


def test_decode_beta_list_gives_one_variant_per_beta(saved):
    sweep = ilql_policy(path=saved, decode_beta=[0, 1.5])
    variants = sweep.variants()
    assert list(variants) == ["beta=0", "beta=1.5"]
    assert [v.decode_beta for v in variants.values()] == [0.0, 1.5]
    with pytest.raises(UserError, match="decode_beta is a list"):
        sweep.load_model()
    assert not hasattr(ilql_policy(path=saved, decode_beta=2.0), "variants")


def test_policy_user_errors(tmp_path, saved):
    with pytest.raises(UserError, match="exactly one"):
        ilql_policy(from_stage=str(saved), path=saved)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not the output of an ilql stage"):
        ilql_policy(path=tmp_path)


def trainable(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def test_num_layers_unfrozen_follows_trlx(tokenizer):
    from rlhf_plugins._engine.hf import decoder_blocks
    from rlhf_plugins._engine.modules import freeze_bottom

    two_layers = tiny_lm(tokenizer, n_layer=2)
    freeze_bottom(two_layers, 1)
    blocks = decoder_blocks(two_layers)
    assert [trainable(b) for b in blocks] == [False, True]
    assert not trainable(two_layers.get_input_embeddings())
    assert trainable(two_layers.get_output_embeddings())  # GPT-J's LM head is not tied
    frozen = tiny_lm(tokenizer)
    freeze_bottom(frozen, 0)
    assert not trainable(frozen)
    everything = tiny_lm(tokenizer, "gpt2")
    freeze_bottom(everything, -1)
    assert all(p.requires_grad for p in everything.parameters())
