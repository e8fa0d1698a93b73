"""``bitlab conformance``: random scenarios on real QEMU 7.2 and on bitlab, as a table."""

from __future__ import annotations

import argparse
import os
import random
import time

from ..backends.qemu import DAEMON_ENV, QemuDaemonError, QemuNotFound, qemu_missing
from .gen_blkdebug import blkdebug_scenario
from .gen_commit import commit_scenario
from .gen_compress import compress_scenario
from .gen_fleecing import fleecing_scenario
from .gen_mirror import mirror_scenario
from .gen_parents import parents_scenario
from .gen_peek import peek_scenario
from .gen_prealloc import prealloc_scenario
from .gen_running import running_scenario
from .gen_runstate import runstate_scenario
from .gen_snapshot import snapshot_scenario
from .gen_throttle import throttle_scenario
from .generator import random_scenario
from .runner import check

FOCUS = {"running": running_scenario, "parents": parents_scenario, "blkdebug": blkdebug_scenario,
         "compress": compress_scenario, "runstate": runstate_scenario, "fleecing": fleecing_scenario,
         "throttle": throttle_scenario, "mirror": mirror_scenario, "commit": commit_scenario, "peek": peek_scenario,
         "snapshot": snapshot_scenario, "prealloc": prealloc_scenario}
SYSTEM_ONLY = {"runstate": "stop, cont and query-status"}
"""Foci whose every scenario needs QEMU's system emulator: what it needs there."""


def report(scenarios: int, seed: int, show: int = 5, focus: str | None = None,
           daemon: str | None = None) -> tuple[str, int]:
    """The report text and the number of scenarios that differ (real QEMU's ``daemon``: see :func:`.runner.play`)."""
    if focus in SYSTEM_ONLY and (daemon or os.environ.get(DAEMON_ENV)) == "qsd":
        raise QemuDaemonError(f"--focus {focus} needs QEMU's system emulator ({SYSTEM_ONLY[focus]}), which "
                              "qemu-storage-daemon does not have: use --daemon system or auto")
    missing = qemu_missing()
    if missing:
        raise QemuNotFound(missing)
    start = time.monotonic()
    differing: dict[str, list] = {}
    for index in range(scenarios):
        scenario = FOCUS.get(focus or "", random_scenario)(seed, index)
        diffs = check(scenario, daemon)
        if diffs:
            differing[scenario["name"]] = diffs
    elapsed = time.monotonic() - start
    lines = [
        f"bitlab conformance against real QEMU 7.2 (seed {seed}{f', daemon {daemon}' if daemon else ''})",
        "",
        f"  {'scenarios run':<22}{scenarios:>8}",
        f"  {'identical':<22}{scenarios - len(differing):>8}",
        f"  {'different':<22}{len(differing):>8}",
        f"  {'seconds':<22}{elapsed:>8.1f}",
    ]
    for name, diffs in list(differing.items())[:show]:
        lines += ["", f"== {name} ({len(diffs)} difference(s))"]
        lines += [d.render() for d in diffs[:3]]
    if len(differing) > show:
        lines.append(f"... and {len(differing) - show} more")
    if differing:
        focus_arg = f" --focus {focus}" if focus else ""
        focus_arg += f" --daemon {daemon}" if daemon else ""
        lines += ["", f"replay: bitlab conformance --seed {seed} --scenarios {scenarios}{focus_arg}"]
    return "\n".join(lines), len(differing)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", type=int, default=50, help="how many random scenarios (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="the seed (default: a new one, printed)")
    parser.add_argument("--focus", choices=sorted(FOCUS), default=None,
                        help="scenarios built around backups that run while the guest writes (running), "
                             "around the parents of a backup's source: overlays, earlier targets (parents), "
                             "around blkdebug's events and failed requests under raw and qcow2 nodes (blkdebug), "
                             "around compressed clusters (compress), "
                             "around image fleecing: copy-before-write and snapshot-access nodes (fleecing), "
                             "around throttle groups and throttle nodes (throttle), around blockdev-mirror and "
                             "drive-mirror (mirror), around commit and stream jobs (commit), around what "
                             "qemu-img -U sees of a running image (peek), around external snapshots (snapshot), "
                             "the random mix over images made with preallocation=metadata (prealloc), "
                             "or around stop, cont and query-status on the system emulator (runstate)")
    parser.add_argument("--daemon", choices=["auto", "qsd", "system"], default=None,
                        help="real QEMU's daemon: qemu-storage-daemon (qsd), the system emulator (system), or "
                             "auto (default, or BITLAB_QEMU_DAEMON): the system emulator only for -drive or HMP")


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        text, bad = report(args.scenarios, seed, focus=args.focus, daemon=args.daemon)
    except (QemuNotFound, QemuDaemonError) as err:
        print(err)
        return 2
    print(text)
    return 1 if bad else 0
