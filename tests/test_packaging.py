"""The wheel as ``pip install rlhf-plugins`` would install it: built from this tree, installed
non-editable into a fresh virtual environment, it ships the built-in plugins under one import
package, the recipes and their DeepSpeed configs, and runs a built-in recipe by name from an
empty directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def sh(*args: str, cwd: Path | None = None, timeout: int = 600) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def make_venv(path: Path) -> str:
    """A fresh virtual environment at ``path`` that also sees this interpreter's packages (torch,
    transformers, ...), wherever they are installed: the base interpreter, a venv or conda.
    ``--system-site-packages`` would show the *base* interpreter's, not an enclosing venv's, so
    a ``.pth`` file adds this interpreter's site directories after the new environment's own
    (their ``.pth`` files processed too). Returns the new environment's python."""
    import site

    sh(sys.executable, "-m", "venv", str(path))
    python = str(path / "bin" / "python")
    purelib = sh(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    ours = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [f"import site; site.addsitedir({d!r})" for d in ours if Path(d).is_dir()]
    (Path(purelib) / "zz_enclosing_environment.pth").write_text("\n".join(lines) + "\n")
    return python


@pytest.mark.slow
def test_the_wheel_runs_a_built_in_recipe_by_name(tmp_path):
    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        str(tmp_path / "dist"),
        str(REPO_ROOT),
    )
    (wheel,) = (tmp_path / "dist").glob("rlhf_plugins-*.whl")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(wheel))
    where = json.loads(
        sh(
            python,
            "-c",
            "import json, rlhf_plugins, rlhf_builtins.ppo as p; print(json.dumps([rlhf_plugins.__file__, p.__file__]))",
            cwd=tmp_path,
        )
    )
    assert all(str(venv) in path for path in where), f"imported from the checkout: {where}"
    rlhf = str(venv / "bin" / "rlhf")
    listed = sh(rlhf, "recipes", cwd=tmp_path)
    assert "tiny_sft" in listed and "tldr_ppo" in listed
    empty = tmp_path / "empty"
    empty.mkdir()
    sh(rlhf, "validate", "tldr_ppo", cwd=empty)  # its DeepSpeed config ships too
    out = sh(rlhf, "run", "tiny_sft", "--set", "stages.sft.trainer_settings.max_steps=3", cwd=empty)
    assert "finished tiny_sft" in out
    assert (empty / "runs" / "tiny_sft" / "sft" / "model.safetensors").is_file()
    sh(rlhf, "cp", "tiny_ppo", "mine.toml", cwd=empty)
    assert (empty / "mine.toml").read_text().startswith("#:schema")
