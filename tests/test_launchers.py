"""Every QEMU we start has a QMP socket that is safe to connect to at once (see ``qmp_chardev``)."""

from __future__ import annotations

from pathlib import Path

from bitlab.backends.qemu import qmp_chardev

ROOT = Path(__file__).resolve().parent.parent


def test_qmp_chardev_waits_for_its_first_client() -> None:
    assert qmp_chardev("/w/q.sock") == "socket,id=qmp0,path=/w/q.sock,server=on,wait=on"
    assert qmp_chardev(Path("/w/m.sock"), "m") == "socket,id=m,path=/w/m.sock,server=on,wait=on"


def test_no_launcher_opens_a_monitor_without_waiting() -> None:
    """``wait=off`` monitors hung QEMU 7.2 at start-up in CI; every launcher goes through qmp_chardev."""
    sources = [p for d in ("bitlab", "tools", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 50
    needle = "server=on," + "wait=off"
    offenders = [str(p.relative_to(ROOT)) for p in sources if needle in p.read_text()]
    assert offenders == []
