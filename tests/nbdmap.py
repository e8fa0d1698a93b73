"""qemu-img map's JSON for an NBD node, as the iotests' .out files and the NBD client tests spell it out."""

from __future__ import annotations


def entry(start: int, length: int, present: bool, zero: bool, data: bool) -> str:
    """One map line (depth 0): an NBD node maps every offset it reports as present to itself (the .out files'
    OFFSET filled in)."""
    text = (f'{{ "start": {start}, "length": {length}, "depth": 0, "present": {str(present).lower()}, '
            f'"zero": {str(zero).lower()}, "data": {str(data).lower()}')
    return text + (f', "offset": {start}}}' if present else "}")


def map_json(*entries: tuple) -> str:
    """``qemu-img map --output=json`` of these (start, length, present, zero, data) entries."""
    return "[" + ",\n".join(entry(*e) for e in entries) + "]\n"
