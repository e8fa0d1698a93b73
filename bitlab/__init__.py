"""bitlab: a faithful simulation of QEMU 7.2's dirty bitmaps, backups and QMP transactions."""

__version__ = "0.1.0"

from .errors import QMPError  # noqa: E402
from .machine import Machine  # noqa: E402
from .qemu_img import QemuImgError, QemuImgOutput  # noqa: E402
from .units import format_size, parse_size  # noqa: E402

__all__ = ["Machine", "QMPError", "QemuImgError", "QemuImgOutput", "format_size", "parse_size", "__version__"]
