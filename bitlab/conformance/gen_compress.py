"""Random compressed-cluster scenarios (``--focus compress``): qemu-io ``write -c`` and backups with ``compress``.

A scenario has one drive (``drive0``: the system emulator, whose HMP qemu-io can compress; over NBD
qemu-storage-daemon cannot), written with normal writes, zero writes and ``write -c`` of one cluster (or the
disk's last, partial one), sometimes at an unaligned offset (EINVAL) or onto a cluster that already has a host
offset (EIO), and normal or zero writes over compressed clusters (freeing their chunks). Then, a few times, a
backup with ``"compress": true`` of the drive (or of a node made for it, of a random cluster size, written the
same way, sometimes closed and opened again between writes, sometimes with a bitmap for ``sync: bitmap``) onto a
fresh qcow2 target (64 KiB, 128 KiB or 2 MiB clusters), sometimes with data already in one of its clusters (that
task's write fails: EIO), by blockdev-backup or drive-backup (``existing`` or ``absolute-paths``); then a plain
backup *from* the compressed target onto another image, or a ``qemu-img convert -c`` of it, and at times a
``qemu-img resize --shrink`` of it. Each target is closed and its ``qemu-img map --output=json`` and ``check``
compared.

Stays away from what QEMU does not fix: one worker for every backup (several compress, or decompress, in a
thread pool: the packing order varies), one cluster per ``write -c`` (qcow2 runs a request's clusters as
parallel tasks), target clusters no smaller than the job's (64 KiB: a job cluster over several target clusters is
one request of several), no compressed write at a free_byte_offset whose host cluster was freed and may have been
taken again (QEMU 7.2 writes the chunk there: bitlab refuses it), no ``qemu-img map`` of an image open elsewhere
(README "Known differences"), and the nodes of its own that a backup reads from opened with ``cache.direct`` (no
page cache to make read blocks data, see ``DIRECT``).
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

K, M = 1 << 10, 1 << 20
# Nodes a backup reads from (but the drive) bypass the host's page cache: an image QEMU takes for one with
# preallocated metadata (2 MiB clusters, a compressed cluster's few bytes) has block status ask the file, where
# what the backup's reads brought into the page cache shows as data (README "Known differences"; seed 19526 185)
DIRECT = {"direct": True}


class _Disk:
    """What the generator knows of a qcow2 disk: its size, cluster size, which clusters are compressed or hold a
    host cluster (data written, or a zero write over data: zeroes keep no host cluster otherwise), which L2 tables
    exist, and whether a compressed cluster was freed since the node was opened (``freed``) and something
    allocated after that (``reused``)."""

    def __init__(self, size: int, cluster: int) -> None:
        self.size, self.cluster = size, cluster
        self.compressed: set[int] = set()
        self.hosted: set[int] = set()
        self.tables: set[int] = set()
        self.freed = self.reused = False

    def clusters(self, offset: int, length: int) -> range:
        return range(offset // self.cluster, -(-(offset + length) // self.cluster))

    def touches_compressed(self, offset: int, length: int) -> bool:
        return any(c in self.compressed for c in self.clusters(offset, length))

    def touch(self, offset: int, length: int) -> None:
        """A request over these bytes: their L2 tables exist now."""
        per = self.cluster // 8
        self.tables.update(range(offset // self.cluster // per, (-(-(offset + length) // self.cluster) - 1) // per + 1))

    def may_compress(self, cluster: int) -> bool:
        """Whether a compressed write of ``cluster`` stays clear of free_byte_offset in a host cluster that was freed
        and may be taken again (by a write since, or by this cluster's new L2 table): QEMU 7.2 then writes the chunk
        over data or metadata (bitlab refuses it)."""
        return not self.freed or not self.reused and cluster // (self.cluster // 8) in self.tables

    def reopened(self) -> None:
        self.freed = self.reused = False  # (free_byte_offset 0)

    def rewrite(self, offset: int, length: int, zero: bool) -> None:
        """A normal (or zero) write over these bytes: the compressed clusters it meets are freed; each cluster it
        covers whole becomes a zero cluster (``zero``), the others hold a host cluster."""
        if self.freed:
            self.reused = True
        cs = self.cluster
        for c in self.clusters(offset, length):
            whole = offset <= c * cs and offset + length >= min((c + 1) * cs, self.size)
            if c in self.compressed:
                self.compressed.discard(c)
                self.freed = True
                if not (zero and whole):
                    self.hosted.add(c)
            elif not zero:
                self.hosted.add(c)
        self.touch(offset, length)


def _guest_writes(rng: random.Random, node: str, disk: _Disk, count: int) -> list[dict]:
    """Normal, zero and compressed writes on ``node``; the normal and zero ones over compressed clusters at times
    (whole or partial, a zero write unmapping or not), the compressed ones kept from a freed free_byte_offset
    (:meth:`_Disk.may_compress`)."""
    steps: list[dict] = []
    cs, size = disk.cluster, disk.size
    last = (size - 1) // cs
    for _ in range(count):
        kind = rng.choices(["write", "zero", "compress", "bad", "over"], weights=[4, 1, 6, 1, 3])[0]
        if kind == "compress":
            c = rng.choice([rng.randrange(0, last + 1), last])
            if not disk.may_compress(c):
                continue
            offset, length = c * cs, min(cs, size - c * cs)
            pattern = 0 if rng.random() < 0.15 else rng.randrange(1, 256)
            steps.append({"write": {"node": node, "offset": offset, "length": length, "pattern": pattern,
                                    "compress": True}})
            if c not in disk.hosted and c not in disk.compressed:
                disk.compressed.add(c)  # (else EIO: nothing changes)
                disk.touch(offset, length)
            continue
        if kind == "over":  # a normal or zero write over a compressed cluster, whole or in part
            if not disk.compressed:
                continue
            c = rng.choice(sorted(disk.compressed))
            offset = c * cs + rng.choice([0, 0, rng.randrange(0, (min(cs, size - c * cs)) // 512) * 512])
            length = min(rng.choice([512, 4 * K, cs, 2 * cs]), size - offset)
            verb = rng.choice(["write", "zero"])
            io: dict = {"node": node, "offset": offset, "length": length}
            if verb == "write":
                io["pattern"] = rng.randrange(0, 256)
            elif rng.random() < 0.5:
                io["unmap"] = True
            steps.append({verb: io})
            disk.rewrite(offset, length, zero=verb == "zero")
            continue
        if kind == "bad":  # an unaligned compressed write: EINVAL, nothing written
            offset = rng.randrange(0, size // 512) * 512
            if offset % cs == 0:
                offset += 512 if offset + 512 < size else -512
            steps.append({"write": {"node": node, "offset": offset, "length": min(cs, size - offset),
                                    "pattern": 1, "compress": True}})
            continue
        for _ in range(20):  # somewhere clear of the compressed clusters
            offset = rng.randrange(0, size // 512) * 512
            length = min(rng.choice([512, 4 * K, 64 * K, 200 * K]), size - offset)
            if not disk.touches_compressed(offset, length):
                break
        else:
            continue
        if kind == "write":
            steps.append({"write": {"node": node, "offset": offset, "length": length,
                                    "pattern": rng.randrange(0, 256)}})
        else:
            steps.append({"zero": {"node": node, "offset": offset, "length": length}})
        disk.rewrite(offset, length, zero=kind == "zero")
    return steps


def _target(rng: random.Random, name: str, size: int, steps: list[dict], prefill: bool) -> None:
    """A fresh qcow2 target image (64 KiB, 128 KiB or 2 MiB clusters), with one cluster of data if ``prefill``."""
    cluster = rng.choice([64 * K, 64 * K, 128 * K, 2 * M])
    steps.append({"qemu-img": ["create", "-f", "qcow2", "-o", f"cluster_size={cluster}", f"{name}.qcow2",
                               str(size)]})
    if prefill:
        offset = rng.randrange(0, -(-size // cluster)) * cluster
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                           "file": {"driver": "file", "filename": f"{name}.qcow2"}}))
        # (the whole cluster: a partial one leaves unwritten blocks that qemu-img map's own reads of the L2
        # table next to it may bring into the page cache, data then for SEEK_DATA; seed 19528 scenario 87)
        steps.append({"write": {"node": name, "offset": offset, "length": min(cluster, size - offset),
                                "pattern": rng.randrange(1, 256)}})
        steps.append(_qmp("blockdev-del", {"node-name": name}))


def _inspect(name: str) -> list[dict]:
    return [{"qemu-img": ["map", "--output=json", f"{name}.qcow2"]}, {"qemu-img": ["check", f"{name}.qcow2"]}]


def compress_scenario(seed: int, index: int) -> dict:
    """One scenario (see the module's docstring)."""
    rng = random.Random(f"{seed}/{index}/compress")
    size = rng.choice([M, 4 * M, 4 * M + 512 * rng.randrange(1, 128)])
    disk = _Disk(size, 64 * K)
    steps = _guest_writes(rng, "drive0", disk, rng.randint(3, 10))
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    for n in range(1, rng.randint(1, 3) + 1):
        src, tgt, copy, job = "drive0", f"z{n}", f"y{n}", f"zj{n}"
        sync = "full"
        if rng.random() < 0.4:  # a node of its own: a random cluster size, maybe a bitmap
            src = f"s{n}"
            cluster = rng.choice([4 * K, 64 * K, 64 * K, 2 * M])
            steps += [{"qemu-img": ["create", "-f", "qcow2", "-o", f"cluster_size={cluster}", f"{src}.qcow2",
                                    str(size)]},
                      _qmp("blockdev-add", {"driver": "qcow2", "node-name": src, "cache": DIRECT,
                                            "file": {"driver": "file", "filename": f"{src}.qcow2"}})]
            own = _Disk(size, cluster)
            steps += _guest_writes(rng, src, own, rng.randint(1, 4))
            if rng.random() < 0.3:  # opened again: qcow2_alloc_bytes starts a new cluster (free_byte_offset 0)
                node = {"driver": "qcow2", "node-name": src, "cache": DIRECT,
                        "file": {"driver": "file", "filename": f"{src}.qcow2"}}
                steps += [_qmp("blockdev-del", {"node-name": src}), _qmp("blockdev-add", node)]
                own.reopened()
                steps += _guest_writes(rng, src, own, rng.randint(1, 3))
            if rng.random() < 0.5:
                steps.append(_qmp("block-dirty-bitmap-add", {"node": src, "name": "zb"}))
                steps += _guest_writes(rng, src, own, rng.randint(1, 3))
                sync = "bitmap"
        else:
            sync = rng.choice(["full", "full", "top"])
        prefill = rng.random() < 0.25
        kind = rng.choices(["node", "existing", "absolute"], weights=[5, 3, 2])[0]
        if kind == "absolute":
            prefill = False
        else:
            _target(rng, tgt, size, steps, prefill)
        args: dict = {"job-id": job, "device": src, "sync": sync, "compress": True, "x-perf": {"max-workers": 1}}
        if sync == "bitmap":
            args.update(bitmap="zb", **{"bitmap-mode": rng.choice(["on-success", "always", "never"])})
        if kind == "node":
            steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": tgt,
                                               "file": {"driver": "file", "filename": f"{tgt}.qcow2"}}))
            args["target"] = tgt
            steps.append(_qmp("blockdev-backup", args))
        else:
            args.update(target=f"{tgt}.qcow2", format="qcow2",
                        mode="existing" if kind == "existing" else "absolute-paths")
            steps.append(_qmp("drive-backup", args))
        steps.append({"settle-jobs": True})
        if kind == "node":
            steps.append(_qmp("blockdev-del", {"node-name": tgt}))
        steps += _inspect(tgt)
        if rng.random() < 0.3:  # qemu-img convert -c of the target (closed by now)
            extra = rng.choice([[], ["-o", "cluster_size=4096"], ["-o", "cluster_size=2M"], ["-S", "0"]])
            steps.append({"qemu-img": ["convert", "-c", "-O", "qcow2", *extra, f"{tgt}.qcow2", f"x{n}.qcow2"]})
            steps += _inspect(f"x{n}")
        if rng.random() < 0.5:  # a plain backup from the compressed target
            steps += [{"qemu-img": ["create", "-f", "qcow2", f"{copy}.qcow2", str(size)]},
                      _qmp("blockdev-add", {"driver": "qcow2", "node-name": tgt, "cache": DIRECT,
                                            "file": {"driver": "file", "filename": f"{tgt}.qcow2"}}),
                      _qmp("drive-backup", {"job-id": f"yj{n}", "device": tgt, "target": f"{copy}.qcow2",
                                            "format": "qcow2", "mode": "existing", "sync": "full",
                                            "x-perf": {"max-workers": 1}}),
                      {"settle-jobs": True},
                      _qmp("query-named-block-nodes", {"flat": True}),
                      _qmp("blockdev-del", {"node-name": tgt})]
            steps += _inspect(copy)
        if rng.random() < 0.25:  # a shrink of the (closed) target through its compressed clusters
            new_size = rng.choice([rng.randrange(1, size // (64 * K)) * 64 * K, rng.randrange(1, size // 512) * 512])
            steps.append({"qemu-img": ["resize", "--shrink", f"{tgt}.qcow2", str(new_size)]})
            steps += _inspect(tgt)
        if sync == "bitmap":
            steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": src, "name": "zb"}))
        if src != "drive0":
            steps.append(_qmp("blockdev-del", {"node-name": src}))
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    return {"name": f"compress-{seed}-{index}", "drives": [{"id": "drive0", "size": str(size), "format": "qcow2"}],
            "steps": steps}


__all__ = ["compress_scenario"]
