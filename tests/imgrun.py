"""qemu-img's outcome as the qemu-img tests compare it on both backends: what varies from host to host or run to
run (disk size, QEMU's automatic node numbers) masked."""

from __future__ import annotations

import re
from typing import Any

from bitlab import QemuImgError

AUTO = re.compile(r"#block\d+")  # automatic node names: QEMU's numbers vary from run to run
DISK = re.compile(r"disk size: .*")  # what the host file system allocates


def img(vm: Any, *args: str) -> tuple:
    """``("ok", stdout)`` or ``("err", stderr, exit status)`` of ``qemu-img ARGS`` on ``vm``."""
    try:
        return ("ok", DISK.sub("disk size: N", vm.qemu_img(*args)))
    except QemuImgError as err:
        return ("err", AUTO.sub("#blockN", err.stderr), err.returncode)
