"""The public plugin API's torch-importing part: helpers for trainers and evaluators that work
on models, tokenizers and Accelerate/DeepSpeed. Importing this package imports torch and
transformers: a plugin module imports it inside its builders, so that ``rlhf list-plugins``
stays fast. docs/plugins.md documents every name.

- generation: ``SamplingSettings``, ``ensure_pad_token``, ``encode_prompts``, ``generate_texts``,
  ``batched``;
- pretrained models: ``load_pretrained`` (dtype by name, attention implementation, GGUF
  dequantized into plain weights), ``load_pretrained_tokenizer``;
- Hugging Face ``Trainer`` stages: ``TrainerStage`` (a TRL trainer as a stage),
  ``training_arguments``, ``run_trainer``, ``save_final``, ``StageCallback``, ``peft_config``;
- model parts: ``decoder_blocks``, ``MLPHead``, ``freeze_bottom``, ``disable_dropout``,
  ``final_norm``;
- log-probabilities chunk by chunk over positions: ``token_logprobs``,
  ``token_logprobs_and_entropy``, ``token_kl``;
- custom training loops: ``warmup_count``, ``learning_rate_factor``, ``fill_deepspeed_config``,
  ``eval_shard``, ``RunningMoments``;
- DeepSpeed ZeRO-3: ``zero3_enabled``, ``load_models_whole``, ``loading_whole``,
  ``gathered_for_generation``, ``gathered_parameters``.
"""

from rlhf_plugins._engine.generation import (
    SamplingSettings,
    batched,
    encode_prompts,
    ensure_pad_token,
    generate_texts,
)
from rlhf_plugins._engine.hf import (
    StageCallback,
    decoder_blocks,
    peft_config,
    run_trainer,
    save_final,
    training_arguments,
)
from rlhf_plugins._engine.loading import load_pretrained, load_pretrained_tokenizer
from rlhf_plugins._engine.logprobs import token_kl, token_logprobs, token_logprobs_and_entropy
from rlhf_plugins._engine.loop import (
    RunningMoments,
    eval_shard,
    fill_deepspeed_config,
    learning_rate_factor,
    warmup_count,
)
from rlhf_plugins._engine.modules import MLPHead, disable_dropout, final_norm, freeze_bottom
from rlhf_plugins._engine.trl_stage import TrainerStage
from rlhf_plugins._engine.zero import (
    gathered_for_generation,
    gathered_parameters,
    load_models_whole,
    loading_whole,
    zero3_enabled,
)

__all__ = [
    "MLPHead",
    "RunningMoments",
    "SamplingSettings",
    "StageCallback",
    "TrainerStage",
    "batched",
    "decoder_blocks",
    "disable_dropout",
    "encode_prompts",
    "ensure_pad_token",
    "eval_shard",
    "fill_deepspeed_config",
    "final_norm",
    "freeze_bottom",
    "gathered_for_generation",
    "gathered_parameters",
    "generate_texts",
    "learning_rate_factor",
    "load_models_whole",
    "load_pretrained",
    "load_pretrained_tokenizer",
    "loading_whole",
    "peft_config",
    "run_trainer",
    "save_final",
    "token_kl",
    "token_logprobs",
    "token_logprobs_and_entropy",
    "training_arguments",
    "warmup_count",
    "zero3_enabled",
]
