"""Plugins through the real entry-point path: a third-party distribution on sys.path, a plugin
that fails to import, a misspelled hook, a duplicate component name, and capabilities declared
at registration (checked there; read by ``rlhf validate``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhf_plugins._engine.components import KINDS

THIRD_PARTY = """
from rlhf_plugins import RewardFunction, hookimpl


@hookimpl
def register_reward_functions(register):
    register("length-reward", length_reward, description="Longer is better, up to a cap.")


def length_reward(cap: int = 10) -> RewardFunction:
    def score(prompts, completions, **columns):
        return [float(min(len(c.split()), cap)) for c in completions]
    return score
"""

RECIPE = """
[recipe]
name = "third"

[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm" }
dataset = { use = "jsonl", path = "data.jsonl" }
"""


def plugins_by_name(run_cli) -> dict:
    result = run_cli("list-plugins", "--json")
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.output)}


def test_builtin_plugins_are_listed_with_their_components(run_cli):
    plugins = plugins_by_name(run_cli)
    assert plugins["sft"]["components"] == {"trainers": ["sft"]}
    assert plugins["hf-policies"]["components"]["policies"] == [
        "hf-causal-lm",
        "tiny-causal-lm",
    ]
    assert plugins["sft"]["distribution"] == "rlhf-plugins"
    assert set(plugins["sft"]) == {
        "name",
        "module",
        "distribution",
        "version",
        "hooks",
        "components",
        "error",
    }
    kinds = {hook.removeprefix("register_") for hook in KINDS.values()}
    for plugin in plugins.values():
        assert set(plugin["components"]) <= kinds, plugin
        assert all(isinstance(n, str) for names in plugin["components"].values() for n in names)
    assert plugins["ppo"]["components"] == {
        "trainers": ["ppo", "policy-gradient"],
        "advantage_estimators": [
            "gae",
            "grpo",
            "rloo",
            "reinforce++",
            "reinforce++-baseline",
            "remax",
        ],
        "policy_losses": ["ppo-clip", "gspo", "cispo"],
    }


def test_third_party_plugin_registers_through_entry_points(run_cli, plugin_dist):
    plugin_dist("rlhf-length", "rlhf_length", THIRD_PARTY, version="0.4.0")
    plugins = plugins_by_name(run_cli)
    info = plugins["rlhf-length"]
    assert info["error"] is None
    assert info["version"] == "0.4.0" and info["distribution"] == "rlhf-length"
    assert info["hooks"] == ["register_reward_functions"]
    assert info["components"] == {"reward_functions": ["length-reward"]}
    table = run_cli("list-plugins")
    assert "rlhf-length" in table.output and "length-reward" in table.output

    from rlhf_plugins._engine.registry import load_registry

    component = load_registry().get("reward_function", "length-reward")
    assert component.version == "0.4.0" and component.plugin == "rlhf-length"
    assert component.factory(cap=2)(["p", "p"], ["one", "one two three"]) == [1.0, 2.0]


def test_plugin_that_fails_to_import_is_recorded_not_fatal(
    run_cli, plugin_dist, write_recipe, sft_jsonl
):
    plugin_dist("rlhf-broken", "rlhf_broken", "import not_a_real_module\n")
    plugins = plugins_by_name(run_cli)
    assert "not_a_real_module" in plugins["rlhf-broken"]["error"]
    assert plugins["sft"]["error"] is None
    assert "ERROR" in run_cli("list-plugins").output
    assert run_cli("validate", write_recipe(RECIPE)).exit_code == 0


def test_recipe_using_a_failed_plugin_names_it(run_cli, plugin_dist, write_recipe, sft_jsonl):
    plugin_dist("rlhf-broken", "rlhf_broken", "raise RuntimeError('boom')\n", entry_name="broken")
    text = RECIPE.replace('use = "tiny-causal-lm"', 'use = "broken"')
    result = run_cli("validate", write_recipe(text))
    assert result.exit_code == 2
    assert "plugin 'broken' failed to load" in result.output and "boom" in result.output


def test_misspelled_hook_is_caught(run_cli, plugin_dist):
    source = "from rlhf_plugins import hookimpl\n\n@hookimpl\ndef register_trainer(register):\n    pass\n"
    plugin_dist("rlhf-typo", "rlhf_typo", source)
    error = plugins_by_name(run_cli)["rlhf-typo"]["error"]
    assert "unknown hook" in error and "register_trainer" in error


def test_duplicate_component_names_both_plugins(run_cli, plugin_dist, write_recipe, sft_jsonl):
    source = (
        "from rlhf_plugins import hookimpl\n\n@hookimpl\ndef register_trainers(register):\n"
        "    register('sft', lambda: None)\n"
    )
    plugin_dist("rlhf-dupe", "rlhf_dupe", source)
    plugins = plugins_by_name(run_cli)
    for owner in ("rlhf-dupe", "sft"):
        error = plugins[owner]["error"]
        assert "trainer 'sft' is registered by both" in error
        assert "plugin 'sft' (rlhf-plugins 0.1.0)" in error and "plugin 'rlhf-dupe'" in error
    result = run_cli("validate", write_recipe(RECIPE))
    assert result.exit_code == 2
    assert "stages.sft.trainer" in result.output and "rlhf-dupe" in result.output


CAPPED_TRAINER = """
from typing import Annotated

from rlhf_plugins import Dataset, Length, Policy, Views, hookimpl, max_length_setting


@hookimpl
def register_trainers(register):
    register(
        "capped",
        capped,
        description="A trainer that declares its capabilities.",
        sequence_length=max_length_setting,
        stage_rules=capped_rules,
    )


def capped(
    policy: Policy,
    dataset: Annotated[Dataset, Views("sft")],
    max_length: int | None = 600,
    words: str = "any",
):
    def run(stage):
        return {}
    return run


def capped_rules(slots, settings):
    if settings["words"] != "any" and slots["dataset"]["use"] == "jsonl":
        return [("trainer_settings.words", f"jsonl rows have no '{settings['words']}' words")]
    return []
"""

CAPPED_RECIPE = (
    RECIPE.replace("third", "capped").replace(
        '[stages.sft]\ntrainer = "sft"', '[stages.fit]\ntrainer = "capped"'
    )
    + "trainer_settings = SETTINGS\n"
)

BAD_CAPABILITY = """
from typing import Annotated

from rlhf_plugins import Dataset, Policy, Views, hookimpl, max_length_setting


@hookimpl
def register_HOOK(register):
    register("fine", lambda: None)
    register("bad-one", bad, description="Declares a capability wrongly.", CAPABILITY)


def bad():
    pass
"""


@pytest.mark.parametrize(
    ("hook", "capability", "message"),
    [
        (
            "trainers",
            "stage_rule=max_length_setting",
            "register() of trainer 'bad-one' got unknown keyword 'stage_rule' (did you mean "
            "'stage_rules'?); a trainer takes description, sequence_length, stage_rules",
        ),
        (
            "policies",
            "sequence_length=max_length_setting",
            "sequence_length is a capability of trainers and evaluators only; "
            "policy 'bad-one' cannot declare it",
        ),
        (
            "evaluators",
            "context_length=max_length_setting",
            "context_length is a capability of policies only; evaluator 'bad-one' cannot "
            "declare it",
        ),
        (
            "trainers",
            "sequence_length=512",
            "sequence_length of trainer 'bad-one' must be callable or None, got 512",
        ),
        (
            "evaluators",
            "def bad(dataset: Annotated[Dataset, Views()]):",
            "evaluator 'bad-one': Views() on parameter 'dataset' of bad must name the views it "
            'accepts, e.g. Views("prompts")',
        ),
        (
            "evaluators",
            'def bad(dataset: Annotated[Dataset, Views(["prompts"])]):',
            "evaluator 'bad-one': Views(['prompts']) on parameter 'dataset' of bad must name the "
            'views it accepts, e.g. Views("prompts")',
        ),
        (
            "trainers",
            'def bad(policy: Annotated[Policy | None, Views("prompts")] = None):',
            "trainer 'bad-one': parameter 'policy' of bad is a policy slot; Views(...) declares "
            "the views a dataset slot accepts",
        ),
        (
            "trainers",
            'def bad(steps: Annotated[int, Views("prompts")] = 1):',
            "trainer 'bad-one': parameter 'steps' of bad is no component slot; Views(...) "
            "declares the views a dataset slot accepts",
        ),
        (
            "policies",
            'def bad(dataset: Annotated[Dataset, Views("prompts")]):',
            "Views is a declaration of trainers and evaluators only; policy 'bad-one' cannot "
            "declare it (parameter 'dataset')",
        ),
    ],
    ids=[
        "misspelled",
        "wrong-kind",
        "policy-only",
        "not-callable",
        "views-naming-none",
        "views-not-strings",
        "views-on-a-policy-slot",
        "views-on-a-setting",
        "views-of-a-policy",
    ],
)
def test_a_bad_capability_is_the_plugins_error(
    run_cli, plugin_dist, write_recipe, sft_jsonl, hook, capability, message
):
    source = BAD_CAPABILITY.replace("HOOK", hook)
    if capability.startswith("def bad("):  # declared in the factory's signature
        source = source.replace(", CAPABILITY", "").replace("def bad():", capability)
    else:
        source = source.replace("CAPABILITY", capability)
    plugin_dist("rlhf-badcap", "rlhf_badcap", source)
    info = plugins_by_name(run_cli)["rlhf-badcap"]
    assert info["error"] == f"register_{hook} raised TypeError: {message}"
    assert info["components"] == {hook: ["fine"]}, "the refused component is not registered"
    listing = run_cli("list-plugins")
    assert listing.exit_code == 0 and "ERROR" in listing.output and message in listing.output

    kind, slot = {
        "trainers": ("trainer", "trainer"),
        "evaluators": ("evaluator", "evaluator"),
        "policies": ("policy", "policy"),
    }[hook]
    if kind == "policy":
        text = RECIPE.replace('use = "tiny-causal-lm"', 'use = "bad-one"')
    else:
        text = RECIPE.replace('trainer = "sft"', f'{kind} = "bad-one"')
    result = run_cli("validate", write_recipe(text))
    assert result.exit_code == 2, result.output
    assert f"stages.sft.{slot}" in result.output
    assert f"unknown {kind} 'bad-one'; plugin 'rlhf-badcap' failed to register it" in result.output
    assert message in result.output


def test_declared_sequence_length_stage_rules_and_views_drive_validate(
    run_cli, plugin_dist, write_recipe, sft_jsonl
):
    plugin_dist("rlhf-capped", "rlhf_capped", CAPPED_TRAINER)
    assert plugins_by_name(run_cli)["rlhf-capped"]["error"] is None

    from rlhf_plugins._engine.factories import describe
    from rlhf_plugins._engine.registry import load_registry

    component = load_registry().get("trainer", "capped")
    assert component.sequence_length.__name__ == "max_length_setting"
    assert component.stage_rules.__name__ == "capped_rules"
    assert describe(component.factory).views == {"dataset": ("sft",)}
    assert component.context_length is None
    assert not hasattr(component.factory, "sequence_length"), "nothing attached to the factory"

    def validate(settings: str):
        return run_cli("validate", write_recipe(CAPPED_RECIPE.replace("SETTINGS", settings)))

    too_long = validate("{}")
    assert too_long.exit_code == 2
    assert "stages.fit.trainer_settings" in too_long.output
    assert (
        "max_length = 600 needs 600 positions but policy 'tiny-causal-lm' (stages.fit.policy) "
        "has 512 (max_positions = 512)"
    ) in too_long.output

    ruled = validate('{ max_length = 128, words = "long" }')
    assert ruled.exit_code == 2
    assert "stages.fit.trainer_settings.words" in ruled.output
    assert "jsonl rows have no 'long' words" in ruled.output

    assert validate("{ max_length = 128 }").exit_code == 0, "every capability is satisfied"

    viewed = run_cli(
        "validate",
        write_recipe(CAPPED_RECIPE.replace("SETTINGS", "{ max_length = 128 }")),
        "--set",
        'stages.fit.dataset={ use = "tldr-synthetic", view = "prompts" }',
    )
    assert viewed.exit_code == 2
    assert "stages.fit.dataset.view: capped needs a 'sft' view here, got 'prompts'" in viewed.output
    listed = run_cli("list-plugins", "-v").output
    assert "    dataset: dataset component, required, view 'sft'" in listed


def test_cli_startup_does_not_import_torch():
    code = (
        "import sys\nfrom rlhf_plugins.cli import cli\n"
        "for args in (['--help'], ['list-plugins'], ['list-plugins', '--json']):\n"
        "    try:\n        cli.main(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', 'deepspeed', 'wandb')"
        " if m in sys.modules)\nprint('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:]
