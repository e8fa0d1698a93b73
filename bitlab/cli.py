"""The ``bitlab`` command. ``bitlab demo`` plays the seed's scenario in both completion modes."""

from __future__ import annotations

import argparse
import json
import shutil

from . import __version__, chain
from .conformance import report as conformance_report
from .scenarios import SeedOutcome, run_seed


def _job_lines(outcome: SeedOutcome) -> list[str]:
    lines = [f"completion-mode: {outcome.mode}", ""]
    for drive in outcome.drives.values():
        lines.append(f"{drive.drive} -> {drive.image}")
        for ev in drive.events:
            data = ev.get("data", {})
            if ev["event"] == "JOB_STATUS_CHANGE":
                lines.append(f"  status {data['status']}")
            elif ev["event"] == "BLOCK_JOB_ERROR":
                lines.append(f"  ERROR  {data['operation']} -> {data['action']}")
            elif ev["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                name = ev["event"].removeprefix("BLOCK_JOB_")
                lines.append(f"  {name} len={data['len']} offset={data['offset']}")
                if "error" in data:
                    lines.append(f"    error: {data['error']}")
        lines.append(f"  bitmap{drive.drive[-1]} count {drive.count_before} -> {drive.count_after}")
        lines.append(f"  image: {'VALID, keep' if drive.valid else 'INVALID, delete'}")
        lines.append("")
    lines.append("keep:   " + (", ".join(outcome.keep) or "-"))
    lines.append("delete: " + (", ".join(outcome.delete) or "-"))
    advice = chain.advise(outcome.machine)
    lines.append("next incremental (bitlab.chain.advise):")
    for d in outcome.drives.values():
        a = advice[d.drive]
        lines.append(f"  {d.drive} on top of {a.next_base}" if a.next_sync == "incremental"
                     else f"  {d.drive}: a new full backup")
    lines.append("proof (restored through the backing chain):")
    if not outcome.keep:
        lines.append("  -")
    for image in outcome.keep:
        proof = chain.verify(outcome.machine, image)
        lines.append(f"  {image}: {'restores exactly' if proof.ok else 'DIFFERS at ' + str(proof.first_difference)}")
    return lines


def side_by_side(left: list[str], right: list[str], width: int) -> str:
    col = max(30, (width - 3) // 2)
    rows = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        rows.append(f"{a[:col]:<{col}} | {b[:col]}")
    return "\n".join(rows)


def demo(failing: str | None = "drive1", width: int | None = None, as_json: bool = False) -> str:
    """Both completion modes of the seed's incremental transaction, side by side."""
    individual, grouped = run_seed("individual", failing), run_seed("grouped", failing)
    if as_json:
        return json.dumps({o.mode: {"transaction": o.transaction, "keep": o.keep, "delete": o.delete,
                                    "drives": {d.drive: {"events": d.events, "count_before": d.count_before,
                                                         "count_after": d.count_after, "valid": d.valid,
                                                         "next_base": chain.advise(o.machine)[d.drive].next_base}
                                               for d in o.drives.values()}}
                           for o in (individual, grouped)}, indent=2)
    width = width or shutil.get_terminal_size((120, 40)).columns
    header = ["The seed: an incremental backup of drive0 and drive1 in one transaction,",
              f"and {failing or 'no drive'}'s read fails (blkdebug). QMP sent:",
              json.dumps({"execute": "transaction", "arguments": individual.transaction}), ""]
    return "\n".join(header) + side_by_side(_job_lines(individual), _job_lines(grouped), width)


def serve(args: argparse.Namespace) -> int:
    """``bitlab serve``: a simulated QEMU 7.2 on a QMP socket, until ``quit`` or a signal."""
    import asyncio
    import sys

    from .qmp.server import QMPServer, check_host
    from .qmp.server import serve as run_server
    from .scenarios import FAIL_ON_READ

    try:
        check_host(args.host)
    except ValueError as err:
        print(f"bitlab serve: {err}", file=sys.stderr)
        return 2
    from .errors import QMPError
    from .qemu_img import QemuImgError

    server = QMPServer(seed=args.seed, echo=None if args.quiet else (sys.stdout, sys.stderr))
    for spec in args.drive:
        name, _, size = spec.partition(":")
        try:
            server.vm.add_drive(name, size or "64M", blkdebug=FAIL_ON_READ if name in args.fail_read else None)
        except (QMPError, QemuImgError, ValueError) as err:
            print(f"bitlab serve: --drive {spec}: {getattr(err, 'desc', err)}", file=sys.stderr)
            return 2
    try:
        asyncio.run(run_server(server, socket_path=args.socket, port=args.port, host=args.host, announce=sys.stdout))
    except (OSError, ValueError) as err:
        print(f"bitlab serve: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitlab", description="bitlab: QEMU 7.2 incremental backup, simulated")
    parser.add_argument("--version", action="version", version=f"bitlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="the seed's partial failure in both completion modes, side by side")
    p_demo.add_argument("--fail", default="drive1", choices=["drive0", "drive1", "none"],
                        help="which drive's backup read fails (default drive1)")
    p_demo.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p_serve = sub.add_parser("serve", help="a simulated QEMU 7.2 on a QMP socket (for qemu.qmp, qmp-shell)")
    where = p_serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="listen on this unix socket (created mode 0600)")
    where.add_argument("--port", type=int, metavar="N", help="listen on 127.0.0.1:N (0: any free port)")
    p_serve.add_argument("--host", default="127.0.0.1", help="only 127.0.0.1 (or localhost) is accepted")
    p_serve.add_argument("--seed", type=int, default=0, help="seed of the machine's random choices (node names)")
    p_serve.add_argument("--drive", action="append", default=[], metavar="NAME[:SIZE]",
                         help="a qcow2 drive like -drive if=none,id=NAME (default size 64M); repeatable")
    p_serve.add_argument("--fail-read", action="append", default=[], metavar="NAME",
                         help="blkdebug on this drive: after the first guest write, the next read fails "
                              "once with EIO (the seed's failing drive)")
    p_serve.add_argument("--quiet", action="store_true", help="do not print the emulator's output (qemu-io)")
    p_conf = sub.add_parser("conformance", help="random scenarios on real QEMU 7.2 and on bitlab, compared")
    conformance_report.add_arguments(p_conf)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "conformance":
        return conformance_report.run(args)
    if args.command == "demo":
        print(demo(None if args.fail == "none" else args.fail, as_json=args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
