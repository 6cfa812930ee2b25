"""Recipe validation through ``rlhf validate``: every malformed recipe names its offending key,
all problems are reported together, and the exit code is 2."""

from __future__ import annotations

import pytest

GOOD = """
[recipe]
name = "demo"
seed = 7

[stages.sft]
trainer = "sft"
policy = { use = "tiny-causal-lm", n_layer = 2 }
dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }
trainer_settings = { learning_rate = 1e-3, max_steps = 5 }

[stages.again]
trainer = "sft"
needs = ["sft"]
policy = { use = "hf-causal-lm", from_stage = "sft" }
dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }
"""

MALFORMED = [
    # (id, text replacement (old, new) applied to GOOD, offending key, message fragment)
    ("toml-syntax", ("seed = 7", "seed = = 7"), "", "not valid TOML"),
    (
        "unknown-top-level",
        ("[recipe]", "[recipes]\nx = 1\n[recipe]"),
        "recipes",
        "did you mean 'recipe'",
    ),
    ("recipe-name-type", ('name = "demo"', "name = 3"), "recipe.name", "expected str, got int 3"),
    ("recipe-name-chars", ('name = "demo"', 'name = "a b"'), "recipe.name", "must be a name"),
    ("seed-type", ("seed = 7", 'seed = "seven"'), "recipe.seed", "expected int"),
    ("recipe-unknown-key", ("seed = 7", "seed = 7\nsed = 1"), "recipe.sed", "did you mean 'seed'"),
    (
        "no-trainer",
        ('trainer = "sft"\npolicy = { use = "tiny', 'policy = { use = "tiny'),
        "stages.sft",
        "exactly one of 'trainer' or 'evaluator'",
    ),
    (
        "unknown-trainer",
        ('trainer = "sft"\npolicy = { use = "tiny', 'trainer = "stf"\npolicy = { use = "tiny'),
        "stages.sft.trainer",
        "did you mean 'sft'",
    ),
    (
        "unknown-need",
        ('needs = ["sft"]', 'needs = ["sfft"]'),
        "stages.again.needs",
        "did you mean 'sft'",
    ),
    (
        "needs-type",
        ('needs = ["sft"]', 'needs = "sft"'),
        "stages.again.needs",
        "list of stage names",
    ),
    (
        "unknown-policy",
        ('use = "tiny-causal-lm"', 'use = "tiny-causal"'),
        "stages.sft.policy.use",
        "did you mean 'tiny-causal-lm'",
    ),
    (
        "missing-use",
        ('policy = { use = "tiny-causal-lm", n_layer = 2 }', "policy = { n_layer = 2 }"),
        "stages.sft.policy",
        "with 'use'",
    ),
    (
        "unknown-component-setting",
        ("n_layer = 2", "n_layers = 2"),
        "stages.sft.policy.n_layers",
        "did you mean 'n_layer'",
    ),
    (
        "component-setting-type",
        ("n_layer = 2", 'n_layer = "two"'),
        "stages.sft.policy.n_layer",
        "expected int",
    ),
    (
        "literal-choice",
        ("n_layer = 2", 'architecture = "gptk"'),
        "stages.sft.policy.architecture",
        "did you mean 'gptj'",
    ),
    (
        "unknown-trainer-setting",
        ("learning_rate = 1e-3", "learnig_rate = 1e-3"),
        "stages.sft.trainer_settings.learnig_rate",
        "did you mean 'learning_rate'",
    ),
    (
        "trainer-setting-type",
        ("max_steps = 5", "max_steps = 5.5"),
        "stages.sft.trainer_settings.max_steps",
        "expected int",
    ),
    (
        "missing-file",
        (
            'path = "data.jsonl", columns = { prompt = "q", completion = "a" } }\ntrainer_settings',
            'path = "missing.jsonl" }\ntrainer_settings',
        ),
        "stages.sft.dataset.path",
        "file not found",
    ),
    (
        "missing-required-setting",
        (
            'dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }\ntrainer_settings',
            'dataset = { use = "jsonl" }\ntrainer_settings',
        ),
        "stages.sft.dataset.path",
        "missing required setting",
    ),
    (
        "missing-required-slot",
        (
            'dataset = { use = "jsonl", path = "data.jsonl", columns = { prompt = "q", completion = "a" } }\ntrainer_settings',
            "trainer_settings",
        ),
        "stages.sft.dataset",
        "missing required dataset",
    ),
    (
        "unknown-stage-key",
        ('policy = { use = "tiny', 'polcy = { use = "tiny'),
        "stages.sft.polcy",
        "did you mean 'policy'",
    ),
    (
        "from-stage-unknown",
        ('from_stage = "sft"', 'from_stage = "stf"'),
        "stages.again.policy.from_stage",
        "did you mean 'sft'",
    ),
    (
        "from-stage-not-accepted",
        ("n_layer = 2 }", 'n_layer = 2, from_stage = "again" }'),
        "stages.sft.policy.from_stage",
        "does not read another stage",
    ),
    (
        "cycle",
        (
            'trainer = "sft"\npolicy = { use = "tiny',
            'trainer = "sft"\nneeds = ["again"]\npolicy = { use = "tiny',
        ),
        "needs",
        "dependency cycle",
    ),
    (
        "launch-processes",
        ("[stages.sft]", "[launch]\nnum_processes = 0\n\n[stages.sft]"),
        "launch.num_processes",
        "must be >= 1, got 0",
    ),
    (
        "launch-precision",
        ("[stages.sft]", '[launch]\nmixed_precision = "bf61"\n\n[stages.sft]'),
        "launch.mixed_precision",
        "did you mean 'bf16'",
    ),
    (
        "deepspeed-missing",
        ("[stages.sft]", '[launch]\ndeepspeed = "ds.json"\n\n[stages.sft]'),
        "launch.deepspeed",
        "file not found",
    ),
    (
        "wrong-settings-table",
        ("trainer_settings = {", "evaluator_settings = {"),
        "stages.sft.evaluator_settings",
        "use 'trainer_settings'",
    ),
    (
        "logging-type",
        ("[stages.sft]", '[logging]\nloggers = "wandb"\n\n[stages.sft]'),
        "logging.loggers",
        "expected list",
    ),
    (
        "logging-unknown-logger",
        ("[stages.sft]", '[logging]\nloggers = [{ use = "wandbb" }]\n\n[stages.sft]'),
        "logging.loggers[0].use",
        "unknown logger 'wandbb'; did you mean 'wandb'?",
    ),
    ("stage-name", ("[stages.again]", '[stages."a b"]'), "stages.a b", "stage names use"),
]


@pytest.fixture
def recipe_dir(tmp_path, sft_jsonl):
    return tmp_path


def test_good_recipe_validates(run_cli, write_recipe, recipe_dir):
    result = run_cli("validate", write_recipe(GOOD))
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and "sft -> again" in result.output


@pytest.mark.parametrize(
    ("old_new", "key", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_recipe_names_the_key(run_cli, write_recipe, recipe_dir, old_new, key, fragment):
    old, new = old_new
    assert old in GOOD, f"test bug: {old!r} not in the base recipe"
    path = write_recipe(GOOD.replace(old, new, 1))
    result = run_cli("validate", path)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert f"{key}:" in result.output or (not key and fragment in result.output), result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_every_problem_is_reported_at_once(run_cli, write_recipe, recipe_dir):
    text = (
        GOOD.replace("n_layer = 2", "n_layers = 2")
        .replace("max_steps = 5", "max_steps = 'x'")
        .replace('from_stage = "sft"', 'from_stage = "nope"')
    )
    result = run_cli("validate", write_recipe(text))
    assert result.exit_code == 2
    assert "3 problems" in result.output
    for key in (
        "stages.sft.policy.n_layers",
        "stages.sft.trainer_settings.max_steps",
        "stages.again.policy.from_stage",
    ):
        assert key in result.output


def test_set_overrides_are_toml_literals(run_cli, write_recipe, recipe_dir):
    path = write_recipe(GOOD)
    bad = run_cli("validate", path, "--set", "stages.sft.trainer_settings.max_steps='ten'")
    assert bad.exit_code == 2 and "stages.sft.trainer_settings.max_steps" in bad.output
    good = run_cli(
        "validate",
        path,
        "--set",
        "stages.sft.trainer_settings.max_steps=10",
        "--set",
        "stages.sft.policy.architecture=gpt2",
    )
    assert good.exit_code == 0, good.output


def test_set_rejects_malformed_override(run_cli, write_recipe, recipe_dir):
    result = run_cli("validate", write_recipe(GOOD), "--set", "no_equals_sign")
    assert result.exit_code == 2
    assert "--set expects KEY.PATH=VALUE" in result.output


def test_missing_recipe_file(run_cli):
    result = run_cli("validate", "nope.toml")
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


def test_recipe_that_is_not_utf8(run_cli, tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[recipe]\nname = "caf\xe9"\n')
    result = run_cli("validate", path)
    assert result.exit_code == 2
    assert "not valid TOML" in result.output and "Traceback" not in result.output
