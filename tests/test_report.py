"""``report.html``: written at the end of every run and by ``rlhf report``, self-contained
(no network), and checked in a real headless Chromium: it loads without errors, every image
decodes and a screenshot is not blank."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.test_core_run import RECIPE

EVALUATOR = """
import json
from rlhf_plugins import hookimpl


@hookimpl
def register_evaluators(register):
    register("fake-eval", fake_eval)


def fake_eval():
    def run(stage):
        policies = {
            label: {
                "policy": label,
                "metrics": {"reward": reward, "kl": kl, "rouge1": 0.3},
                "samples": [{"prompt": "POST: p\\nTL;DR:", "generated": f" {label} says {i}"} for i in range(3)],
            }
            for label, reward, kl in (("sft", 0.1, 0.0), ("ppo", 1.2, 3.5))
        }
        path = stage.output_dir / "eval.json"
        path.write_text(json.dumps({"policies": policies}))
        stage.evaluation_written(path, {"ppo/reward": 1.2})
        return {"ppo/reward": 1.2}
    return run
"""

CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "checked";
  out.textContent = JSON.stringify({
    errors: window.__errors,
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture
def run_dir(run_cli, plugin_dist, write_recipe, sft_jsonl, tmp_path):
    plugin_dist("rlhf-fake-eval", "rlhf_fake_eval", EVALUATOR)
    text = (
        RECIPE.split("[stages.polish]")[0]
        + '[stages.eval]\nevaluator = "fake-eval"\nneeds = ["sft"]\n'
    )
    result = run_cli("run", write_recipe(text))
    assert result.exit_code == 0, result.output
    assert "report: runs/demo/report.html" in result.output
    return tmp_path / "runs" / "demo"


def chromium_run(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_report_is_self_contained_and_complete(run_dir, run_cli):
    page = (run_dir / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page loads nothing remote"
    assert page.count("data:image/png;base64,") >= 3  # curves of sft, reward vs KL
    for text in ('alt="sft: loss"', 'alt="reward vs KL"', "ppo says 0", "rlhf-fake-eval 1.2.3"):
        assert text in page, text
    assert "## eval (finished)" in (run_dir / "report.md").read_text()
    again = run_cli("report", run_dir)
    assert again.exit_code == 0 and "report.html" in again.output


def test_chromium_loads_the_report_decodes_every_image_and_draws_it(run_dir, chromium, tmp_path):
    page = (run_dir / "report.html").read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1))
    dom = chromium_run(chromium, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="checked">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["errors"] == []
    assert result["images"] >= 3 and result["decoded"] == result["images"], result

    shot = tmp_path / "shot.png"
    chromium_run(
        chromium,
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        (run_dir / "report.html").as_uri(),
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05, "the screenshot is blank"


def test_a_rerun_stage_keeps_its_place_in_the_recipe_order(run_cli, write_recipe, sft_jsonl):
    """``--only sft --force`` after a whole run: sft starts last, yet the report, its resolved
    recipe and ``rlhf runs`` list the stages as the recipe does."""
    recipe = write_recipe(RECIPE)
    assert run_cli("run", recipe).exit_code == 0
    result = run_cli("run", recipe, "--only", "sft", "--force")
    assert result.exit_code == 0, result.output
    run_dir = recipe.parent / "runs" / "demo"
    text = (run_dir / "report.md").read_text()
    assert text.index("## sft (") < text.index("## polish (")
    page = (run_dir / "report.html").read_text()
    resolved = page[page.index("Resolved recipe") :]
    assert resolved.index("&quot;sft&quot;") < resolved.index("&quot;polish&quot;")
    listed = [line.split()[1] for line in run_cli("runs").output.splitlines()[1:] if line.strip()]
    assert listed == ["sft", "polish"]
