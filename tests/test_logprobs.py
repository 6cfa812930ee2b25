"""The chunked log-probability helpers (rlhf_plugins.torch_helpers.token_logprobs,
token_logprobs_and_entropy, token_kl) against the plain full-vocabulary computation on random
tensors: values and gradients, through a head or from logits, with chunks that do not divide
the positions; and TRL's fused LM head with small tiles on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlhf_plugins.torch_helpers import token_kl, token_logprobs, token_logprobs_and_entropy

torch.set_num_threads(1)

BATCH, LENGTH, HIDDEN, VOCAB = 3, 7, 16, 50


def plain_logprobs(logits, tokens, temperature=1.0):
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def plain_entropy(logits, temperature=1.0):
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def setup(seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(HIDDEN, VOCAB)
    hidden = torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH))
    weights = torch.randn(BATCH, LENGTH)  # a loss that weighs every position differently
    return head, hidden, tokens, weights


def gradients(loss, head, hidden):
    grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])
    return [g.clone() for g in grads]


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_through_a_head_equal_the_plain_ones_with_gradients(chunk_size, temperature):
    head, hidden, tokens, weights = setup()
    expected = plain_logprobs(head(hidden), tokens, temperature)
    expected_grads = gradients((expected * weights).sum(), head, hidden)

    found = token_logprobs(hidden, tokens, head, temperature=temperature, chunk_size=chunk_size)
    assert found.shape == tokens.shape and found.dtype == torch.float32
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)
    for got, want in zip(
        gradients((found * weights).sum(), head, hidden), expected_grads, strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_token_logprobs_from_logits_equal_the_plain_ones_with_gradients(chunk_size):
    torch.manual_seed(1)
    logits = torch.randn(BATCH, LENGTH, VOCAB, dtype=torch.float64).to(torch.bfloat16)
    logits.requires_grad_(True)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH))
    expected = plain_logprobs(logits, tokens)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    found = token_logprobs(logits, tokens, chunk_size=chunk_size)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)
    (found_grad,) = torch.autograd.grad(found.sum(), logits)
    torch.testing.assert_close(found_grad, expected_grad)


def test_entropy_comes_from_the_same_pass_and_carries_no_gradient():
    head, hidden, tokens, weights = setup(2)
    logits = head(hidden)
    logprobs, entropy = token_logprobs_and_entropy(
        hidden, tokens, head, temperature=0.5, chunk_size=5
    )
    torch.testing.assert_close(logprobs, plain_logprobs(logits, tokens, 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy, plain_entropy(logits, 0.5), rtol=0, atol=1e-5)
    assert logprobs.requires_grad and not entropy.requires_grad
    expected_grads = gradients((plain_logprobs(logits, tokens, 0.5) * weights).sum(), head, hidden)
    for got, want in zip(
        gradients((logprobs * weights).sum(), head, hidden), expected_grads, strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_frozen_head_gives_gradients_to_the_hidden_states_only():
    head, hidden, tokens, weights = setup(3)
    head.requires_grad_(False)
    expected = torch.autograd.grad((plain_logprobs(head(hidden), tokens) * weights).sum(), hidden)
    found = torch.autograd.grad(
        (token_logprobs(hidden, tokens, head, chunk_size=2) * weights).sum(), hidden
    )
    torch.testing.assert_close(found[0], expected[0], rtol=1e-5, atol=1e-6)


def test_without_autograd_no_graph_is_built():
    head, hidden, tokens, _ = setup(4)
    with torch.no_grad():
        found = token_logprobs(hidden, tokens, head, chunk_size=2)
    assert not found.requires_grad
    torch.testing.assert_close(
        found, plain_logprobs(head(hidden), tokens).detach(), atol=1e-6, rtol=0
    )


def test_an_mlp_head_and_any_leading_shape():
    from rlhf_plugins.torch_helpers import MLPHead

    torch.manual_seed(5)
    head = MLPHead(HIDDEN, VOCAB)
    hidden = torch.randn(2, 3, 4, HIDDEN, requires_grad=True)
    tokens = torch.randint(0, VOCAB, (2, 3, 4))
    expected = plain_logprobs(head(hidden), tokens)
    found = token_logprobs(hidden, tokens, head, chunk_size=5)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)
    want = torch.autograd.grad(expected.sum(), [hidden, *head.parameters()])
    got = torch.autograd.grad(found.sum(), [hidden, *head.parameters()])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_no_positions():
    head, _, _, _ = setup()
    hidden = torch.zeros(2, 0, HIDDEN)
    tokens = torch.zeros(2, 0, dtype=torch.long)
    assert token_logprobs(hidden, tokens, head).shape == (2, 0)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_token_kl_is_the_exact_kl_of_the_two_distributions(chunk_size):
    torch.manual_seed(6)
    head, ref_head = torch.nn.Linear(HIDDEN, VOCAB), torch.nn.Linear(HIDDEN, VOCAB)
    hidden = torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True)
    ref_hidden = torch.randn(BATCH, LENGTH, HIDDEN)
    log_p = F.log_softmax(head(hidden), -1)
    log_q = F.log_softmax(ref_head(ref_hidden), -1)
    expected = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    found = token_kl(hidden, head, ref_hidden, ref_head, chunk_size=chunk_size)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
    (want,) = torch.autograd.grad(expected.sum(), hidden)
    (got,) = torch.autograd.grad(found.sum(), hidden)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        same = token_kl(hidden, head, hidden, head, chunk_size=chunk_size)
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-6)


def test_chunks_bound_the_logits_computed_at_once(monkeypatch):
    from rlhf_plugins._engine import logprobs

    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 2 * VOCAB)
    head, hidden, tokens, _ = setup(7)
    rows = []
    head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    token_logprobs(hidden, tokens, head).sum().backward()
    assert max(rows) == 2 and sum(rows) == 2 * BATCH * LENGTH  # forward and recompute


def test_trl_fused_head_uses_small_tiles_on_the_cpu_only():
    chunked_logprob = pytest.importorskip("trl.kernels.chunked_logprob")
    from trl.trainer import utils

    from rlhf_plugins._engine.logprobs import LOGITS_CHUNK_ELEMENTS, trl_logprob_tiles

    before = chunked_logprob.TOKEN_CHUNK_SIZE
    with trl_logprob_tiles(torch.device("cpu")):
        tokens = chunked_logprob.TOKEN_CHUNK_SIZE
        assert tokens * utils._CHUNKED_LOGPROB_CHUNK_SIZE <= LOGITS_CHUNK_ELEMENTS
    assert before == chunked_logprob.TOKEN_CHUNK_SIZE
    with trl_logprob_tiles(torch.device("cuda")):
        assert before == chunked_logprob.TOKEN_CHUNK_SIZE


def test_trl_fused_head_with_small_tiles_gives_the_same_loss_and_gradients(monkeypatch):
    chunked_logprob = pytest.importorskip("trl.kernels.chunked_logprob")
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl.trainer import utils
    from trl.trainer.utils import add_fused_lm_head

    from rlhf_plugins._engine import logprobs

    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 3 * utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    tiles = []

    def loss_and_grad(small):
        torch.manual_seed(8)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97))
        add_fused_lm_head(model)
        ids = torch.randint(0, 97, (2, 9))
        if small:
            with logprobs.trl_logprob_tiles(torch.device("cpu")):
                tiles.append(chunked_logprob.TOKEN_CHUNK_SIZE)
                loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
                loss.backward()
        else:
            loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
            loss.backward()
        return loss.detach(), model.transformer.wte.weight.grad.clone()

    (loss, grad), (small_loss, small_grad) = loss_and_grad(False), loss_and_grad(True)
    torch.testing.assert_close(small_loss, loss)
    torch.testing.assert_close(small_grad, grad)
    assert tiles == [3]  # 16 positions in 6 tiles


def test_generation_runs_the_lm_head_on_the_last_position_only():
    """transformers' ``generate`` passes ``logits_to_keep = 1``: the prefill of a prompt batch
    computes no vocabulary logits at the prompt's positions."""
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_plugins.torch_helpers import SamplingSettings

    torch.manual_seed(9)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97)).eval()
    positions = []
    model.lm_head.register_forward_hook(lambda m, args, out: positions.append(out.shape[1]))
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=96)
    kwargs = SamplingSettings(max_new_tokens=4).generate_kwargs(tokenizer)
    prompts = torch.randint(1, 90, (2, 12))
    with torch.no_grad():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), **kwargs)
    assert positions and set(positions) == {1}
