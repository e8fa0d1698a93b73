"""The peek episodes of the random scenarios (bitlab/conformance/gen_peek.py): qemu-img ``-U`` reading images QEMU
holds open read-write, on their own stream (the rest of every scenario stays as it was) and identical on real QEMU
7.2."""

from __future__ import annotations

import json
import re

import pytest

from bitlab.conformance import gen_peek, generator
from bitlab.conformance.gen_peek import peek_scenario
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps

MINE = re.compile(r'"pk[tj]?\d+"|pk[tc]?\d+\.(qcow2|img)')


def _mine(step: dict) -> bool:
    return MINE.search(json.dumps(step)) is not None


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(26001, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "PEEK_CHANCE", 0.0)
    without = [random_scenario(26001, i)["steps"] for i in range(12)]
    assert sum(any(map(_mine, steps)) for steps in with_episodes) == 6
    for steps, base in zip(with_episodes, without):
        assert all(_mine(s) or "settle-jobs" in s or "flush" in s for s in added_steps(steps, base))
    assert not any(_mine(s) for steps in without for s in steps)


def test_episodes_read_without_the_lock_and_back_up_with_one_worker():
    steps = [s for i in range(40) for s in peek_scenario(26002, i)["steps"]]
    reads = [s["qemu-img"] for s in steps if "qemu-img" in s and "-U" in s["qemu-img"]]
    assert {r[0] for r in reads} == {"map", "check", "compare", "convert", "measure"}
    backups = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-backup"]
    assert backups and all(b["x-perf"] == {"max-workers": 1} for b in backups)
    writes = [s["write"] for s in steps if "write" in s and s["write"]["node"].startswith("pk")]
    assert {w["flush"] for w in writes} == {True, False}


@pytest.mark.qemu
@pytest.mark.parametrize("index", range(8))
def test_peek_scenarios_as_in_qemu(index):
    assert [d.render() for d in check(peek_scenario(26003, index))] == []


@pytest.mark.qemu
@pytest.mark.parametrize("index", [16, 80])
def test_requests_taken_together_write_back_as_in_qemu(index):
    """Steps whose writes bitlab merges as one batch (nothing read between them) across a new L2 table's
    write-back: a zero write's flags before it (80), a data link before a later request's zeroing allocates a
    table (16). Both differed until the write-back inside a batch kept the links and flags made before it."""
    assert [d.render() for d in check(peek_scenario(25022, index))] == []


def _stream_steps(monkeypatch, seed: int, n: int, chance: str) -> list[list[dict]]:
    """For each of ``n`` peek scenarios, the steps a stream adds (``chance``: gen_peek's name for its chance)."""
    with_stream = [peek_scenario(seed, i)["steps"] for i in range(n)]
    monkeypatch.setattr(gen_peek, chance, 0.0)
    return [added_steps(steps, peek_scenario(seed, i)["steps"]) for i, steps in enumerate(with_stream)]


def test_resizes_only_add_steps_at_an_episode_end(monkeypatch):
    """The resizes' own stream: without them every scenario is what it was, but for the steps they add."""
    resized = 0
    for extra in _stream_steps(monkeypatch, 26110, 20, "RESIZE_CHANCE"):
        resized += bool(extra)
        kinds = [next(iter(s)) for s in extra]
        assert kinds == ["write", "qmp", "qemu-img", "qemu-img", "write", "qemu-img"] * (len(extra) // 6)
        assert all(s["write"]["flush"] is False for s in extra if "write" in s)
        assert all(s["qmp"]["execute"] == "block_resize" for s in extra if "qmp" in s)
    assert resized == 10


@pytest.mark.qemu
@pytest.mark.parametrize("index", [6, 9, 13])
def test_resized_images_are_written_back_as_in_qemu(index):
    """A qcow2 resize ends by writing both caches back (qcow2_update_options): these differed until it did."""
    assert [d.render() for d in check(peek_scenario(26110, index))] == []


def test_fills_only_add_steps_at_an_episode_start(monkeypatch):
    """The fills' own stream: a 4 KiB-cluster episode may first write its whole disk, 1 MiB a write, flushed but
    the last maybe; without them every scenario is what it was, but for those steps."""
    filled = 0
    for extra in _stream_steps(monkeypatch, 26201, 30, "FILL_CHANCE"):
        filled += len(extra) // 8
        assert len(extra) % 8 == 0 and all(s["write"]["length"] == 1 << 20 for s in extra)
        assert all(s["write"]["flush"] for k, s in enumerate(extra) if k % 8 != 7)
    assert filled == 5


@pytest.mark.qemu
@pytest.mark.parametrize("index", [18, 41, 49])
def test_filled_images_as_in_qemu(index):
    """A filled disk's last write needs a new refcount block (18: it wrote the caches back); a shrink of a filled disk
    frees the refcount block left counting nothing (41, 49: qcow2_shrink_reftable). These differed before."""
    assert [d.render() for d in check(peek_scenario(26201, index))] == []
