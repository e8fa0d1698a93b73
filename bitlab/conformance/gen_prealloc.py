"""Random scenarios over preallocated images (``bitlab conformance --focus prealloc``).

A scenario of the random mix (:func:`.generator.random_scenario`) whose qcow2 images are created with
``preallocation=metadata`` now and then: each ``qemu-img create`` of a qcow2 image without a backing file, and
each ``blockdev-create`` of one, on a stream of its own (``{seed}/{index}/prealloc``), with a chance of
:data:`CHANCE`. Nothing else changes: the same steps, the images made sparse with every cluster allocated (see
README, "The host file"). So every episode — backups from and into such images, shrinks and discards, blkdebug
rules, overlays, exports, persistent bitmaps — meets clusters that hold nothing and holes in the file.
"""

from __future__ import annotations

import copy
import random

from .generator import random_scenario

CHANCE = 0.6  # for each qcow2 image made without a backing file


def _preallocate(step: dict, rng: random.Random) -> bool:
    """Add ``preallocation=metadata`` to a step creating a qcow2 image without a backing file (in place), by
    chance; whether it did."""
    args = step.get("qemu-img")
    if args and args[0] == "create" and "-b" not in args and "-f" in args and args[args.index("-f") + 1] == "qcow2":
        if "-o" in args:
            at = args.index("-o") + 1
            if "backing" in args[at] or "preallocation" in args[at] or rng.random() >= CHANCE:
                return False
            args[at] += ",preallocation=metadata"
            return True
        if rng.random() >= CHANCE:
            return False
        args[1:1] = ["-o", "preallocation=metadata"]
        return True
    qmp = step.get("qmp")
    if qmp and qmp.get("execute") == "blockdev-create":
        options = qmp["arguments"]["options"]
        if options.get("driver") == "qcow2" and "backing-file" not in options and "preallocation" not in options \
                and rng.random() < CHANCE:
            options["preallocation"] = "metadata"
            return True
    return False


def prealloc_scenario(seed: int, index: int = 0) -> dict:
    """:func:`.generator.random_scenario` with some of its qcow2 images preallocated (see the module's docstring)."""
    scenario = copy.deepcopy(random_scenario(seed, index))
    rng = random.Random(f"{seed}/{index}/prealloc")
    for step in scenario["steps"]:
        _preallocate(step, rng)
    scenario["name"] = scenario["name"].replace("random-", "prealloc-", 1)
    return scenario
