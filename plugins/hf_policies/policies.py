"""Policy objects: loaders for a tokenizer and a fresh model."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    PreTrainedTokenizerFast,
)

from rlhf_plugins import StageContext, UserError, display_text, is_conversation
from rlhf_plugins.torch_helpers import load_pretrained, load_pretrained_tokenizer

EOS, PAD = "<|endoftext|>", "<|pad|>"


class PretrainedPolicy:
    """``from_pretrained`` of a hub id or a local directory, a GGUF file in it dequantized.
    ``hub`` (``revision``, ``trust_remote_code``) goes to every load; ``chosen`` (``dtype``,
    ``attn_implementation``) overrides what the caller asks for."""

    def __init__(
        self,
        name: str,
        *,
        label: str | None = None,
        hub: dict[str, Any] | None = None,
        chosen: dict[str, Any] | None = None,
        gguf_file: str | None = None,
        tokenizer: str | None = None,
    ):
        self.source = name
        self.name = label or name
        self.hub = dict(hub or {})
        self.chosen = dict(chosen or {})
        self.gguf_file = gguf_file
        self.tokenizer = tokenizer
        local = Path(name)
        if gguf_file is not None:
            if local.is_dir() and not (local / gguf_file).is_file():
                found = sorted(p.name for p in local.glob("*.gguf"))
                raise UserError(
                    f"{name} has no GGUF file '{gguf_file}' (there: {', '.join(found) or 'none'})"
                )
        elif local.exists() and not (local / "config.json").is_file():
            found = sorted(p.name for p in local.glob("*.gguf")) if local.is_dir() else []
            hint = f" (set gguf_file to load {found[0]})" if found else ""
            raise UserError(
                f"{name} has no config.json: not a save_pretrained model directory{hint}"
            )

    def load_tokenizer(self) -> Any:
        if self.tokenizer is not None:
            remote = {"trust_remote_code": self.hub.get("trust_remote_code", False)}
            return load_pretrained_tokenizer(self.tokenizer, **remote)
        return load_pretrained_tokenizer(self.source, gguf_file=self.gguf_file, **self.hub)

    def load_model(self, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
        return load_pretrained(
            auto_class, self.source, gguf_file=self.gguf_file, **(kwargs | self.hub | self.chosen)
        )


def _config(
    architecture: str,
    vocab: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    positions: int,
    eos: int,
    pad: int,
) -> Any:
    common = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    if architecture == "gptj":
        return GPTJConfig(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_positions=positions,
            rotary_dim=max(2, (n_embd // n_head) // 2),
            **common,
        )
    if architecture == "gpt2":
        return GPT2Config(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=positions, **common
        )
    return GPTNeoXConfig(
        num_hidden_layers=n_layer,
        hidden_size=n_embd,
        num_attention_heads=n_head,
        intermediate_size=4 * n_embd,
        max_position_embeddings=positions,
        **common,
    )


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with EOS and PAD tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        model_max_length=100_000,
    )


def dataset_texts(stage: StageContext, limit: int) -> list[str]:
    """Every text cell of the stage's datasets, up to ``limit`` rows per dataset (a
    conversation as ``display_text`` writes it)."""
    texts = []
    for component in stage.components.values():
        if not hasattr(component, "column_names"):
            continue
        for row in islice(iter(component), limit):
            texts.extend(
                display_text(cell)
                for cell in row.values()
                if cell and (isinstance(cell, str) or is_conversation(cell))
            )
    return texts


class TinyPolicy:
    """A config-built model and a tokenizer trained on the stage's data (saved in the stage)."""

    def __init__(
        self,
        stage: StageContext,
        *,
        architecture: str,
        n_layer: int,
        n_embd: int,
        n_head: int,
        vocab_size: int,
        max_positions: int,
        tokenizer_samples: int,
        chat_template: str | None = None,
    ):
        self.stage = stage
        self.name = f"tiny-{architecture}-{n_layer}x{n_embd}"
        self.architecture = architecture
        self.shape = dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, positions=max_positions)
        self.vocab_size = vocab_size
        self.tokenizer_samples = tokenizer_samples
        self.chat_template = chat_template
        self._tokenizer: PreTrainedTokenizerFast | None = None

    @property
    def tokenizer_dir(self) -> Path:
        return self.stage.output_dir / "tokenizer"

    def load_tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer saved by an interrupted run of this stage, or one trained now. Training
        is deterministic, so every rank trains the same tokenizer; only the main rank saves it."""
        if self._tokenizer is not None:
            return self._tokenizer
        if self.stage.resume and (self.tokenizer_dir / "tokenizer.json").is_file():
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
            return self._tokenizer
        texts = dataset_texts(self.stage, self.tokenizer_samples)
        if not texts:
            raise UserError(
                f"tiny-causal-lm in stage '{self.stage.name}' needs a dataset "
                "in the same stage to train its tokenizer on"
            )
        self._tokenizer = train_tokenizer(texts, self.vocab_size)
        self._tokenizer.chat_template = self.chat_template
        if self.stage.is_main_process:
            self._tokenizer.save_pretrained(self.tokenizer_dir)
        return self._tokenizer

    def config(self) -> Any:
        tokenizer = self.load_tokenizer()
        return _config(
            self.architecture,
            len(tokenizer),
            eos=tokenizer.eos_token_id,
            pad=tokenizer.pad_token_id,
            **self.shape,
        )

    def load_model(self, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
        dtype = kwargs.pop("dtype", None)
        torch.manual_seed(self.stage.seed)
        model = auto_class.from_config(self.config())
        return model.to(dtype) if dtype not in (None, "auto") else model
