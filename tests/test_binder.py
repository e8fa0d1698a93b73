"""Binder's environment: binder/requirements.txt installs into a fresh venv and runs notebook 00 there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")


def requirement_lines() -> list[str]:
    return [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_requirements_are_pinned_and_install_bitlab() -> None:
    lines = requirement_lines()
    assert "." in lines  # repo2docker installs from the repository root
    loose = [line for line in lines if line != "." and not PIN.match(line)]
    assert loose == []
    names = {PIN.match(line).group(1).lower() for line in lines if line != "."}
    deps = ["bitarray", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "ipykernel", "qemu.qmp"]
    assert [d for d in deps if d not in names] == []


def test_runtime_and_apt() -> None:
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    apt = (BINDER / "apt.txt").read_text().split()
    assert {"qemu-system-common", "qemu-utils"} <= set(apt)


def checked_outputs(nb: dict) -> list[str]:
    """The text outputs of the cells nbval compares (# NBVAL_CHECK_OUTPUT)."""
    texts = []
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and source.startswith("# NBVAL_CHECK_OUTPUT"):
            parts = []
            for out in cell.get("outputs", []):
                text = out.get("text") or out.get("data", {}).get("text/plain", "")
                parts.append("".join(text) if isinstance(text, list) else text)
            texts.append("".join(parts))
    return texts


@pytest.mark.binder
def test_fresh_venv_runs_notebook_00(tmp_path: Path) -> None:
    """What Binder does: a clean Python, ``pip install -r binder/requirements.txt`` from the repository
    root, then the start notebook, executed by that environment's own Jupyter and kernel."""
    repo = tmp_path / "repo"
    for name in ("bitlab", "binder", "notebooks"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BITLAB_BACKEND", "VIRTUAL_ENV")}
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "-r", "binder/requirements.txt"],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    out = tmp_path / "out"
    run = subprocess.run([str(venv / "bin" / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                          "--output-dir", str(out), "notebooks/00-start-here.ipynb"],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    executed = json.loads((out / "00-start-here.ipynb").read_text())
    stored = json.loads((ROOT / "notebooks" / "00-start-here.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    assert checked_outputs(executed) == checked_outputs(stored)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import bitlab; print(bitlab.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv))
