"""QMP errors as QEMU reports them: ``{"class": ..., "desc": ...}``."""

from __future__ import annotations


class QMPError(Exception):
    """A command failed; ``error_class`` and ``desc`` are QEMU's exact class and text."""

    def __init__(self, desc: str, error_class: str = "GenericError", printed: str = "") -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc
        self.printed = printed  # what QEMU printed on its stderr as it failed (the block modules it looked for)

    def to_wire(self) -> dict:
        return {"class": self.error_class, "desc": self.desc}


def generic(desc: str) -> QMPError:
    return QMPError(desc, "GenericError")
