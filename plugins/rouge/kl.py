"""KL of a policy to a reference policy on the policy's own completions (imports torch).

For each completion token the exact KL between the two next-token distributions is summed
over the vocabulary, ``KL_t = sum_v p(v | x, y<t) (log p(v | x, y<t) - log q(v | x, y<t))``,
along the completion the policy generated; a sample's KL is the sum over its tokens, its
per-token KL that sum over its length. Unlike the one-sample estimate ``log p(y) - log q(y)``
this is well defined for greedy completions too. Prompts are cut from the left as in
generation; completions are re-tokenized from their text. The LM heads run on the completion
positions only, a chunk of positions at a time (``rlhf_plugins.torch_helpers.token_kl``): no
``[batch, positions, vocabulary]`` logits are held.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf_plugins import UserError
from rlhf_plugins.torch_helpers import batched, encode_prompts, token_kl


def check_vocabularies(tokenizer: Any, reference_tokenizer: Any, label: str) -> None:
    """A ``UserError`` unless the two tokenizers map text to the same ids."""
    if tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise UserError(
            f"rouge evaluator: policy '{label}' and the reference policy use different "
            "vocabularies; a KL between them is not defined"
        )


def completion_states(model: Any, inputs: dict[str, torch.Tensor], start: int) -> torch.Tensor:
    """``model``'s final hidden states at the positions predicting the completion (from
    ``start`` on), the ones its LM head reads."""
    return model.base_model(**inputs, use_cache=False).last_hidden_state[:, start:-1]


@torch.no_grad()
def completion_kl(
    model: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    *,
    batch_size: int,
    max_prompt_length: int | None,
) -> list[tuple[float, int]]:
    """``(KL summed over the completion's tokens, number of tokens)`` per row."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for rows in batched(list(zip(prompts, completions, strict=True)), batch_size):
        batch = encode_prompts(tokenizer, [p for p, _ in rows], max_prompt_length, device)
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in rows]
        width = max(1, max(len(i) for i in ids))
        completion = torch.full((len(rows), width), tokenizer.pad_token_id, device=device)
        mask = torch.zeros_like(completion)
        for row, tokens in enumerate(ids):
            completion[row, : len(tokens)] = torch.tensor(tokens, device=device)
            mask[row, : len(tokens)] = 1
        input_ids = torch.cat([batch["input_ids"], completion], dim=1)
        attention = torch.cat([batch["attention_mask"], mask], dim=1)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        start = batch["input_ids"].shape[1] - 1
        inputs = dict(input_ids=input_ids, attention_mask=attention, position_ids=positions)
        per_token = token_kl(
            completion_states(model, inputs, start),
            model.get_output_embeddings(),
            completion_states(reference, inputs, start),
            reference.get_output_embeddings(),
        )
        per_token = per_token * mask
        results += [
            (float(total), int(count))
            for total, count in zip(per_token.sum(1), mask.sum(1), strict=True)
        ]
    return results
