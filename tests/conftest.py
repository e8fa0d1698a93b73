"""Shared fixtures and the real-QEMU tier switch."""

from __future__ import annotations

import os
import shutil

import pytest

from bitlab import Machine
from bitlab.block import info, perms

# Every answer bitlab's caches give is checked against the uncached answer (AssertionError if stale).
info.VERIFY_CACHE = perms.VERIFY_CACHE = True

QEMU_TOOLS = ("qemu-storage-daemon", "qemu-system-x86_64", "qemu-img", "qemu-io")


def qemu_missing() -> str | None:
    missing = [tool for tool in QEMU_TOOLS if shutil.which(tool) is None]
    if missing:
        return ("real QEMU 7.2 not installed (missing " + ", ".join(missing) + "): "
                "apt-get install --no-install-recommends qemu-system-common qemu-utils qemu-system-x86")
    return None


@pytest.fixture(autouse=True)
def _qemu_gate(request):
    """Tests marked ``qemu`` skip without real QEMU, or fail when BITLAB_REQUIRE_QEMU=1."""
    if request.node.get_closest_marker("qemu") is None:
        return
    reason = qemu_missing()
    if reason is None:
        return
    if os.environ.get("BITLAB_REQUIRE_QEMU") == "1":
        pytest.fail("BITLAB_REQUIRE_QEMU=1 but " + reason)
    pytest.skip(reason)


@pytest.fixture
def vm() -> Machine:
    return Machine()


def add_qcow2(vm: Machine, name: str, size: str = "64M", filename: str | None = None) -> None:
    filename = filename or f"{name}.qcow2"
    vm.qemu_img("create", "-f", "qcow2", filename, size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": filename}})


@pytest.fixture
def qvm() -> Machine:
    """A machine with a 64 MiB qcow2 node 'drive0'."""
    vm = Machine()
    add_qcow2(vm, "drive0")
    return vm
