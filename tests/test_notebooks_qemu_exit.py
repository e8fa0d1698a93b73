"""A notebook kernel that shuts down without closing its real-QEMU machines leaves no QEMU behind."""

from __future__ import annotations

import os
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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\\nState:\\tZ" in status.read_text())


def stopped(pids: list[int]) -> list[int]:
    """The pids still running after a grace period."""
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


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
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT + "import time\ntime.sleep(60)\n"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.kill()
        proc.wait()
    assert stopped(pids) == []
