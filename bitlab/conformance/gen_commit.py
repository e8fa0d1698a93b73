"""Random commit and stream episodes (blockdev.c's block-commit and block-stream; block/commit.c's job,
block/mirror.c's active commit, block/stream.c's job).

On a stream of their own (``{seed}/{index}/commit``) and with names of their own (images and nodes ``ck<n>b``,
``ck<n>m``, ``ck<n>t``, jobs ``kj<n>``, filters ``kf<n>``), so the other steps of a scenario stay what they were
for every seed. An episode builds a chain of two or three qcow2 images with data in each (written while each is
open alone), opens it with one blockdev-add, puts bitmaps on the base and the top, lets the guest write, and
commits: the active layer (an active commit: ready, guest writes, then ``job-complete``, a plain or forced
cancel, or ``job-cancel``), or, in a chain of three, the middle image (the commit job, now and then with
``auto-finalize`` off, a ``backing-file`` name or a filter name); or it streams the chain (all of it, down to the
base, or to ``bottom``) into the top. From seed :data:`RENAME_SINCE` on, now and then a ``change-backing-file``
follows (on a stream of its own). Then the nodes, the bitmaps, the top's image info; the chain goes. Where
several requests of an active commit are in flight QEMU varies which it writes first, and with them the base's
host clusters: only the commit job's base (one chunk at a time) and the stream job's top are mapped. A ready
active commit's guest writes dirty granules apart, as the mirror episodes' do (a second write into a granule races
the job's copy of it).
"""

from __future__ import annotations

import random

from .gen_mirror import _apart, end_ready_job
from .steps import qmp_step as _qmp
from .steps import random_write

CHANCE = 0.02  # after each op of the random mix, the chance of an episode
K, M = 1 << 10, 1 << 20


RENAME_SINCE = 30100  # seeds from this one on: now and then a change-backing-file after the job (own stream)
RENAME_CHANCE = 0.35


class Commits:
    """What the episodes of one scenario share: their random stream and a counter; ``renames``, from seed
    :data:`RENAME_SINCE` on, the stream of the change-backing-file steps (older seeds keep their episodes)."""

    def __init__(self, rng: random.Random, renames: random.Random | None = None) -> None:
        self.rng = rng
        self.renames = renames
        self.n = 0


def commits_for(seed: int, index: int) -> Commits:
    """The episodes' shared state for scenario ``seed``/``index``."""
    renames = random.Random(f"{seed}/{index}/rename") if seed >= RENAME_SINCE else None
    return Commits(random.Random(f"{seed}/{index}/commit"), renames)


def _rename(cm: Commits, names: list[str]) -> list[dict]:
    """change-backing-file of an image of the chain (the top's, a node the job may have closed, or the base's,
    which has none), to its backing file's name, another or none."""
    rng = cm.renames
    if rng is None or rng.random() >= RENAME_CHANCE:
        return []
    image = rng.choice([names[0], names[0], *names[1:]])
    name = rng.choice([f"{names[-1]}.qcow2", f"./{names[-1]}.qcow2", "renamed.qcow2", ""])
    return [_qmp("change-backing-file", {"device": names[0], "image-node-name": image, "backing-file": name})]


def _file(image: str) -> dict:
    return {"driver": "file", "filename": f"{image}.qcow2"}


def _image(rng: random.Random, name: str, backing: str | None, size: int) -> list[dict]:
    """A qcow2 image (over ``backing``) with one or two extents of data, written while it is open alone."""
    create = ["create", "-f", "qcow2"] + (["-b", f"{backing}.qcow2", "-F", "qcow2"] if backing else [])
    steps: list[dict] = [{"qemu-img": [*create, f"{name}.qcow2", str(size)]},
                         _qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": _file(name),
                                               "backing": None})]
    steps += [random_write(rng, name, size, [64 * K, 512 * K, M]) for _ in range(rng.randint(1, 2))]
    steps.append(_qmp("blockdev-del", {"node-name": name}))
    return steps


def _to_the_end(rng: random.Random, execute: str, args: dict) -> list[dict]:
    """A job that completes on its own, started and waited for; now and then with auto-finalize off (pending, looked
    at, finalized)."""
    jid = args["job-id"]
    manual = rng.random() < 0.25
    if manual:
        args["auto-finalize"] = False
    steps = [_qmp(execute, args)]
    if manual:
        steps += [{"wait-job": {"id": jid, "status": "pending"}}, _qmp("query-block-jobs"),
                  _qmp("job-finalize", {"id": jid})]
    return [*steps, {"wait-job": {"id": jid, "status": "null"}}]


def commit_episode(cm: Commits, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = cm.rng
    cm.n += 1
    n = cm.n
    names = [f"ck{n}t", f"ck{n}m", f"ck{n}b"] if rng.random() < 0.6 else [f"ck{n}t", f"ck{n}b"]
    top, base = names[0], names[-1]
    steps: list[dict] = []
    below = None
    for name in reversed(names):
        steps += _image(rng, name, below, size)
        below = name
    opts: dict | None = None
    for name in reversed(names):
        node: dict = {"driver": "qcow2", "node-name": name, "file": _file(name)}
        if opts is not None:
            node["backing"] = opts
        opts = node
    steps.append(_qmp("blockdev-add", opts))
    bitmaps = [(node, f"c{node[-1]}") for node in (base, top) if rng.random() < 0.7]
    for node, bm in bitmaps:
        steps.append(_qmp("block-dirty-bitmap-add", {"node": node, "name": bm,
                                                     "granularity": rng.choice([4 * K, 64 * K])}))
    for _ in range(rng.randint(0, 2)):
        steps.append(random_write(rng, top, size, [4 * K, 64 * K]))
    jid = f"kj{n}"
    args: dict = {"job-id": jid, "device": top}
    if rng.random() < 0.2:
        args["filter-node-name"] = f"kf{n}"
    if rng.random() < 0.2:
        args["on-error"] = rng.choice(["report", "stop", "ignore", "enospc"])
    kind = rng.choices(["commit", "stream"], weights=[2, 1])[0]
    active = kind == "commit" and (len(names) == 2 or rng.random() < 0.5)
    if kind == "stream":
        where = rng.choice(["all", "base-node", "bottom"] if len(names) == 3 else ["all", "bottom"])
        if where == "base-node":
            args["base-node"] = base
            if rng.random() < 0.2:
                args["backing-file"] = f"ck{n}-renamed.qcow2"
        elif where == "bottom":
            args["bottom"] = rng.choice(names[1:])
        steps += _to_the_end(rng, "block-stream", args)
    elif active:
        if len(names) == 3 and rng.random() < 0.3:
            args["base-node"] = names[1]  # (into the middle image: the base stays below it)
        steps.append(_qmp("block-commit", args))
        steps.append({"wait-job": {"id": jid, "status": "ready"}})
        # (the job's granularity: the base's 64 KiB clusters; a second write into a granule races its copy)
        steps += _apart([random_write(rng, top, size, [4 * K, 64 * K]) for _ in range(rng.randint(0, 2))], 64 * K)
        steps += [{"sleep": 0.25}, _qmp("query-block-jobs")]
        if rng.random() < 0.3:
            steps.append(_qmp("query-named-block-nodes", {"flat": True}))
        steps += end_ready_job(rng, jid, [60, 15, 10, 15])
    else:
        args["top-node"] = names[1]
        if rng.random() < 0.2:
            args["backing-file"] = f"ck{n}-renamed.qcow2"
        steps += _to_the_end(rng, "block-commit", args)
    steps += _rename(cm, names)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    for node, bm in bitmaps:  # (the top keeps its chain: the base stays, whichever job ran)
        steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": bm}))
    steps.append({"qemu-img": ["info", "-U", f"{top}.qcow2"]})
    steps.append(_qmp("blockdev-del", {"node-name": top}))
    if kind == "stream":
        steps.append({"qemu-img": ["map", "--output=json", f"{top}.qcow2"]})
    elif not active:
        steps.append({"qemu-img": ["map", "--output=json", f"{base}.qcow2"]})
    return steps


def commit_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of such episodes alone (``bitlab conformance --focus commit``): two to five episodes of 8 MiB
    chains."""
    rng = random.Random(f"{seed}/{index}/commit-focus")
    cm = commits_for(seed, index)
    steps: list[dict] = []
    for _ in range(rng.randint(2, 5)):
        steps += commit_episode(cm, 8 * M)
    steps.append(_qmp("x-debug-query-block-graph"))
    return {"name": f"commit-{seed}-{index}", "steps": steps}


__all__ = ["CHANCE", "RENAME_SINCE", "Commits", "commit_episode", "commit_scenario", "commits_for"]
