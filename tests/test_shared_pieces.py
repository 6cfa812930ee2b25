"""The pieces every trainer shares (``rlhf_plugins._engine.loop``, ``rlhf_plugins._engine.modules``): the
learning-rate schedule against transformers' schedulers, warmup as TrainingArguments reads it,
evaluation shards, running moments (sample std), DeepSpeed config entries, trlX's MLP head,
dropout off and the one ``num_layers_unfrozen`` rule."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPTJConfig,
    TrainingArguments,
    get_scheduler,
)

from rlhf_plugins import UserError
from rlhf_plugins._engine.loop import (
    RunningMoments,
    eval_shard,
    fill_deepspeed_config,
    learning_rate_factor,
    warmup_count,
)
from rlhf_plugins._engine.modules import MLPHead, disable_dropout, freeze_bottom

torch.set_num_threads(1)


def transformers_factors(schedule: str, warmup: int, max_steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(schedule, optimizer, warmup, max_steps)
    factors = []
    for _ in range(max_steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_the_schedule_is_transformers_own(schedule, warmup):
    ours = [
        learning_rate_factor(t, schedule=schedule, warmup=warmup, max_steps=12) for t in range(12)
    ]
    assert ours == pytest.approx(transformers_factors(schedule, warmup, 12), abs=1e-12)


def test_the_floor_of_linear_and_cosine_decay():
    def factor(step: int, schedule: str) -> float:
        return learning_rate_factor(step, schedule=schedule, warmup=0, max_steps=10, min_ratio=0.2)

    assert [factor(t, "cosine") for t in (0, 5, 10, 20)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert factor(5, "linear") == pytest.approx(0.6)
    assert factor(5, "constant") == 1.0


@pytest.mark.parametrize("warmup_steps", [0, 0.05, 0.1, 7, 7.0])
def test_warmup_steps_read_as_training_arguments_read_them(warmup_steps, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=warmup_steps, report_to=[])
    assert warmup_count(warmup_steps, 150) == args.get_warmup_steps(150)


def test_eval_shards_have_equal_length_and_cover_every_row_once():
    assert [eval_shard(5, rank, 2) for rank in range(2)] == [
        ([0, 1, 2], [True, True, True]),
        ([3, 4, 0], [True, True, False]),
    ]
    assert eval_shard(4, 0, 1) == ([0, 1, 2, 3], [True] * 4)


def test_running_moments_merge_batches_into_the_sample_std():
    moments = RunningMoments()
    assert moments.std == 1.0
    for batch in ([1.0, 2.0, 3.0], [4.0, 5.0], [], [10.0]):
        moments.add(len(batch), sum(batch), sum(x * x for x in batch))
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0]
    assert moments.mean == pytest.approx(statistics.fmean(values))
    assert moments.std == pytest.approx(statistics.stdev(values))
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored == moments


def test_deepspeed_entries_come_from_the_loop():
    config = {"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None))
    fill_deepspeed_config(
        accelerator,
        micro_batch_size=4,
        gradient_accumulation_steps=2,
        num_processes=3,
        max_grad_norm=None,
    )  # no DeepSpeed: nothing to do
    accelerator.state.deepspeed_plugin = SimpleNamespace(deepspeed_config=config)
    fill_deepspeed_config(
        accelerator,
        micro_batch_size=4,
        gradient_accumulation_steps=2,
        num_processes=3,
        max_grad_norm=1.0,
    )
    assert config == {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 24,
        "gradient_clipping": 1.0,
        "zero_allow_untested_optimizer": True,
    }


def test_the_mlp_head_has_trlx_layout_and_gathers_single_outputs():
    torch.manual_seed(0)
    head = MLPHead(8, 5)
    assert list(head.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert head[0].out_features == 16 and isinstance(head[1], torch.nn.ReLU)
    x = torch.randn(2, 3, 8)
    index = torch.tensor([[0, 4, 2], [1, 1, 3]])
    full = head(x)
    assert full.shape == (2, 3, 5)
    torch.testing.assert_close(head(x, index), full.gather(-1, index.unsqueeze(-1)).squeeze(-1))


def gptj(**dropout: float):
    config = GPTJConfig(n_layer=3, n_embd=16, n_head=2, n_positions=32, rotary_dim=4, vocab_size=50)
    for key, value in dropout.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_config(config)


def test_dropout_off_covers_modules_functional_attention_and_the_config():
    model = disable_dropout(gptj(attn_pdrop=0.1, resid_pdrop=0.1, embd_pdrop=0.1))
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(block.attn.attention_dropout == 0.0 for block in model.transformer.h)
    assert (model.config.attn_pdrop, model.config.resid_pdrop, model.config.embd_pdrop) == (0, 0, 0)
    model.train()
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(x).logits, model(x).logits, rtol=0, atol=0)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_num_layers_unfrozen_means_one_thing():
    def tied():
        torch.manual_seed(0)
        config = GPT2Config(n_layer=3, n_embd=16, n_head=2, n_positions=32, vocab_size=50)
        return AutoModelForCausalLM.from_config(config)

    everything = tied()
    freeze_bottom(everything, -1)
    assert trainable(everything) == {n for n, _ in everything.named_parameters()}

    top = tied()
    freeze_bottom(top, 1)  # positions and the tied head freeze with the embeddings
    assert trainable(top) and all(
        n.startswith(("transformer.h.2.", "transformer.ln_f.")) for n in trainable(top)
    )

    untied = gptj()
    freeze_bottom(untied, 2)
    assert {n.split(".")[0] for n in trainable(untied)} == {"transformer", "lm_head"}
    assert not any(n.startswith(("transformer.h.0.", "transformer.wte")) for n in trainable(untied))

    heads_only = gptj()
    freeze_bottom(heads_only, 0)
    assert trainable(heads_only) == set()

    with pytest.raises(UserError, match="num_layers_unfrozen \\(4\\) exceeds the model's 3 layers"):
        freeze_bottom(tied(), 4)


def test_a_classifier_keeps_its_score_head_trainable():
    config = GPTJConfig(
        n_layer=4, n_embd=16, n_head=2, n_positions=32, rotary_dim=4, vocab_size=50, num_labels=1
    )
    model = AutoModelForSequenceClassification.from_config(config)
    freeze_bottom(model, 0)
    assert trainable(model) == {"score.weight"}
    model = AutoModelForSequenceClassification.from_config(config)
    freeze_bottom(model, 2)
    blocks = {n.split(".")[2] for n in trainable(model) if n.startswith("transformer.h.")}
    assert blocks == {"2", "3"} and "score.weight" in trainable(model)
    assert "transformer.ln_f.weight" in trainable(model)
