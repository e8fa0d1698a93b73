"""A killed Python leaves its real-QEMU work directory behind; the next machine removes it."""

from __future__ import annotations

import os
import subprocess
import sys

from bitlab.backends.qemu import OWNER_FILE, WORKDIR_PREFIX, remove_stale_workdirs


def test_only_directories_of_dead_owners_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"{WORKDIR_PREFIX}stale"
    live = tmp_path / f"{WORKDIR_PREFIX}live"
    legacy = tmp_path / f"{WORKDIR_PREFIX}legacy"  # no owner file: not ours to judge
    other = tmp_path / "something-else"
    for d in (stale, live, legacy, other):
        d.mkdir()
        (d / "d0.qcow2").write_bytes(b"x")
    (stale / OWNER_FILE).write_text(dead.stdout.strip())
    (live / OWNER_FILE).write_text(str(os.getpid()))
    (other / OWNER_FILE).write_text(dead.stdout.strip())
    assert remove_stale_workdirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and legacy.exists() and other.exists()
