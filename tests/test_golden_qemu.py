"""bitlab against real QEMU 7.2: replay transcripts recorded on qemu-storage-daemon.

tests/golden/*.json were recorded by tools/capture_golden.py. Every step's reply must
match exactly, except the few listed with a reason in tests/golden_replay.py. The
``qemu`` tier re-records them on this machine and checks that real QEMU still says
exactly what the committed files say.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import golden_replay as g

CASES = [(group, sc["name"]) for group in g.groups() for sc in g.scenarios(group)]


def _scenario(group: str, name: str) -> dict:
    return next(sc for sc in g.scenarios(group) if sc["name"] == name)


@pytest.mark.parametrize("group,name", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_replay_matches_real_qemu(group, name):
    """Every reply, and every job's event sequence (len, offset, errors included)."""
    scenario = _scenario(group, name)
    events: list = []
    unexplained = [(i, step, want, got) for i, step, want, got in g.replay(scenario, events)
                   if g.known_difference(name, i, scenario["steps"][i]) is None]
    assert not unexplained, json.dumps(unexplained[0], indent=1)[:3000]
    if name not in g.DIFFERENT_SCENARIOS:
        assert g.compare_jobs(g.golden_events(scenario), events) == {}


def test_known_differences_still_differ():
    """A listed difference that now matches must be taken off the list."""
    listed = set()
    differing = set()
    for group, name in CASES:
        scenario = _scenario(group, name)
        bad = {i for i, *_ in g.replay(scenario)}
        for i, rec in enumerate(scenario["steps"]):
            reason = g.known_difference(name, i, rec)
            if reason is not None and name not in g.DIFFERENT_SCENARIOS:
                listed.add((name, i))
                if i in bad:
                    differing.add((name, i))
    assert listed - differing == set()


def test_conformance_count():
    """Most steps must be covered exactly; print the figure for the record."""
    total = matched = 0
    for group, name in CASES:
        scenario = _scenario(group, name)
        bad = {i for i, *_ in g.replay(scenario)}
        total += len(scenario["steps"])
        matched += len(scenario["steps"]) - len(bad)
    print(f"golden conformance: {matched}/{total} steps identical to QEMU 7.2")
    assert total >= 3373 and matched >= 3368  # 3368/3373: the 5 others are listed in golden_replay.py


@pytest.mark.qemu
def test_golden_files_are_still_what_real_qemu_says(tmp_path: Path):
    """Re-record every transcript on this machine's QEMU and compare with the committed ones."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "tools" / "capture_golden.py"), "-o", str(tmp_path), "-j", "2"],
                   check=True, cwd=root, timeout=300, capture_output=True)
    for group in g.groups():
        fresh = json.loads((tmp_path / f"{group}.json").read_text())["scenarios"]
        committed = g.scenarios(group)
        assert [s["name"] for s in fresh] == [s["name"] for s in committed]
        for new, old in zip(fresh, committed):
            for i, (a, b) in enumerate(zip(new["steps"], old["steps"])):
                assert a["reply"] == b["reply"], f"{group}/{new['name']}#{i}: QEMU now says {a['reply']}"
