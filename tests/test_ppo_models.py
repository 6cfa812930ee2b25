"""Models: the hydra reference gives the log-probabilities of a full frozen copy after the
policy has moved, for GPT-2, GPT-J and GPT-NeoX; freezing (-1, k and 0 unfrozen layers);
response-only log-probabilities (those of the full logits) and values."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTJConfig, GPTNeoXConfig

torch.set_num_threads(1)

SPECIAL = dict(vocab_size=97, bos_token_id=1, eos_token_id=1)
CONFIGS = {
    "gpt2": lambda: GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, **SPECIAL),
    "gptj": lambda: GPTJConfig(
        n_layer=3, n_embd=32, n_head=4, n_positions=64, rotary_dim=4, **SPECIAL
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **SPECIAL,
    ),
}


def left_padded_batch(temperature=1.0):
    from rlhf_builtins.ppo.models import Responses
    from rlhf_builtins.ppo.rollout import model_inputs

    queries = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    query_mask = (queries != 0).long()
    responses = torch.tensor([[8, 9, 10], [11, 12, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    inputs = model_inputs(queries, query_mask, responses, mask)
    return inputs, Responses(queries.shape[1], responses, temperature)


def full_logprobs(lm, inputs, responses):
    """The response tokens' log-probabilities from ``lm``'s full logits, the plain way."""
    logits = lm(**inputs).logits[:, responses.start - 1 : -1].float() / responses.temperature
    taken = logits.log_softmax(-1).gather(-1, responses.tokens.unsqueeze(-1))
    return taken.squeeze(-1)


def tiny_lm(architecture: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[architecture]()).eval()


def perturb_trainable(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def assert_reference_is_initial(model, reference, initial):
    """Move the trainable weights, then check the reference still gives the initial model's
    log-probabilities (within float rounding); returns (policy, reference) log-probabilities."""
    perturb_trainable(model)
    inputs, responses = left_padded_batch()
    with torch.no_grad():
        logprobs, _, ref_logprobs = reference.run(model.eval(), inputs, responses)
        expected = full_logprobs(initial, inputs, responses)
    torch.testing.assert_close(ref_logprobs, expected, rtol=0, atol=1e-6)
    return logprobs, ref_logprobs


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_hydra_reference_equals_a_full_copy_after_training(architecture):
    from rlhf_builtins.ppo.models import build_models

    lm = tiny_lm(architecture)
    initial = copy.deepcopy(lm)
    model, reference = build_models(lm, num_layers_unfrozen=1, separate_critic=False)
    perturb_trainable(model)
    inputs, responses = left_padded_batch(temperature=0.7)
    with torch.no_grad():
        logprobs, values, ref_logprobs = reference.run(model.eval(), inputs, responses)
        hidden = initial.base_model(**inputs).last_hidden_state
        same_path = responses.logprobs(initial.get_output_embeddings(), hidden)
        expected_ref = full_logprobs(initial, inputs, responses)
        expected_policy = full_logprobs(model.policy, inputs, responses)
    assert torch.equal(ref_logprobs, same_path)  # bit-exact: a full copy's, the same way
    torch.testing.assert_close(ref_logprobs, expected_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(logprobs, expected_policy, rtol=0, atol=1e-6)
    assert (logprobs - ref_logprobs).abs().max() > 1e-3, "the policy should have moved"
    assert values.shape == (2, 3) and values.dtype == torch.float32


def test_full_copy_reference_for_minus_one_trains_everything():
    from rlhf_builtins.ppo.models import FrozenCopyReference, build_models

    lm = tiny_lm("gpt2")
    initial = copy.deepcopy(lm)
    model, reference = build_models(lm, num_layers_unfrozen=-1, separate_critic=False)
    assert isinstance(reference, FrozenCopyReference)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    assert_reference_is_initial(model, reference, initial)


def test_hydra_freezes_everything_below_the_top_blocks():
    from rlhf_builtins.ppo.models import build_models

    model, reference = build_models(tiny_lm("gptj"), num_layers_unfrozen=1, separate_critic=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    assert all(
        n.startswith(
            (
                "policy.transformer.h.2.",
                "policy.transformer.ln_f.",
                "policy.lm_head.",
                "value_head.",
            )
        )
        for n in trainable
    )
    assert any(n.startswith("policy.lm_head.") for n in trainable)  # GPT-J's head is untied
    assert not any(p.requires_grad for p in reference.parameters())
    n_block = sum(p.numel() for p in model.policy.transformer.h[2].parameters())
    n_ref = sum(p.numel() for p in reference.parameters())
    n_head = sum(p.numel() for p in model.policy.lm_head.parameters())
    n_norm = sum(p.numel() for p in model.policy.transformer.ln_f.parameters())
    assert n_ref == n_block + n_head + n_norm  # only the top of the model is copied


def test_hydra_shares_a_head_tied_to_frozen_embeddings():
    from rlhf_builtins.ppo.models import build_models

    model, reference = build_models(tiny_lm("gpt2"), num_layers_unfrozen=2, separate_critic=False)
    assert not model.policy.lm_head.weight.requires_grad
    assert reference.head is model.policy.lm_head


def test_zero_unfrozen_layers_trains_only_the_value_head_against_the_policy_itself():
    from rlhf_builtins.ppo.models import SharedReference, build_models

    model, reference = build_models(tiny_lm("gpt2"), num_layers_unfrozen=0, separate_critic=False)
    assert isinstance(reference, SharedReference) and not list(reference.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "value_head.0.weight",
        "value_head.0.bias",
        "value_head.2.weight",
        "value_head.2.bias",
    }
    inputs, responses = left_padded_batch()
    logprobs, values, ref_logprobs = reference.run(model, inputs, responses)
    assert ref_logprobs is logprobs and not logprobs.requires_grad
    values.sum().backward()
    assert model.value_head[0].weight.grad is not None


def test_separate_critic_has_its_own_trunk():
    from rlhf_builtins.ppo.models import build_models

    model, _ = build_models(tiny_lm("gpt_neox"), num_layers_unfrozen=1, separate_critic=True)
    assert model.critic is not None
    assert all(p.requires_grad for p in model.critic.parameters())
    inputs, responses = left_padded_batch()
    logprobs, values, entropy = model(
        **inputs, response_start=responses.start, responses=responses.tokens, entropy=True
    )
    assert logprobs.shape == values.shape == entropy.shape == (2, 3)
    with torch.no_grad():
        torch.testing.assert_close(
            logprobs, full_logprobs(model.policy, inputs, responses), rtol=0, atol=1e-6
        )
    values.sum().backward()
    assert model.critic.layers[0].attention.query_key_value.weight.grad is not None


def test_too_many_unfrozen_layers_is_a_user_error():
    from rlhf_builtins.ppo.models import build_models
    from rlhf_plugins import UserError

    with pytest.raises(UserError, match="exceeds the model's 3 layers"):
        build_models(tiny_lm("gpt2"), num_layers_unfrozen=4, separate_critic=False)


def test_lora_reference_is_the_policy_with_its_adapter_off():
    pytest.importorskip("peft")
    from rlhf_builtins.ppo.models import AdapterOffReference, build_models

    lm = tiny_lm("gpt2")
    initial = copy.deepcopy(lm)
    lora = dict(r=4, alpha=8.0, dropout=0.0, target_modules=None)
    model, reference = build_models(lm, num_layers_unfrozen=-1, separate_critic=False, lora=lora)
    assert isinstance(reference, AdapterOffReference)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    logprobs, ref_logprobs = assert_reference_is_initial(model, reference, initial)
    assert (logprobs - ref_logprobs).abs().max() > 1e-4, "the adapter should change the policy"
