"""The seed scenario helper and the terminal demo."""

import json

from bitlab.cli import demo, main
from bitlab.scenarios import run_seed


def test_individual_keeps_drive0_and_deletes_drive1():
    out = run_seed("individual")
    assert out.keep == ["d0-incr-1.qcow2"] and out.delete == ["d1-incr-1.qcow2"]
    d0, d1 = out.drives["drive0"], out.drives["drive1"]
    assert (d0.count_before, d0.count_after) == (327680, 0)
    assert (d1.count_before, d1.count_after) == (131072, 131072)
    assert d1.error == "Input/output error" and d0.end == "BLOCK_JOB_COMPLETED"
    assert d0.statuses == ["created", "running", "paused", "running", "waiting", "pending", "concluded", "null"]


def test_grouped_deletes_both_and_keeps_bitmaps():
    out = run_seed("grouped")
    assert out.keep == [] and sorted(out.delete) == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]
    assert out.drives["drive0"].end == "BLOCK_JOB_CANCELLED"
    assert [d.count_after for d in out.drives.values()] == [327680, 131072]


def test_no_failure_both_valid_in_both_modes():
    for mode in ("individual", "grouped"):
        out = run_seed(mode, failing=None)
        assert sorted(out.keep) == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]
        assert [d.count_after for d in out.drives.values()] == [0, 0]


def test_demo_text_and_json(capsys):
    text = demo(width=140)
    assert "completion-mode: individual" in text and "completion-mode: grouped" in text
    assert "keep:   d0-incr-1.qcow2" in text
    assert "CANCELLED len=327680 offset=327680" in text
    left = [line.split(" | ")[0].strip() for line in text.splitlines() if " | " in line]
    right = [line.split(" | ")[1].strip() for line in text.splitlines() if " | " in line]
    assert left[left.index("next incremental (bitlab.chain.advise):") + 1:][:4] == [
        "drive0 on top of d0-incr-1.qcow2", "drive1 on top of d1-full.qcow2",
        "proof (restored through the backing chain):", "d0-incr-1.qcow2: restores exactly"]
    assert right[right.index("next incremental (bitlab.chain.advise):") + 1:][:4] == [
        "drive0 on top of d0-full.qcow2", "drive1 on top of d1-full.qcow2",
        "proof (restored through the backing chain):", "-"]
    assert main(["demo", "--json", "--fail", "drive0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["individual"]["keep"] == ["d1-incr-1.qcow2"]
    assert data["individual"]["drives"]["drive0"]["next_base"] == "d0-full.qcow2"
    assert data["individual"]["drives"]["drive1"]["next_base"] == "d1-incr-1.qcow2"
    assert data["grouped"]["delete"] == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]


def test_python_dash_m_bitlab_is_the_bitlab_command():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bitlab", "demo", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(_demo_json())


def _demo_json() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--json"]) == 0
    return out.getvalue()
