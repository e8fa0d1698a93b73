"""The ``bitlab`` command: ``bitlab demo`` plays the seed's set-up and prints the bitmaps."""

from __future__ import annotations

import argparse
import json

from . import __version__
from .machine import Machine


def demo() -> None:
    """Two 64 MiB qcow2 drives, 64 KiB bitmaps, the five guest writes of the seed traces."""
    vm = Machine()
    for i in (0, 1):
        vm.qemu_img("create", "-f", "qcow2", f"d{i}.qcow2", "64M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"drive{i}",
                                "file": {"driver": "file", "filename": f"d{i}.qcow2"}})
        vm.qmp("block-dirty-bitmap-add", {"node": f"drive{i}", "name": f"bitmap{i}", "granularity": 65536})
    for node, offset, length, pattern in [("drive0", 0, 65536, 0x41), ("drive0", 126976, 8192, 0x42),
                                          ("drive0", 1048576, 131072, 0x43), ("drive1", 0, 65536, 0x44),
                                          ("drive1", 33554432, 65536, 0x45)]:
        vm.write(node, offset, length, pattern)
    for node in vm.qmp("query-named-block-nodes", {"flat": True}):
        for bm in node.get("dirty-bitmaps", []):
            print(node["node-name"], json.dumps(bm))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bitlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="play the seed's set-up and print the bitmaps")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
