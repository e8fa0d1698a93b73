"""Random image-fleecing episodes (``--focus fleecing``): a ``copy-before-write`` node and a ``snapshot-access``
node of the user's own over a source the guest keeps writing (block/copy-before-write.c, block/snapshot-access.c).

On a stream of their own (``{seed}/{index}/fleecing``) and with names of their own (source ``fs<n>``, target
``ft<n>``, filter ``fc<n>``, snapshot ``fa<n>``, push-backup target ``fb<n>``, job ``fj<n>``, bitmap ``fm<n>``).
An episode makes a qcow2 source of 2 or 4 MiB (64 KiB or 4 KiB clusters) with data, and a target of 64 KiB, 4 KiB
or 1 MiB clusters (the copy's cluster is the target's, at least 64 KiB), now and then over blkdebug with a rule
failing its data writes (EIO, every time). Sometimes a bitmap of the source (4 KiB to 128 KiB granularity)
records a few writes and is disabled, and the filter takes it as its ``bitmap``; ``on-cbw-error``,
``cbw-timeout`` and ``discard=unmap`` on either node now and then. Then a mix of guest writes, zero writes and
discards on the source (through the filter), reads of the snapshot and of the target, discards of the snapshot,
and queries; sometimes a push backup from the snapshot (one worker) and ``qemu-img map`` of its target; then the
nodes deleted (sometimes in the wrong order first) and what the target and the source hold. On a stream of its own
(``{seed}/{index}/fleecing/throttle``), now and then the filter's target is a ``throttle`` node (``fh<n>``, group
``fg<n>``: 2 to 8 MiB/s of writes) over the target image: a guest write then waits for its copy; with a
``cbw-timeout`` long enough never to strike (a timeout's ETIMEDOUT is EINVAL over qemu-storage-daemon's NBD export:
the iotest's port compares it on the system emulator, tests/iotests/test_iotest_cbw.py). On a stream of its own
(``{seed}/{index}/fleecing/pull``), now and then a pull over NBD (export ``fx<n>``, bitmap ``fq<n>``, image ``fp<n>``):
qemu-img maps the exported snapshot and a bitmap of the source, converts the snapshot into an image, which is read.

Stays away from what does not compare: reads of the snapshot where QEMU answers EACCES (a discarded cluster, one
outside the bitmap, a snapshot a failed copy may have broken), which qemu-storage-daemon's NBD export reports as
EINVAL; a discard of the snapshot not aligned to the copy's clusters (QEMU 7.2 aborts); a push backup from a
snapshot that may refuse a read; host offsets in the filter's target (a guest write's copy has up to 64 workers,
whose reads complete in no fixed order: README "Known differences"), and for the same reason a rule that fails only
``once`` (which of a copy's parallel tasks meets it first is not fixed).
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

K, M = 1 << 10, 1 << 20


def _image(name: str, size: int, cluster: int, file: dict | None = None) -> list[dict]:
    return [{"qemu-img": ["create", "-f", "qcow2", "-o", f"cluster_size={cluster}", f"{name}.qcow2", str(size)]},
            _qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                  "file": file or {"driver": "file", "filename": f"{name}.qcow2"}})]


def _range(rng: random.Random, size: int) -> tuple[int, int]:
    offset = rng.randrange(0, size // 512) * 512
    return offset, min(rng.choice([512, 4 * K, 60 * K, 64 * K, 200 * K, M]), size - offset)


class Episode:
    """One episode's state as the generator tracks it: which clusters the snapshot may read."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.n = n
        self.size = rng.choice([2 * M, 4 * M])
        self.target_cluster = rng.choices([64 * K, 4 * K, M], weights=[6, 2, 1])[0]
        self.cluster = max(64 * K, self.target_cluster)  # the copy's cluster (block_copy_calculate_cluster_size)
        self.failing = rng.random() < 0.2
        self.access = [True] * (self.size // self.cluster)
        self.readable = True  # False once a failed copy may have broken the snapshot (break-snapshot)
        self.break_snapshot = False
        self.sa_unmap = False

    def clusters(self, offset: int, length: int) -> range:
        return range(offset // self.cluster, (offset + length - 1) // self.cluster + 1)

    def may_read(self, offset: int, length: int) -> bool:
        return self.readable and all(self.access[c] for c in self.clusters(offset, length))


def fleecing_episode(rng: random.Random, n: int, throttled: random.Random | None = None,
                     pull: random.Random | None = None) -> list[dict]:
    """One source, its filter and snapshot, the guest's requests and the reads; see the module docstring.
    ``throttled``: the stream that decides whether the filter's target is a throttle node; ``pull``: the one that
    decides on a pull over NBD (:func:`_pull`)."""
    ep = Episode(rng, n)
    src, tgt, cbw, snap = f"fs{n}", f"ft{n}", f"fc{n}", f"fa{n}"
    steps = _image(src, ep.size, rng.choice([64 * K, 64 * K, 4 * K]))
    steps.append({"write": {"node": src, "offset": 0, "length": ep.size // 2, "pattern": 0x11}})
    for _ in range(rng.randint(0, 2)):
        offset, length = _range(rng, ep.size)
        steps.append({"write": {"node": src, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)}})
    file = None
    if ep.failing:
        rule = {"event": "write_aio", "errno": 5}
        file = {"driver": "blkdebug", "image": {"driver": "file", "filename": f"{tgt}.qcow2"}, "inject-error": [rule]}
    steps += _image(tgt, ep.size, ep.target_cluster, file)
    options: dict = {"driver": "copy-before-write", "node-name": cbw, "file": src, "target": tgt}
    if rng.random() < 0.25:
        steps += _bitmap(ep, src, options)
    if rng.random() < 0.4 or ep.failing:
        options["on-cbw-error"] = rng.choice(["break-guest-write", "break-snapshot"])
    ep.break_snapshot = options.get("on-cbw-error") == "break-snapshot"
    if rng.random() < 0.2:
        options["cbw-timeout"] = rng.choice([0, 1, 30])
    if rng.random() < 0.3:
        options["discard"] = "unmap"
    slow = throttled is not None and throttled.random() < 0.25
    if slow:
        assert throttled is not None
        group, node = f"fg{n}", f"fh{n}"
        steps.append(_qmp("object-add", {"qom-type": "throttle-group", "id": group,
                                         "limits": {"bps-write": throttled.choice([2, 4, 8]) * M}}))
        steps.append(_qmp("blockdev-add", {"driver": "throttle", "node-name": node, "throttle-group": group,
                                           "file": tgt}))
        options["target"] = node
        if options.get("cbw-timeout") == 1:
            options["cbw-timeout"] = 30
    steps.append(_qmp("blockdev-add", options))
    ep.sa_unmap = rng.random() < 0.7
    steps.append(_qmp("blockdev-add", {"driver": "snapshot-access", "node-name": snap, "file": cbw,
                                       **({"discard": "unmap"} if ep.sa_unmap else {})}))
    for _ in range(rng.randint(4, 14)):
        steps += _op(ep, src, tgt, snap)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    if ep.may_read(0, ep.size) and not ep.failing and rng.random() < 0.3:
        steps += _push_backup(ep, snap)
    if pull is not None and ep.may_read(0, ep.size) and not ep.failing and pull.random() < 0.4:
        steps += _pull(pull, ep, src, snap)
    steps += _teardown(ep, src, tgt, cbw, snap, f"fh{n}" if slow else None)
    if slow:
        steps.append(_qmp("object-del", {"id": f"fg{n}"}))
    return steps


def _bitmap(ep: Episode, src: str, options: dict) -> list[dict]:
    """A bitmap of the source that records a few writes, disabled: the filter's ``bitmap``."""
    rng, name = ep.rng, f"fm{ep.n}"
    steps = [_qmp("block-dirty-bitmap-add", {"node": src, "name": name,
                                             "granularity": rng.choice([4 * K, 16 * K, 64 * K, 128 * K])})]
    ep.access = [False] * len(ep.access)
    for _ in range(rng.randint(1, 3)):
        offset, length = _range(rng, ep.size)
        steps.append({"write": {"node": src, "offset": offset, "length": length, "pattern": 0x12}})
        for c in ep.clusters(offset, length):  # (a coarser bitmap marks more: reads stay within these)
            ep.access[c] = True
    steps.append(_qmp("block-dirty-bitmap-disable", {"node": src, "name": name}))
    options["bitmap"] = {"node": src, "name": name}
    return steps


def _op(ep: Episode, src: str, tgt: str, snap: str) -> list[dict]:
    rng = ep.rng
    kind = rng.choices(["write", "zero", "discard", "read-snap", "discard-snap", "read-target", "query"],
                       weights=[6, 1, 1, 5, 2, 2, 1])[0]
    offset, length = _range(rng, ep.size)
    io = {"node": src, "offset": offset, "length": length}
    if kind in ("write", "zero", "discard"):
        if ep.failing and ep.break_snapshot:
            ep.readable = False  # the copy may have failed
        if kind == "write":
            io["pattern"] = rng.randrange(1, 256)
        elif kind == "zero" and rng.random() < 0.3:
            io["unmap"] = True
        return [{kind: io}]
    if kind == "read-snap":
        if not ep.may_read(offset, length):
            return []
        return [{"read": {"node": snap, "offset": offset, "length": length, "pattern": rng.choice([0x11, 0])}}]
    if kind == "discard-snap":
        first = rng.randrange(len(ep.access))
        count = rng.randint(1, 3)
        start, end = first * ep.cluster, min(ep.size, (first + count) * ep.cluster)
        if ep.sa_unmap:
            for c in ep.clusters(start, end - start):
                ep.access[c] = False
        return [{"discard": {"node": snap, "offset": start, "length": end - start}}]
    if kind == "read-target":
        return [{"read": {"node": tgt, "offset": offset, "length": length, "pattern": 0x11}}]
    return [_qmp("query-named-block-nodes", {"flat": True})]


def _push_backup(ep: Episode, snap: str) -> list[dict]:
    """image-fleecing's push backup: a full backup from the snapshot onto a new image."""
    n, rng = ep.n, ep.rng
    steps = _image(f"fb{n}", ep.size, rng.choice([64 * K, 4 * K]))
    steps += [_qmp("blockdev-backup", {"job-id": f"fj{n}", "device": snap, "target": f"fb{n}", "sync": "full",
                                       "x-perf": {"max-workers": 1}}),
              {"wait-job": {"id": f"fj{n}", "status": "null"}}]
    for _ in range(2):
        offset, length = _range(rng, ep.size)
        steps.append({"read": {"node": f"fb{n}", "offset": offset, "length": length, "pattern": 0x11}})
    return steps + [_qmp("blockdev-del", {"node-name": f"fb{n}"}),
                    {"qemu-img": ["map", "--output=json", f"fb{n}.qcow2"]}]


def _pull(rng: random.Random, ep: Episode, src: str, snap: str) -> list[dict]:
    """A pull over NBD (its own stream): a bitmap of the source records a guest write or two, the snapshot is
    exported with it, and qemu-img (the backup tool) maps the export and the bitmap, converts the snapshot into a
    new image (``fp<n>``), maps it, and the image's content is read back."""
    n = ep.n
    url, image = f"nbd+unix:///fx{n}?socket=nbd.sock", f"fp{n}"
    steps = [_qmp("block-dirty-bitmap-add", {"node": src, "name": f"fq{n}",
                                             "granularity": rng.choice([4 * K, 64 * K, 128 * K])})]
    for _ in range(rng.randint(1, 2)):
        offset, length = _range(rng, ep.size)
        steps.append({"write": {"node": src, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)}})
    steps += [_qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
              _qmp("block-export-add", {"type": "nbd", "id": f"fx{n}", "node-name": snap, "name": f"fx{n}",
                                        "bitmaps": [{"node": src, "name": f"fq{n}"}]}),
              {"qemu-img": ["map", "--output=json", url]},
              {"qemu-img": ["map", "--output=json", "--image-opts", "driver=nbd,server.type=unix,"
                            f"server.path=nbd.sock,export=fx{n},x-dirty-bitmap=qemu:dirty-bitmap:fq{n}"]},
              {"qemu-img": ["convert", "-f", "raw", "-O", "qcow2", "-o",
                            f"cluster_size={rng.choice([4 * K, 64 * K])}", url, f"{image}.qcow2"]},
              {"qemu-img": ["map", "--output=json", f"{image}.qcow2"]},
              _qmp("block-export-del", {"id": f"fx{n}"}), _qmp("nbd-server-stop"),
              *_image_open(image)]
    for _ in range(2):
        offset, length = _range(rng, ep.size)
        steps.append({"read": {"node": image, "offset": offset, "length": length, "pattern": 0x11}})
    return steps + [_qmp("blockdev-del", {"node-name": image}),
                    _qmp("block-dirty-bitmap-remove", {"node": src, "name": f"fq{n}"})]


def _image_open(name: str) -> list[dict]:
    return [_qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                  "file": {"driver": "file", "filename": f"{name}.qcow2"}})]


def _teardown(ep: Episode, src: str, tgt: str, cbw: str, snap: str, slow: str | None = None) -> list[dict]:
    rng = ep.rng
    steps = []
    if rng.random() < 0.3:
        steps += [_qmp("blockdev-del", {"node-name": rng.choice([cbw, tgt, src])})]
    steps += [_qmp("blockdev-del", {"node-name": snap}), _qmp("blockdev-del", {"node-name": cbw})]
    if slow is not None:
        steps.append(_qmp("blockdev-del", {"node-name": slow}))
    steps += [{"read": {"node": tgt, "offset": 0, "length": ep.size, "pattern": 0x11}},
              _qmp("blockdev-del", {"node-name": tgt})]
    steps.append({"read": {"node": src, "offset": 0, "length": ep.size, "pattern": 0x11}})
    steps.append({"write": {"node": src, "offset": 0, "length": 64 * K, "pattern": 0x99}})
    return steps + [_qmp("blockdev-del", {"node-name": src})]


def fleecing_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of one to three such episodes (``bitlab conformance --focus fleecing``)."""
    rng = random.Random(f"{seed}/{index}/fleecing")
    throttled = random.Random(f"{seed}/{index}/fleecing/throttle")
    pull = random.Random(f"{seed}/{index}/fleecing/pull")
    steps: list[dict] = []
    for n in range(rng.randint(1, 3)):
        steps += fleecing_episode(rng, n, throttled, pull)
    return {"name": f"fleecing-{seed}-{index}", "steps": steps}
