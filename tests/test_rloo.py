"""The ``rloo`` trainer (TRL's RLOOTrainer) through the ``rlhf`` CLI on the toy prompts and
reward; it shares ``grpo``'s stage (tests/test_grpo.py covers resume, the reward slots, ranks,
DeepSpeed and LoRA through it), so these tests cover what differs: RLOO's config and rules."""

from __future__ import annotations

from tests.test_grpo import records, state


def test_rloo_trains_with_its_kl_penalty_and_saves_a_plain_causal_lm(
    grpo_recipe, run_cli, tmp_path
):
    from transformers import AutoModelForCausalLM

    recipe = grpo_recipe(trainer="rloo", reward_clip_range=[-1.0, 1.0], normalize_advantages=True)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "toy" / "rloo"
    logged = [r for r in records(out) if "reward/mean" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for key in ("reward/mean", "reward/std", "kl", "loss", "learning_rate"):
        assert key in logged[0], key
    final = state(out)["metrics"]
    assert final["steps"] == 4 and "kl" in final, "beta is 0.05 by default"
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (out / "reference" / "model.safetensors").is_file()


def test_validate_reports_rloo_problems_at_once(grpo_recipe, run_cli):
    recipe = grpo_recipe(trainer="rloo", reward_clip_range=[2.0, 1.0])
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    assert "reward_clip_range must be [min, max] with min <= max, got [2.0, 1.0]" in result.output

    recipe = grpo_recipe(trainer="rloo", num_generations=1, beta=-0.1, loss_type="dapo")
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    assert "stages.rloo.trainer_settings.num_generations: must be >= 2, got 1" in result.output
    assert "stages.rloo.trainer_settings.beta: must be >= 0" in result.output
    assert "stages.rloo.trainer_settings.loss_type: unknown setting" in result.output


def test_a_wrong_view_is_a_validate_error(grpo_recipe, run_cli, tmp_path):
    recipe = grpo_recipe(trainer="rloo")
    text = recipe.read_text().replace(
        'dataset = { use = "ppo-toy-prompts", rows = 32 }',
        'dataset = { use = "tldr-synthetic", view = "comparisons", num_examples = 8 }',
    )
    recipe.write_text(text)
    result = run_cli("validate", recipe)
    assert result.exit_code == 2
    assert "stages.rloo.dataset.view: rloo needs a 'prompts' view here, got 'comparisons'" in (
        result.output
    )
