"""Every range, choice and cross-field rule of the built-in trainers, evaluator, datasets,
policies and reward functions is caught by ``rlhf validate`` (exit 2, the key path named),
before anything is built. Each case is a mistake that ``rlhf validate`` accepted while the
rule lived in a factory body (it surfaced only when the stage started)."""

from __future__ import annotations

import re

import pytest

from rlhf_plugins._engine.recipe import tomllib
from tests.conftest import REPO_ROOT

CLIP = '{ use = "clip", base = { use = "gptj-reward-head", from_stage = "reward_model" }%s }'

CASES = [
    # (shipped recipe, --set override, expected message fragment)
    ("tiny_ilql", "stages.ilql.trainer_settings.tau=1.5", "trainer_settings.tau: must be < 1"),
    ("tiny_ilql", "stages.ilql.trainer_settings.alpha=0.0", "trainer_settings.alpha: must be > 0"),
    ("tiny_ilql", "stages.ilql.trainer_settings.gamma=1.5", "trainer_settings.gamma: must be <= 1"),
    (
        "tiny_ilql",
        "stages.ilql.trainer_settings.cql_scale=-0.1",
        "trainer_settings.cql_scale: must be >= 0",
    ),
    (
        "tiny_ilql",
        "stages.ilql.trainer_settings.target_sync_steps=0",
        "trainer_settings.target_sync_steps: must be >= 1",
    ),
    (
        "tiny_ilql",
        "stages.ilql.trainer_settings.num_layers_unfrozen=-2",
        "trainer_settings.num_layers_unfrozen: must be >= -1",
    ),
    (
        "tldr_ilql",
        "stages.ilql.trainer_settings.min_learning_rate=1e-3",
        "stages.ilql.trainer_settings: min_learning_rate (0.001) exceeds learning_rate (1e-06)",
    ),
    (
        "tiny_ilql",
        "stages.eval.policies.ilql.decode_beta=[]",
        "policies.ilql.decode_beta: List should have at least 1 item",
    ),
    (
        "tiny_ilql",
        "stages.eval.policies.ilql.temperature=-1.0",
        "policies.ilql.temperature: must be >= 0",
    ),
    ("tiny_ilql", "stages.eval.policies.ilql.top_k=-1", "policies.ilql.top_k: must be >= 0"),
    (
        "tiny_sft",
        "stages.sft.trainer_settings.learning_rate=-1.0",
        "trainer_settings.learning_rate: must be > 0",
    ),
    (
        "tiny_sft",
        "stages.sft.trainer_settings.per_device_train_batch_size=0",
        "trainer_settings.per_device_train_batch_size: must be >= 1",
    ),
    (
        "tiny_sft",
        "stages.sft.trainer_settings.max_length=0",
        "trainer_settings.max_length: must be >= 1",
    ),
    (
        "tiny_sft",
        "stages.sft.trainer_settings.warmup_steps=500",
        "stages.sft.trainer_settings: warmup_steps (500) exceeds max_steps (150)",
    ),
    (
        "tiny_rm",
        "stages.reward_model.trainer_settings.freeze_fraction=1.5",
        "trainer_settings.freeze_fraction: must be <= 1",
    ),
    (
        "tiny_rm",
        "stages.reward_model.trainer_settings.weight_decay=-0.1",
        "trainer_settings.weight_decay: must be >= 0",
    ),
    (
        "tiny_rm",
        "stages.reward_model.trainer_settings.logging_steps=0",
        "trainer_settings.logging_steps: must be >= 1",
    ),
    (
        "tiny_rm",
        "stages.evaluate.evaluator_settings.top_p=1.5",
        "evaluator_settings.top_p: must be <= 1",
    ),
    (
        "tiny_rm",
        "stages.evaluate.evaluator_settings.batch_size=0",
        "evaluator_settings.batch_size: must be >= 1",
    ),
    (
        "tiny_rm",
        "stages.evaluate.evaluator_settings.num_samples_shown=-1",
        "evaluator_settings.num_samples_shown: must be >= 0",
    ),
    (
        "tiny_ilql",
        "stages.eval.evaluator_settings.temperature=0.0",
        "stages.eval.evaluator_settings: do_sample needs a temperature above 0",
    ),
    (
        "tiny_sft",
        "stages.sft.dataset.num_examples=0",
        "stages.sft.dataset.num_examples: must be >= 1",
    ),
    ("tldr_ilql", "stages.ilql.dataset.limit=0", "stages.ilql.dataset.limit: must be >= 1"),
    (
        "tldr_ilql",
        "stages.ilql.dataset.min_summary_words=-1",
        "stages.ilql.dataset.min_summary_words: must be >= 0",
    ),
    (
        "tiny_sft",
        "stages.sft.policy.n_head=3",
        "stages.sft.policy: n_embd (128) must be a multiple of n_head (3)",
    ),
    ("tiny_sft", "stages.sft.policy.n_layer=0", "stages.sft.policy.n_layer: must be >= 1"),
    (
        "tiny_rm",
        "stages.evaluate.reward.batch_size=0",
        "stages.evaluate.reward.batch_size: must be >= 1",
    ),
    (
        "tiny_rm",
        "stages.evaluate.reward.max_length=0",
        "stages.evaluate.reward.max_length: must be >= 1",
    ),
    ("tiny_rm", "stages.evaluate.reward=" + CLIP % "", "clip needs 'min', 'max' or both"),
    (
        "tiny_rm",
        "stages.evaluate.reward=" + CLIP % ", min = 1.0, max = 0.0",
        "stages.evaluate.reward: min (1) is above max (0)",
    ),
    (
        "tiny_rm",
        'stages.evaluate.reward={ use = "running-norm", epsilon = 0.0, base = '
        '{ use = "gptj-reward-head", from_stage = "reward_model" } }',
        "stages.evaluate.reward.epsilon: must be > 0",
    ),
    (
        # issue 19: this passed validate and failed after training
        "tiny_rm",
        'stages.evaluate.dataset={ use = "tldr-synthetic", view = "sft" }',
        "stages.evaluate.dataset.view: rouge needs a 'prompts' view here, got 'sft'",
    ),
    (
        "tiny_rm",
        'stages.evaluate.dataset={ use = "hf-dataset", path = "trl-lib/tldr", view = "comparisons" }',
        "stages.evaluate.dataset.view: rouge needs a 'prompts' view here, got 'comparisons'",
    ),
    (
        "tiny_rm",
        'stages.reward_model.dataset={ use = "hf-dataset", path = "trl-lib/tldr", view = "sft" }',
        "stages.reward_model.dataset.view: reward-model needs a 'comparisons' view here, got 'sft'",
    ),
]


@pytest.mark.parametrize(("recipe", "override", "message"), CASES, ids=[c[1] for c in CASES])
def test_validate_rejects_the_mistake(run_cli, recipe, override, message):
    path = REPO_ROOT / "recipes" / f"{recipe}.toml"
    assert run_cli("validate", path).exit_code == 0
    result = run_cli("validate", path, "--set", override)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


VIEWS = ("sft", "prompts", "comparisons", "offline")
ACCEPTED = {
    ("trainer", "sft"): {"dataset": ("sft",), "eval_dataset": ("sft",)},
    ("trainer", "reward-model"): {"dataset": ("comparisons",), "eval_dataset": ("comparisons",)},
    ("trainer", "ppo"): {"dataset": ("prompts",), "eval_dataset": ("prompts",)},
    ("trainer", "policy-gradient"): {"dataset": ("prompts",), "eval_dataset": ("prompts",)},
    ("trainer", "grpo"): {"dataset": ("prompts",), "eval_dataset": ("prompts",)},
    ("trainer", "rloo"): {"dataset": ("prompts",), "eval_dataset": ("prompts",)},
    ("trainer", "dpo"): {"dataset": ("comparisons",), "eval_dataset": ("comparisons",)},
    ("trainer", "kto"): {
        "dataset": ("offline", "comparisons"),
        "eval_dataset": ("offline", "comparisons"),
    },
    ("trainer", "ilql"): {"dataset": ("offline",), "eval_dataset": ("offline",)},
    ("evaluator", "rouge"): {"dataset": ("prompts",)},
}
"""The views each built-in trainer's and evaluator's dataset slots accept: what its stage
reads at run time (``require_columns``)."""


def test_every_trainer_and_evaluator_declares_the_views_of_its_dataset_slots():
    from rlhf_plugins._engine.factories import describe
    from rlhf_plugins._engine.registry import load_registry

    registry = load_registry()
    for kind in ("trainer", "evaluator"):
        for name in registry.names(kind):
            component = registry.get(kind, name)
            spec = describe(component.factory)
            slots = {k for k, p in spec.slots.items() if p.slot == "dataset"}
            assert set(spec.views) == slots, f"{kind} {name}: views of {slots}"
            if component.distribution == "rlhf-plugins":
                assert spec.views == ACCEPTED[kind, name], f"{kind} {name}"


@pytest.mark.parametrize("view", VIEWS)
def test_validate_checks_the_view_of_every_dataset_slot(run_cli, view):
    """Every dataset slot of every built-in trainer and evaluator (``tiny_compare`` and
    ``tiny_pg_compare`` run each of them; the slots they leave empty are filled here) filled
    with ``view``: exactly the slots that do not accept it are reported, with the key path and
    the views that would do."""
    components = {}
    for recipe in ("tiny_compare", "tiny_pg_compare"):
        stages = tomllib.loads((REPO_ROOT / "recipes" / f"{recipe}.toml").read_text())["stages"]
        for stage, table in stages.items():
            for kind in set(table) & {"trainer", "evaluator"}:
                components.setdefault((kind, table[kind]), (recipe, stage))
    assert set(components) == set(ACCEPTED), "the two recipes run every trainer and evaluator"
    table = f'{{ use = "tldr-synthetic", view = "{view}", num_examples = 8 }}'
    overrides, wanted = {}, {}
    for key, slots in ACCEPTED.items():
        recipe, stage = components[key]
        for slot, accepted in slots.items():
            overrides.setdefault(recipe, []).extend(["--set", f"stages.{stage}.{slot}={table}"])
            if view not in accepted:
                wanted[recipe, f"stages.{stage}.{slot}.view"] = (
                    f"{key[1]} needs a {' or '.join(map(repr, accepted))} view here, got '{view}'"
                )
    reported = {}
    for recipe, sets in overrides.items():
        result = run_cli("validate", REPO_ROOT / "recipes" / f"{recipe}.toml", *sets)
        found = re.findall(r"(stages\.[\w.]+\.view): (.*)", result.output)
        reported.update({(recipe, key): message for key, message in found})
    assert reported == wanted
