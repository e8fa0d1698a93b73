"""A notebook kernel that shuts down without closing its real-QEMU machines leaves no QEMU behind."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
from bitlab import Machine
vm = Machine(backend="qemu")
vm.add_drive("drive0", "1M")
other = Machine(backend="qemu")
other.qmp("query-block")
print(vm._proc.pid, other._proc.pid, flush=True)
"""


def stopped(pids: list[int], grace: float = 10.0) -> list[int]:
    """The pids still running after a grace period: each process's pidfd becomes readable when it
    ends, so this waits on those events instead of polling."""
    assert len(pids) == 2
    fds = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            pass  # already gone
    try:
        deadline = time.monotonic() + grace
        waiting = dict(fds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(waiting.values()), [], [], left)
            waiting = {pid: fd for pid, fd in waiting.items() if fd not in ready}
        return sorted(waiting)
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.mark.qemu
def test_qemu_stops_when_python_exits_without_close() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BITLAB_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    assert stopped([int(p) for p in out.stdout.split()]) == []


@pytest.mark.qemu
def test_qemu_stops_when_a_notebook_kernel_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("BITLAB_BACKEND", raising=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SCRIPT)])
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert stopped([int(p) for p in "".join(nb.cells[0].outputs[0]["text"]).split()]) == []


@pytest.mark.qemu
def test_qemu_stops_when_its_python_is_killed() -> None:
    """nbval stops its kernels with SIGKILL: no atexit runs, yet QEMU must not outlive them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BITLAB_BACKEND", None)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT + "import sys\nsys.stdin.read()\n"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # waits until killed
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.kill()
        proc.wait()
    assert stopped(pids) == []
