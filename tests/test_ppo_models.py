"""Models: the hydra reference gives the logits of a full frozen copy after the policy has
moved, for GPT-2, GPT-J and GPT-NeoX; freezing (-1, k and 0 unfrozen layers); response-only
logits and values."""

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


def left_padded_batch():
    from rlhf_builtins.ppo.rollout import model_inputs

    queries = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    query_mask = (queries != 0).long()
    responses = torch.tensor([[8, 9, 10], [11, 12, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return model_inputs(queries, query_mask, responses, mask), queries.shape[1]


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
    logits (within float rounding); returns (policy logits, reference logits)."""
    perturb_trainable(model)
    inputs, start = left_padded_batch()
    with torch.no_grad():
        logits, _, ref_logits = reference.run(model.eval(), inputs, start)
        expected = initial(**inputs).logits[:, start - 1 : -1]
    torch.testing.assert_close(ref_logits, expected, rtol=0, atol=1e-6)
    return logits, ref_logits


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_hydra_reference_equals_a_full_copy_after_training(architecture):
    from rlhf_builtins.ppo.models import build_models

    lm = tiny_lm(architecture)
    initial = copy.deepcopy(lm)
    model, reference = build_models(lm, num_layers_unfrozen=1, separate_critic=False)
    perturb_trainable(model)
    inputs, start = left_padded_batch()
    with torch.no_grad():
        logits, values, ref_logits = reference.run(model.eval(), inputs, start)
        expected_ref = initial(**inputs).logits[:, start - 1 : -1]
        expected_policy = model.policy(**inputs).logits[:, start - 1 : -1]
    assert torch.equal(ref_logits, expected_ref)  # bit-exact
    torch.testing.assert_close(logits, expected_policy, rtol=0, atol=1e-6)
    assert (logits - ref_logits).abs().max() > 1e-3, "the policy should have moved"
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
    inputs, start = left_padded_batch()
    logits, values, ref_logits = reference.run(model, inputs, start)
    assert ref_logits is logits and not logits.requires_grad
    values.sum().backward()
    assert model.value_head[0].weight.grad is not None


def test_separate_critic_has_its_own_trunk():
    from rlhf_builtins.ppo.models import build_models

    model, _ = build_models(tiny_lm("gpt_neox"), num_layers_unfrozen=1, separate_critic=True)
    assert model.critic is not None
    assert all(p.requires_grad for p in model.critic.parameters())
    inputs, start = left_padded_batch()
    logits, values = model(**inputs, response_start=start)
    assert logits.shape == (2, 3, 97) and values.shape == (2, 3)
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
    logits, ref_logits = assert_reference_is_initial(model, reference, initial)
    assert (logits - ref_logits).abs().max() > 1e-4, "the adapter should change the policy"
