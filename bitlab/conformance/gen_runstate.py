"""Random scenarios around the VM's run state (``bitlab conformance --focus runstate``): ``stop``, ``cont``,
``query-status`` and HMP ``stop`` / ``s``, ``cont`` / ``c``, ``info status`` (with wrong arguments now and then)
mixed into three kinds of episode, on QEMU 7.2's system emulator (the scenario's first step is one of them, so
that the real backend's daemon "auto" starts it):

- the throttled backups of ``--focus running`` (:func:`.gen_running.running_scenario`, the same for the same
  seed and index), with run-state steps inserted where its jobs have settled (each job's first request has
  finished: after its ``settle`` sleep or guest write). ``stop`` drains
  every node, which pauses and resumes every job; a job that is mid-request pauses only once that request ends on
  QEMU, which varies, so no run-state step goes between a job's start (or a change that lets it copy: speed 0, a
  cancel) and that point;
- a backup that a blkdebug error stops on its first request (``on-source-error`` / ``on-target-error``: ``stop``,
  or ``enospc`` with ENOSPC), waited for, then ``cont`` (which resets its ``io-status`` and leaves it paused),
  ``stop``, queries, and a resume or a cancel;
- a qcow2 or raw node over blkdebug whose ``set-state`` rules move on at ``flush_to_os`` / ``flush_to_disk`` and whose
  ``inject-error`` rules on later reads and writes depend on the state reached, so that whether ``stop`` flushed
  the node (every ``stop``: ``flush_to_os``; ``flush_to_disk`` only after a write) shows in their results.

Names of their own: error episodes ``rs<n>`` / ``rt<n>`` / ``rj<n>``, flush episodes ``rf<n>``.
"""

from __future__ import annotations

import random

from .gen_running import SETTLE, running_scenario
from .steps import qmp_step as _qmp

M = 1 << 20
IO = ("write", "zero", "discard", "read")
STARTS = ("blockdev-backup", "drive-backup", "transaction")
HMP_ERRORS = ["stop foo", "s x", "cont x", "c x", "info status x"]
QMP_ERRORS = [("stop", {"x": 1}), ("cont", {"force": True}), ("query-status", {"x": 1})]


def runstate_steps(rng: random.Random) -> list[dict]:
    """One to three run-state commands, QMP or HMP, right or (now and then) wrong."""
    steps: list[dict] = []
    for _ in range(rng.randint(1, 3)):
        what = rng.choices(["stop", "cont", "query-status", "hmp", "error"], weights=[8, 6, 4, 6, 1])[0]
        if what == "hmp":
            steps.append({"hmp": rng.choice(["stop", "s", "cont", "c", "info status", "  stop  "])})
        elif what == "error":
            if rng.random() < 0.5:
                steps.append({"hmp": rng.choice(HMP_ERRORS)})
            else:
                steps.append(_qmp(*rng.choice(QMP_ERRORS)))
        else:
            steps.append(_qmp(what))
    if rng.random() < 0.4:
        steps.append(_qmp("query-status") if rng.random() < 0.6 else {"hmp": "info status"})
    return steps


def _is_io(step: dict) -> bool:
    return any(verb in step for verb in IO)


def _unsettles(step: dict) -> bool:
    """Whether after ``step`` a job may be mid-request: a start, a speed of 0, a cancel."""
    qmp = step.get("qmp", {})
    execute, args = qmp.get("execute"), qmp.get("arguments") or {}
    return (execute in STARTS or execute in ("job-cancel", "block-job-cancel")
            or execute == "block-job-set-speed" and args.get("speed") == 0)


def with_runstate(rng: random.Random, steps: list[dict], chance: float = 0.3) -> list[dict]:
    """``steps`` (of :func:`.gen_running.running_backup` and the like) with run-state steps between them, only
    where every job has settled (see the module's docstring)."""
    out: list[dict] = []
    settled = True
    for i, step in enumerate(steps):
        if settled and rng.random() < chance:
            out += runstate_steps(rng)
        out.append(step)
        if _unsettles(step):
            settled = False
        elif "sleep" in step or "settle-jobs" in step:
            settled = True
        elif "write" in step and (step["write"]["offset"], step["write"]["length"]) == (0, 512) and (
                i + 1 < len(steps) and not _is_io(steps[i + 1])):
            settled = True  # gen_running's settle write (or one made when no job was fresh)
    return out


def error_episode(rng: random.Random, n: int) -> list[dict]:
    """A full backup of one worker that a blkdebug error on its source's reads or its target's writes stops;
    ``cont`` and ``stop`` around it, then a resume or a cancel."""
    source, target, job = f"rs{n}", f"rt{n}", f"rj{n}"
    errno = rng.choice([5, 28])
    on_target = rng.random() < 0.4
    action = "stop" if errno == 5 or rng.random() < 0.5 else "enospc"
    rule = {"event": "write_aio" if on_target else "read_aio", "errno": errno, "once": True}
    size = rng.choice([M, 2 * M, 4 * M])
    steps: list[dict] = []
    for name, rules in ((source, None if on_target else rule), (target, rule if on_target else None)):
        steps.append({"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", str(size)]})
        file: dict = {"driver": "file", "filename": f"{name}.qcow2"}
        if rules is not None:
            file = {"driver": "blkdebug", "image": file, "inject-error": [rules]}
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file}))
    steps.append({"write": {"node": source, "offset": 0, "length": rng.choice([64 << 10, M // 2, M]),
                            "pattern": rng.randrange(1, 256)}})
    steps.append(_qmp("blockdev-backup", {"job-id": job, "device": source, "target": target, "sync": "full",
                                          "x-perf": {"max-workers": 1},
                                          f"on-{'target' if on_target else 'source'}-error": action}))
    # (not a wait for "paused": blockdev-backup's own drained section pauses and resumes the new job first)
    steps.append({"sleep": SETTLE, "first-requests": [job]})  # its first request fails: paused by the error
    steps.append(_qmp("query-block-jobs"))
    for _ in range(rng.randint(1, 3)):
        steps += runstate_steps(rng)
        if rng.random() < 0.6:
            steps.append(_qmp(rng.choice(["query-block-jobs", "query-jobs"])))
    steps.append(_qmp(rng.choice(["query-block-jobs", "query-jobs"])))
    verb = rng.choice(["job-resume", "block-job-resume", "job-cancel", "block-job-cancel"])
    steps.append(_qmp(verb, {"id" if verb.startswith("job-") else "device": job}))
    steps.append({"settle-jobs": True})
    if rng.random() < 0.5:
        steps += runstate_steps(rng)
    steps.append(_qmp("query-jobs"))
    return steps


def flush_episode(rng: random.Random, n: int) -> list[dict]:
    """A qcow2 or raw node over blkdebug, states moved on by flushes and errors gated by them; guest requests
    and run-state commands in a random order. On raw, no flush but ``stop``'s and no rule but ``once`` (HMP
    ``qemu-io`` flushes a bare raw node through a BlockBackend that takes no permission: QEMU 7.2 does not flush
    its child, see gen_blkdebug)."""
    name = f"rf{n}"
    fmt = "raw" if rng.random() < 0.3 else "qcow2"
    size = rng.choice([M, 2 * M, 4 * M])
    states = rng.randint(2, 4)
    set_state = [{"event": rng.choice(["flush_to_os", "flush_to_os", "flush_to_disk"]), "state": s,
                  "new_state": s + 1} for s in range(1, states + 1)]
    # (one rule an event arms at a time: a second one armed with it would wait, active, for the next request, and
    # meet what bitlab does differently: see README "Known differences", blkdebug)
    inject: list[dict] = []
    for _ in range(rng.randint(1, 3)):
        rule: dict = {"event": rng.choice(["write_aio", "write_aio", "read_aio"]), "state": rng.randint(2, states + 1),
                      "errno": rng.choice([5, 28])}
        if any((r["event"], r["state"]) == (rule["event"], rule["state"]) for r in inject):
            continue
        if fmt == "raw" or rng.random() < 0.8:
            rule["once"] = True
        inject.append(rule)
    steps: list[dict] = [
        {"qemu-img": ["create", "-f", fmt, f"{name}.{fmt}", str(size)]},
        _qmp("blockdev-add", {"driver": fmt, "node-name": name, "file": {
            "driver": "blkdebug", "image": {"driver": "file", "filename": f"{name}.{fmt}"},
            "set-state": set_state, "inject-error": inject}}),
    ]
    for _ in range(rng.randint(4, 10)):
        what = rng.choices(["write", "read", "runstate", "flush"], weights=[8, 3, 8, 0 if fmt == "raw" else 1])[0]
        if what == "runstate":
            steps += runstate_steps(rng)
        elif what == "flush":
            steps.append({"flush": {"node": name}})
        else:
            offset = rng.randrange(0, size // (64 << 10)) * (64 << 10)
            io = {"node": name, "offset": offset, "length": min(rng.choice([512, 4096, 64 << 10, 128 << 10]),
                                                                 size - offset)}
            if what == "read":
                steps.append({"read": io | {"pattern": 0}})
            else:
                steps.append({"write": io | {"pattern": rng.randrange(1, 256),
                                             **({} if fmt == "qcow2" and rng.random() < 0.2 else {"flush": False})}})
    steps.append(_qmp("query-blockstats", {"query-nodes": True}))
    return steps


def runstate_scenario(seed: int, index: int = 0, size: int = 8 << 20) -> dict:
    """One to three episodes (a throttled backup story, an error-stopped backup, a flush story) with run-state
    commands; the same (seed, index), the same steps."""
    rng = random.Random(f"runstate{seed}/{index}")
    steps: list[dict] = [rng.choice([_qmp("query-status"), {"hmp": "info status"}, _qmp("stop"), {"hmp": "stop"}])]
    kinds = [k for k in ("backup", "error", "flush") if rng.random() < 0.5] or [rng.choice(["backup", "flush"])]
    rng.shuffle(kinds)
    for n, kind in enumerate(kinds, 1):
        if kind == "backup":  # --focus running's scenario (its nodes, writes, bitmaps, a throttled backup)
            steps += with_runstate(rng, running_scenario(seed, index, size)["steps"])
        elif kind == "error":
            steps += error_episode(rng, n)
        else:
            steps += flush_episode(rng, n)
    steps += runstate_steps(rng)
    steps.append(_qmp("query-status"))
    return {"name": f"runstate-{seed}-{index}", "steps": steps}
