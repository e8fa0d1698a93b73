"""A failed I/O request (a blkdebug rule struck), as drivers and jobs see it."""

from __future__ import annotations


class BlockIOError(Exception):
    """An I/O request failed with ``errno`` (positive)."""

    def __init__(self, errno: int, operation: str, immediately: bool = False) -> None:
        super().__init__(f"{operation} failed: errno {errno}")
        self.errno = errno
        self.operation = operation
        self.immediately = immediately
