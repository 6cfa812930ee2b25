"""examples/rlhf-orpo as a user installs it: pip builds its wheel, pip installs that into a fresh
virtual environment (the dependencies come from this interpreter's site-packages), and there
rlhf lists it and its own tests pass, tiny recipe included. This environment is left as it was."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.test_packaging import make_venv, sh

EXAMPLE = REPO_ROOT / "examples" / "rlhf-orpo"


@pytest.mark.slow
def test_the_example_plugin_installs_with_pip_and_its_tests_pass(tmp_path):
    source = tmp_path / "rlhf-orpo"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    dist = tmp_path / "dist"
    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        str(source),
    )
    (wheel,) = dist.glob("rlhf_orpo-*.whl")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    sh(python, "-m", "pip", "install", "-q", "--no-deps", str(wheel))
    where = sh(python, "-c", "import rlhf_orpo; print(rlhf_orpo.__file__)", cwd=tmp_path)
    assert str(venv) in where, where
    listed = sh(python, "-m", "rlhf_plugins.cli", "list-plugins", cwd=tmp_path)
    assert "length-penalty" in listed and "orpo" in listed.split()
    sh(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests"), cwd=tmp_path)
    assert importlib.util.find_spec("rlhf_orpo") is None, "installed into the venv only"
