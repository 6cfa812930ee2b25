"""Plugins through the real entry-point path: a third-party distribution on sys.path, a plugin
that fails to import, a misspelled hook and a duplicate component name."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert plugins["ppo"]["components"] == {"trainers": ["ppo"]}


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
