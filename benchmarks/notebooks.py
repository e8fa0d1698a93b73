#!/usr/bin/env python3
"""How long the notebooks take under nbval (``make bench``), on the simulator and on real QEMU.

Runs the same nbval command as ``make test`` in a subprocess, once per backend (real QEMU
only where it is installed), and prints the wall time of each run and of the pair against
the course's goal: the whole nbval run under 90 s on the project's 2-core machine.
Nothing here asserts; a missed goal is printed as MISSED.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 90.0
QEMU_TOOLS = ("qemu-storage-daemon", "qemu-system-x86_64", "qemu-img", "qemu-io")
NBVAL = ["-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
         "-p", "no:cacheprovider", "-n", "auto", "--maxprocesses=2", "--dist", "loadfile",  # (make test's)
         "-q", "notebooks"]


def nbval_seconds(backend: str) -> tuple[float, str]:
    """Wall time of one nbval run of notebooks/ on ``backend``, and pytest's summary line."""
    env = dict(os.environ, BITLAB_BACKEND=backend, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *NBVAL], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return elapsed, lines[-1] if lines else f"exit {proc.returncode}"


def main() -> int:
    backends = ["sim"] + (["qemu"] if all(shutil.which(t) for t in QEMU_TOOLS) else [])
    notebooks = len(list((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")))
    print(f"\nnotebooks under nbval ({notebooks} notebooks; goal: whole run < {GOAL_S:.0f} s)")
    total = 0.0
    for backend in backends:
        seconds, summary = nbval_seconds(backend)
        total += seconds
        print(f"  nbval on {backend:4}  {seconds:6.1f} s   {summary}")
    if len(backends) == 1:
        print("  nbval on qemu  skipped: real QEMU not installed")
    verdict = "ok" if total < GOAL_S else "MISSED"
    print(f"  nbval total    {total:6.1f} s   {verdict} (goal < {GOAL_S:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
