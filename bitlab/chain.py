"""Backup chains: which images are valid, which to keep or delete, what the next incremental builds on.

The reasoning the seed asks a trainee to do ("d0-incr-1.qcow2 is valid and must be kept, but
d1-incr-1.qcow2 is invalid and should be deleted … a new incremental backup for drive0 needs to be
based on top of d0-incr-1.qcow2"), computed from a machine's history (:mod:`bitlab.history`), its
events and its image files — and proved by restoring an image through its backing chain and
comparing with the drive's content at the backup's point in time.

A dirty bitmap holds "what changed since point *g*" of its drive. A job's end moves that point
(on-success/always modes after success), keeps it (failure, or mode never), or — mode always after
a failure — makes the bitmap relative to the partial image the job left. An incremental image is
valid when its job completed, the bitmap was relative to a point some image holds, and the new
image's backing file is exactly that image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .block.paths import full_backing_filename, strip_file_protocol
from .content import Content
from .errors import QMPError
from .history import BackupStart, BitmapOp, history_of

END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


@dataclass
class ImageVerdict:
    """One backup image: valid (a complete restore point), and whether to keep it, with the reason."""

    image: str
    drive: str | None
    backing: str | None
    valid: bool
    keep: bool
    reason: str
    job: str | None = None
    sync: str | None = None
    status: str = ""  # completed, failed, cancelled, running
    error: str | None = None
    point: int | None = None  # the drive's write generation the image holds, when valid


@dataclass
class DriveAdvice:
    """Per drive: images to keep and delete, and what the next incremental backup must build on."""

    drive: str
    bitmap: str | None
    keep: list[str]
    delete: list[str]
    next_base: str | None  # the image the next incremental's target must have as backing file
    next_sync: str  # "incremental", or "full" when no image matches the bitmap
    reason: str

    def actions(self, vm: Any, target: str, *, bitmap_mode: str | None = None) -> list[dict]:
        """Follow the advice: create ``target`` (backed by ``next_base`` for an incremental) and return the
        transaction actions of the next backup — a full one re-anchors the bitmap (cleared). With a
        ``bitmap_mode`` other than on-success the incremental is ``sync=bitmap``. QEMU refuses the clear in
        a transaction with ``completion-mode: grouped``, so a full backup goes in an individual one."""
        if self.next_sync == "incremental":
            vm.qemu_img("create", "-f", "qcow2", "-b", self.next_base, "-F", "qcow2", target)
        else:
            block = next(b for b in vm.qmp("query-block") if b["device"] == self.drive)
            vm.qemu_img("create", "-f", "qcow2", target, str(block["inserted"]["image"]["virtual-size"]))
        data = {"device": self.drive, "target": target, "format": "qcow2", "mode": "existing",
                "sync": self.next_sync}
        actions: list[dict] = []
        if self.next_sync == "incremental":
            data["bitmap"] = self.bitmap
            if bitmap_mode not in (None, "on-success"):  # sync=incremental takes only on-success
                data["sync"], data["bitmap-mode"] = "bitmap", bitmap_mode
        elif self.bitmap is not None:
            actions.append({"type": "block-dirty-bitmap-clear", "data": {"node": self.drive, "name": self.bitmap}})
        return [*actions, {"type": "drive-backup", "data": data}]

    def __str__(self) -> str:
        lines = [f"{self.drive}: keep {', '.join(self.keep) or '(nothing)'}; "
                 f"delete {', '.join(self.delete) or '(nothing)'}"]
        if self.next_sync == "incremental":
            lines.append(f"  next: incremental with {self.bitmap}, target created with backing file {self.next_base}")
        else:
            lines.append("  next: a full backup (with a new bitmap anchor)")
        lines.append(f"  because {self.reason}")
        return "\n".join(lines)


@dataclass
class Verification:
    """The result of restoring an image and comparing it with its job's point-in-time content."""

    image: str
    ok: bool
    first_difference: int | None
    reason: str


@dataclass
class _Baseline:
    kind: str  # "point", "partial" or "broken"
    point: int = 0  # the drive's write generation the bitmap is relative to
    image: str | None = None  # partial: the image the bitmap is relative to
    reason: str = ""
    recording: bool = True
    disabled_at: int = 0


@dataclass
class _Job:
    start: BackupStart
    drive: str
    status: str = "running"
    error: str | None = None
    end_index: int | None = None
    baseline: _Baseline | None = None  # the bitmap's state when the job started


@dataclass
class ChainReport:
    """Everything :func:`analyse` found."""

    images: dict[str, ImageVerdict]
    advice: dict[str, DriveAdvice]
    jobs: list[_Job] = field(default_factory=list)

    @property
    def keep(self) -> list[str]:
        return [v.image for v in self.images.values() if v.keep]

    @property
    def delete(self) -> list[str]:
        return [v.image for v in self.images.values() if not v.keep]

    def chains(self) -> dict[str, list[list[str]]]:
        """Per drive, each chain from its full backup to a top image (images no other image builds on)."""
        out: dict[str, list[list[str]]] = {}
        bases = {v.backing for v in self.images.values()}
        for v in self.images.values():
            if v.image in bases or v.drive is None:
                continue
            chain = [v.image]
            while (b := self.images.get(chain[-1])) is not None and b.backing is not None:
                chain.append(b.backing)
            out.setdefault(v.drive, []).append(chain[::-1])
        return out

    def summary(self) -> str:
        """The verdicts and the advice as text."""
        lines = []
        for v in self.images.values():
            mark = "valid  " if v.valid else "INVALID"
            lines.append(f"{mark} {'keep  ' if v.keep else 'DELETE'} {v.image}: {v.reason}")
        lines += [str(a) for a in self.advice.values()]
        return "\n".join(lines)


# -- the files, on either backend ----------------------------------------------------------------
def _backing(vm: Any, key: str) -> str | None:
    """The image's backing file as an image key (None for none, or if the file is gone)."""
    if vm.backend == "sim":
        if key not in vm.images:
            return None
        image = vm.images[key]
        if not image.is_qcow2 or not image.backing_file:
            return None
        backing = full_backing_filename(key, image.backing_file)  # relative to the image's directory
    else:
        if not os.path.exists(os.path.join(vm.workdir, key)):
            return None
        backing = json.loads(vm.qemu_img("info", "-U", "--output=json", key)).get("full-backing-filename")
    try:
        return vm._image_key(strip_file_protocol(backing) or backing) if backing else None
    except QMPError:  # outside the work directory: gone, as far as the machine knows
        return None


def _exists(vm: Any, key: str) -> bool:
    if vm.backend == "sim":
        return key in vm.images
    return os.path.exists(os.path.join(vm.workdir, key))


def restore(vm: Any, image: str) -> Content:
    """The content a guest would read from ``image`` opened with its backing chain — read as an operator
    would restore it, with ``qemu-img convert -O raw`` (simulated, or real on ``backend="qemu"``)."""
    key = vm._image_key(image)
    tmp = ".bitlab-restore.raw"
    vm.qemu_img("convert", "-U", "-O", "raw", key, tmp)
    if vm.backend == "sim":
        content = Content.from_map(vm.images[tmp].data)
        vm.images.remove(tmp)
        return content
    try:
        return Content.from_bytes(np.fromfile(os.path.join(vm.workdir, tmp), dtype=np.uint8))
    finally:
        os.unlink(os.path.join(vm.workdir, tmp))


# -- the analysis --------------------------------------------------------------------------------
def _job_ends(vm: Any, jobs: list[_Job]) -> None:
    events = vm.events
    for job in jobs:
        created = False  # the job's own events start with its "created" status change
        for i in range(job.start.events_at, len(events)):
            ev = events[i]
            data = ev.get("data", {})
            if not created:
                created = ev["event"] == "JOB_STATUS_CHANGE" and data.get("id") == job.start.job and \
                    data.get("status") == "created"
                continue
            if ev["event"] in END_EVENTS and data.get("device") == job.start.job:
                job.end_index = i
                if ev["event"] == "BLOCK_JOB_CANCELLED":
                    job.status = "cancelled"
                elif ev["data"].get("error"):
                    job.status, job.error = "failed", ev["data"]["error"]
                else:
                    job.status = "completed"
                break


def analyse(vm: Any) -> ChainReport:
    """Verdicts for every backup image the machine's jobs wrote, and per-drive advice."""
    hist = history_of(vm)
    jobs = [_Job(b, b.drive) for b in hist.backups]
    _job_ends(vm, jobs)
    timeline: list[tuple[tuple, str, Any]] = []
    for entry in hist.entries:
        if isinstance(entry, (BitmapOp, BackupStart)):
            timeline.append(((entry.events_at, 1, entry.seq), "entry", entry))
    for job in jobs:
        if job.end_index is not None:
            timeline.append(((job.end_index + 1, 0, job.end_index), "end", job))
    timeline.sort(key=lambda item: item[0])
    by_start = {id(j.start): j for j in jobs}

    baselines: dict[tuple[str, str], _Baseline] = {}
    holds: dict[str, int] = {}  # image -> the drive generation it holds (valid images)
    holds_drive: dict[str, str] = {}
    partial_of: dict[str, bool] = {}  # partial image -> whether it was written over the right base
    verdicts: dict[str, ImageVerdict] = {}

    def gap_checked(b: _Baseline, generation: int, name: str) -> _Baseline:
        if b.kind != "broken" and not b.recording and generation != b.disabled_at:
            return _Baseline("broken", reason=f"{name} was disabled while the guest wrote, so it missed writes")
        return b

    for _, kind, item in timeline:
        if kind == "entry" and isinstance(item, BitmapOp):
            _bitmap_op(baselines, (item.drive, item.name), item)
        elif kind == "entry":
            job = by_start[id(item)]
            if item.bitmap is not None and (job.drive, item.bitmap) in baselines:
                job.baseline = gap_checked(baselines[(job.drive, item.bitmap)], item.generation, item.bitmap)
        else:
            job = item
            verdict = _judge(vm, job, holds, holds_drive, partial_of)
            verdicts[verdict.image] = verdict
            if verdict.valid:
                holds[verdict.image] = job.start.generation
                holds_drive[verdict.image] = job.drive
            _bitmap_after_job(baselines, job, verdict)
            if verdict.status in ("failed", "cancelled") and job.baseline is not None:
                # a partial image completes a chain only if what it was written over was right
                base = job.baseline
                partial_of[verdict.image] = job.start.sync in ("full", "top") or (
                    verdict.backing is not None and (
                        (base.kind == "point" and holds.get(verdict.backing) == base.point
                         and holds_drive.get(verdict.backing) == job.drive)
                        or (base.kind == "partial" and verdict.backing == base.image
                            and partial_of.get(base.image, False))))
    for job in jobs:  # still running: not a backup yet
        if job.end_index is None and job.start.target_file:
            verdicts[job.start.target_file] = ImageVerdict(
                job.start.target_file, job.drive, _backing(vm, job.start.target_file), False, True,
                f"job '{job.start.job}' is still running: not a backup yet", job.start.job, job.start.sync, "running")
    order = {j.start.target_file or j.start.target: i for i, j in enumerate(jobs)}
    verdicts = dict(sorted(verdicts.items(), key=lambda kv: order.get(kv[0], len(order))))
    _decide_keep(verdicts, baselines, partial_of)
    advice = _advise(vm, jobs, verdicts, baselines, holds, holds_drive, partial_of)
    return ChainReport(verdicts, advice, jobs)


def _bitmap_op(baselines: dict, key: tuple[str, str], op: BitmapOp) -> None:
    gen = op.generation
    current = baselines.get(key)
    if op.op == "add":
        disabled = bool(op.args.get("disabled", False))
        baselines[key] = _Baseline("point", gen, recording=not disabled, disabled_at=gen)
    elif current is None:
        return
    elif op.op == "remove":
        del baselines[key]
    elif op.op == "clear":
        baselines[key] = _Baseline("point", gen, recording=current.recording, disabled_at=gen)
    elif op.op == "disable" and current.recording:
        current.recording, current.disabled_at = False, gen
    elif op.op == "enable" and not current.recording:
        if gen != current.disabled_at and current.kind != "broken":
            baselines[key] = _Baseline("broken", reason=f"{key[1]} was disabled while the guest wrote, "
                                                        "so it missed writes")
        baselines[key].recording = True
    elif op.op == "merge":
        skeys = [(s["drive"], s["name"]) if isinstance(s, dict) else (key[0], s) for s in op.args.get("bitmaps", [])]
        parts = [current, *(baselines.get(k) for k in skeys)]
        if all(p is not None and p.kind == "point" for p in parts) and all(k[0] == key[0] for k in skeys):
            current.point = min(p.point for p in parts)  # type: ignore[union-attr]
        else:
            baselines[key] = _Baseline("broken", reason=f"{key[1]} was merged with bitmaps of another base",
                                       recording=current.recording)


def _judge(vm: Any, job: _Job, holds: dict, holds_drive: dict, partial_of: dict) -> ImageVerdict:
    b = job.start
    image = b.target_file or b.target
    backing = _backing(vm, image) if b.target_file else None
    verdict = ImageVerdict(image, job.drive, backing, False, False, "", b.job, b.sync, job.status, job.error)
    if b.target_file is None:
        verdict.reason = f"the target node '{b.target}' has no image file: nothing to restore from"
        return verdict
    if b.sync == "none":
        verdict.reason = "sync=none copies only what the guest overwrote while the job ran"
        return verdict
    if job.status == "failed":
        verdict.reason = f"job '{b.job}' failed ({job.error}): the image is incomplete"
        return verdict
    if job.status == "cancelled":
        why = (" because another job of its grouped transaction failed" if b.completion_mode == "grouped"
               else "")
        verdict.reason = f"job '{b.job}' was cancelled{why}: the image is incomplete"
        return verdict
    if b.sync in ("full", "top"):
        verdict.valid, verdict.point = True, b.generation
        verdict.reason = f"complete {b.sync} backup of {job.drive}"
        return verdict
    base = job.baseline
    if base is None:
        verdict.reason = f"bitmap {b.bitmap} has no known base point"
    elif base.kind == "broken":
        verdict.reason = base.reason
    elif base.kind == "partial":
        if backing == base.image and partial_of.get(base.image, False):
            verdict.valid, verdict.point = True, b.generation
            verdict.reason = f"incremental on {backing} (which {b.bitmap} completes)"
        else:
            verdict.reason = (f"{b.bitmap} holds what {base.image} lacks, but the image's backing file is "
                              f"{backing or 'none'}")
    elif backing is not None and holds.get(backing) == base.point and holds_drive.get(backing) == job.drive:
        verdict.valid, verdict.point = True, b.generation
        verdict.reason = f"incremental on {backing}, which holds {job.drive} as {b.bitmap} expected"
    else:
        owner = [img for img, g in holds.items() if g == base.point and holds_drive.get(img) == job.drive]
        expected = owner[-1] if owner else "an image of that point (none exists)"
        verdict.reason = (f"{b.bitmap} held the changes since {expected}, but the image's backing file is "
                          f"{backing or 'none'}: restoring it would lose writes")
    return verdict


def _bitmap_after_job(baselines: dict, job: _Job, verdict: ImageVerdict) -> None:
    b = job.start
    key = (job.drive, b.bitmap)
    if b.bitmap is None or key not in baselines or b.bitmap_mode == "never":
        return
    current = baselines[key]
    if job.status == "completed":
        baselines[key] = _Baseline("point", b.generation, recording=current.recording,
                                   disabled_at=current.disabled_at)
    elif job.status in ("failed", "cancelled") and b.bitmap_mode == "always":
        # the copied clusters were cleared: the bitmap now completes the partial image
        if verdict.backing is not None or b.sync in ("full", "top"):
            baselines[key] = _Baseline("partial", current.point, image=verdict.image, recording=current.recording,
                                       disabled_at=current.disabled_at)


def _decide_keep(verdicts: dict[str, ImageVerdict], baselines: dict, partial_of: dict[str, bool]) -> None:
    needed = {b.image for b in baselines.values() if b.kind == "partial" and partial_of.get(b.image, False)}
    for v in verdicts.values():
        if v.valid:
            v.keep = True
        elif v.image in needed:
            v.keep = True
            v.reason += "; but the bitmap now records only what it lacks: the next incremental must build on it"
    changed = True
    while changed:  # whatever a kept image restores through must stay
        changed = False
        for v in list(verdicts.values()):
            if v.keep and v.backing in verdicts and not verdicts[v.backing].keep:
                verdicts[v.backing].keep = True
                verdicts[v.backing].reason += f"; kept: {v.image} builds on it"
                changed = True


def _advise(vm: Any, jobs: list[_Job], verdicts: dict[str, ImageVerdict], baselines: dict, holds: dict,
            holds_drive: dict, partial_of: dict[str, bool]) -> dict[str, DriveAdvice]:
    drives: list[str] = []
    for job in jobs:
        if job.drive not in drives:
            drives.append(job.drive)
    for d, _ in baselines:
        if d not in drives:
            drives.append(d)
    advice = {}
    for d in drives:
        keep = [v.image for v in verdicts.values() if v.drive == d and v.keep]
        delete = [v.image for v in verdicts.values() if v.drive == d and not v.keep]
        used = [j.start.bitmap for j in jobs if j.drive == d and j.start.bitmap and (d, j.start.bitmap) in baselines]
        names = [n for dd, n in baselines if dd == d]
        bitmap = used[-1] if used else (names[0] if names else None)
        base_img, sync, reason = None, "full", f"{d} has no dirty bitmap to base an incremental on"
        if bitmap is not None:
            base = baselines[(d, bitmap)]
            if base.kind == "partial" and not partial_of.get(base.image or "", False):
                reason = f"{bitmap} holds what the partial {base.image} lacks, but that image was written over " \
                         "the wrong base"
            elif base.kind == "partial":
                base_img, sync = base.image, "incremental"
                reason = f"{bitmap} holds what the partial {base.image} lacks plus every later write"
            elif base.kind == "broken":
                reason = base.reason
            else:
                owners = [img for img, g in holds.items() if g == base.point and holds_drive.get(img) == d
                          and _exists(vm, img)]
                if owners:
                    base_img, sync = owners[-1], "incremental"
                    reason = f"{bitmap} holds every change since the point {owners[-1]} holds"
                else:
                    reason = f"no image holds {d} at the point {bitmap} counts from"
        advice[d] = DriveAdvice(d, bitmap, keep, delete, base_img, sync, reason)
    return advice


# -- the public verbs -----------------------------------------------------------------------------
def verdicts(vm: Any) -> list[ImageVerdict]:
    """Every backup image's verdict (valid, keep, reason, backing), in the order the jobs started."""
    return list(analyse(vm).images.values())


def advise(vm: Any) -> dict[str, DriveAdvice]:
    """Per drive: keep, delete, and what the next incremental must be based on."""
    return analyse(vm).advice


def chains(vm: Any) -> dict[str, list[list[str]]]:
    """Per drive, the backup chains (full first)."""
    return analyse(vm).chains()


def point_in_time(vm: Any, image: str) -> Content:
    """What the drive read when the job that wrote ``image`` started (the latest such job)."""
    key = vm._image_key(image)
    starts = [b for b in history_of(vm).backups if b.target_file == key]
    if not starts:
        raise KeyError(f"no backup job wrote '{image}'")
    return starts[-1].content  # type: ignore[return-value]


def verify(vm: Any, image: str) -> Verification:
    """Restore ``image`` through its backing chain and compare with its job's point in time."""
    key = vm._image_key(image)
    expected = point_in_time(vm, key)
    got = restore(vm, key)
    if got.size != expected.size:
        return Verification(key, False, min(got.size, expected.size),
                            f"size {got.size} differs from the drive's {expected.size}")
    diff = got.first_difference(expected)
    if diff is None:
        return Verification(key, True, None, "restores exactly to the drive's content at the backup's point in time")
    return Verification(key, False, diff, f"content differs from the drive's at offset {diff}")
