"""Random scenarios over preallocated images (``bitlab conformance --focus prealloc``).

A scenario of the random mix (:func:`.generator.random_scenario`) whose qcow2 images are created with
``preallocation=metadata`` now and then (from seed :data:`MODES_SINCE` on, ``falloc`` or ``full`` too): each
``qemu-img create`` of a qcow2 image without a backing file, and each ``blockdev-create`` of one, on a stream of its
own (``{seed}/{index}/prealloc``), with a chance of :data:`CHANCE`. Nothing else changes: the same steps, the images
made with every cluster allocated (see README, "The host file"). So every episode — backups from and into such
images, shrinks and discards, blkdebug rules, overlays, exports, persistent bitmaps — meets clusters that hold
nothing, and holes or unwritten blocks in the file.

Not an image whose file node some step opens with ``detect-zeroes``: qcow2's writes of zero bytes become zero writes
there, unwritten blocks the image's block status then reads as holes, which bitlab takes as written (README, known
differences); a preallocated image looks preallocated, so its map would show them. Before seed :data:`MODES_SINCE`,
not an image under a blkdebug node (a zero write over parts of two preallocated clusters is written as zero bytes
piece by piece, and bitlab went on to the second piece after the first failed, until session 29), nor one of
512-byte clusters (bitlab did not grow a refcount table then: a preallocated disk of more than 8 MiB outgrows it).
From seed :data:`READS_SINCE` on, not an image under a blkdebug node that a guest read or a backup reads: its
episode maps it at the end, and the blocks such a read met unwritten stay in the host's page cache, data for
SEEK_DATA (README, known differences; seed 36014, scenario 75).
"""

from __future__ import annotations

import copy
import random

from .generator import random_scenario

CHANCE = 0.6  # for each qcow2 image made without a backing file
MODES_SINCE = 29000  # seeds from this one on: preallocation=falloc and full too, and 512-byte clusters (older seeds
# keep the scenarios they had: metadata only)
MODES = ("metadata", "metadata", "falloc", "full")
READS_SINCE = 36014  # seeds from this one on: not an image under a blkdebug node that a step reads (see the docstring)


def _preallocate(step: dict, rng: random.Random, modes: random.Random | None) -> bool:
    """Add ``preallocation`` to a step creating a qcow2 image without a backing file (in place), by chance;
    whether it did. The mode: metadata, or (``modes``: its own stream) any of :data:`MODES`."""
    def mode() -> str:
        return "metadata" if modes is None else modes.choice(MODES)

    small = modes is None  # (512-byte clusters left out: see the docstring)
    args = step.get("qemu-img")
    if args and args[0] == "create" and "-b" not in args and "-f" in args and args[args.index("-f") + 1] == "qcow2":
        if "-o" in args:
            at = args.index("-o") + 1
            options = args[at].split(",")
            if "backing" in args[at] or "preallocation" in args[at] or small and "cluster_size=512" in options \
                    or rng.random() >= CHANCE:
                return False
            args[at] += f",preallocation={mode()}"
            return True
        if rng.random() >= CHANCE:
            return False
        args[1:1] = ["-o", f"preallocation={mode()}"]
        return True
    qmp = step.get("qmp")
    if qmp and qmp.get("execute") == "blockdev-create":
        options = qmp["arguments"]["options"]
        if options.get("driver") == "qcow2" and "backing-file" not in options and "preallocation" not in options \
                and not (small and options.get("cluster-size") == 512) and rng.random() < CHANCE:
            options["preallocation"] = mode()
            return True
    return False


def _detecting_files(value: object, out: set[str]) -> set[str]:
    """The files some ``file`` node in ``value`` (a step, recursively) opens with detect-zeroes."""
    if isinstance(value, dict):
        if value.get("driver") == "file" and value.get("detect-zeroes", "off") != "off" and "filename" in value:
            out.add(value["filename"])
        for item in value.values():
            _detecting_files(item, out)
    elif isinstance(value, list):
        for item in value:
            _detecting_files(item, out)
    return out


def _under_blkdebug(steps: list[dict]) -> set[str]:
    """The files a blkdebug node of the steps reads (its ``image``, inline or a file node added by itself)."""
    files: dict[str, str] = {}  # file node name -> its file
    images: list = []
    def visit(value: object) -> None:
        if isinstance(value, dict):
            if value.get("driver") == "file" and "node-name" in value and "filename" in value:
                files[value["node-name"]] = value["filename"]
            if value.get("driver") == "blkdebug" and "image" in value:
                images.append(value["image"])
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
    visit(steps)
    out = set()
    for image in images:
        if isinstance(image, str):
            if image in files:
                out.add(files[image])
        elif isinstance(image, dict) and "filename" in image:
            out.add(image["filename"])
    return out


def _read_files(steps: list[dict]) -> set[str]:
    """The files below the nodes a step reads: a guest read's node, a backup's source (through ``file`` and
    ``image`` children, named or inline)."""
    below: dict[str, object] = {}  # node name -> its file name (a file node) or its child (a name or inline node)

    def child(value: dict) -> object:
        return value["filename"] if value.get("driver") == "file" else value.get("file", value.get("image"))

    def visit(value: object) -> None:
        if isinstance(value, dict):
            if "node-name" in value and "driver" in value:
                below[value["node-name"]] = child(value)
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    def resolve(ref: object, depth: int = 0) -> str | None:
        if isinstance(ref, dict):
            return resolve(child(ref), depth + 1) if ref.get("driver") != "file" else ref.get("filename")
        if not isinstance(ref, str) or depth > 16:
            return None
        if ref not in below:  # (a file name, once a file node's entry was followed)
            return ref if depth else None
        return resolve(below[ref], depth + 1)

    visit(steps)
    read = [step["read"]["node"] for step in steps if "read" in step]
    read += [step["qmp"]["arguments"].get("device") for step in steps
             if step.get("qmp", {}).get("execute") in ("blockdev-backup", "drive-backup")]
    return {name for name in map(resolve, read) if name is not None}


def _creates(step: dict) -> str | None:
    """The file a step creates an image in (qemu-img create's last name but a size, blockdev-create's)."""
    args = step.get("qemu-img")
    if args and args[0] == "create":
        names = [a for a in args[1:] if not a.startswith("-") and not a[:1].isdigit()]
        return names[-1] if names else None
    return None


def prealloc_scenario(seed: int, index: int = 0) -> dict:
    """:func:`.generator.random_scenario` with some of its qcow2 images preallocated (see the module's docstring)."""
    scenario = copy.deepcopy(random_scenario(seed, index))
    rng = random.Random(f"{seed}/{index}/prealloc")
    modes = random.Random(f"{seed}/{index}/prealloc-mode") if seed >= MODES_SINCE else None
    left_out = _detecting_files(scenario["steps"], set())
    if modes is None:  # (older seeds: see the docstring)
        left_out |= _under_blkdebug(scenario["steps"])
    elif seed >= READS_SINCE:
        left_out |= _under_blkdebug(scenario["steps"]) & _read_files(scenario["steps"])
    for step in scenario["steps"]:
        if _creates(step) in left_out:
            continue
        _preallocate(step, rng, modes)
    scenario["name"] = scenario["name"].replace("random-", "prealloc-", 1)
    return scenario
