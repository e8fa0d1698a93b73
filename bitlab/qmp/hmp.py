"""human-monitor-command, as far as bitlab needs it: ``qemu-io NODE "CMD"``, ``info``, ``stop``, ``cont`` and
``block_resize``."""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from typing import Any

import numpy as np

from ..block import perms
from ..block.blkdebug import BlockIOError
from ..block.graph import INT64_MAX
from ..block.info import driver_info, driver_names, dump_specific, format_specific, image_info_dump
from ..errors import QMPError, generic
from ..qmp_order import wire_order
from ..units import parse_size_prefix
from .cmd_block import qmp_block_resize
from .cmd_runstate import status_line, vm_cont, vm_stop
from .commands import TABLE
from .qemu_io import QemuIoError, cvtstr, dump_buffer, parse_qemu_io
from .types import HumanMonitorCommand


def _report(verb: str, offset: int, length: int) -> str:
    """qemu-io's two report lines. Simulated I/O takes no time, so the rate is shown as inf."""
    return (f"{verb} {length}/{length} bytes at offset {offset}\n"
            f"{cvtstr(length)}, 1 ops; 00.00 sec (inf bytes/sec and inf ops/sec)\n")


WRITERS = ("write", "writev", "discard")  # qemu-io commands that need the write permission


def _hmp_drains(vm: Any, device: str) -> None:
    """HMP qemu-io on a node name makes a BlockBackend of its own, which drains the node twice as the command
    ends (measured on the system emulator: a ready mirror goes standby, ready, standby, ready): every job linked to
    the node pauses and resumes — a ready mirror copies what the write dirtied at once instead of after its 100 ms
    sleep; a commit or stream job's rate-limit sleep ends; a backup (linked through its filter, which the guest's
    request enters) restarts its copy call, and completes there if copy-before-write copied all it had left
    (``--focus running --seed 12024 --daemon system``, scenario 37). The simulator's guest
    writes are the system emulator's HMP qemu-io only with ``Machine(daemon="system")``; qemu-storage-daemon's
    guest (an NBD client of an export kept for the node's life) drains nothing."""
    if getattr(vm, "daemon", "qsd") != "system" or device in vm.graph.devices:
        return
    node = vm.graph.nodes.get(device)
    jobs = [job for job in vm.jobs.jobs if node is not None and job.uses(node)]
    for _ in range(2 if jobs else 0):
        vm.jobs.drain_jobs(jobs, lambda: None)


def _refuse_drained(vm: Any, node: Any) -> None:
    """A mirror or active commit that has finished copying (waiting for job-finalize, or for the monitor to end it)
    keeps its source drained until its switch-over: QEMU holds a request through the filter or from above until
    then (over NBD the client waits; HMP qemu-io would wait forever), and where it lands then depends on the
    switch-over. bitlab does not simulate the held request."""
    for job in vm.jobs.jobs:
        if not getattr(job, "exit_drained", False):
            continue
        drained, todo = set(), [job.top, job.source]
        while todo:  # the source, and everything above it (bdrv_drained_begin drains the parents)
            here = todo.pop()
            if id(here) in drained:
                continue
            drained.add(id(here))
            todo += [parent for parent in vm.graph.nodes.values() if any(c is here for _, c in parent.children)]
        if id(node) in drained:
            raise generic(f"bitlab does not simulate I/O while job '{job.id}' ({job.status}) keeps "
                          f"'{vm.device_or_node_name(job.source)}' drained: QEMU holds the request until the job "
                          "is finalized")


def run_qemu_io(vm: Any, device: str, command: str, monitor: list[str]) -> str:
    """Run a qemu-io command against a device or node; returns qemu-io's output (its stdout). What
    qemu-io prints through the monitor (error_report, ``info``'s format-specific lines) goes to ``monitor``."""
    node = vm.graph.devices.get(device)
    if node is None and vm.graph.nodes.get(device) is None:
        raise generic(f"Cannot find device='' nor node-name='{device}'")
    try:
        req = parse_qemu_io(command)
    except QemuIoError as err:
        vm.console_err.append(err.stderr)
        if err.monitor:
            monitor.append(err.monitor.replace("\n", "\r\n"))
        return err.stdout
    needs = {"truncate": perms.WRITE | perms.RESIZE}.get(req.verb, perms.WRITE if req.verb in WRITERS else 0)
    if node is None:
        node = vm.graph.nodes[device]
        if needs:  # qemu-io's own BlockBackend on the node (taking nothing) now takes what the command needs
            perms.check_blk(vm.graph, node, needs)
    elif needs & ~vm.graph.device_perm.get(device, perms.READ):
        # the device's BlockBackend takes it from now on (qemuio_command's blk_set_perm)
        perm = vm.graph.device_perm.get(device, perms.READ) | needs
        view = perms.PermView(vm.graph)
        view.set_blk(node, f"block device '{device}'", perm)
        view.check(node)
        vm.graph.device_perm[device] = perm
    verb, offset, length = req.verb, req.offset, req.length
    if verb == "":
        return ""
    _refuse_drained(vm, node)
    if verb == "flush":
        try:
            node.flush()
        except BlockIOError:
            pass  # qemu-io 7.2 prints nothing when a flush fails
        return ""
    if verb in QUERIES:
        return QUERIES[verb](node, req, monitor)
    if verb == "truncate":  # blk_truncate; its error comes through the monitor (error_report_err)
        try:
            node.resize(offset, req.prealloc)
        except QMPError as err:
            monitor.append(f"{err.desc}\r\n")
        return ""
    if offset + length > node.size:
        return f"{verb} failed: Input/output error\n"
    report = "" if req.quiet else _report({"write": "wrote", "writev": "wrote", "readv": "read"}.get(verb, verb),
                                          offset, length)
    try:
        if verb in ("write", "writev", "discard") and _has_readonly_bitmaps(node):
            raise BlockIOError(errno.EPERM, verb)
        if verb in ("write", "writev"):
            flushed = _fua_node(node)
            gen = flushed.write_gen
            if req.zero:
                node.write_zeroes(offset, length, unmap=req.unmap)
            elif req.compress:
                node.write_compressed(offset, length, np.array([offset]), np.array([offset + length]),
                                      np.array([0xCD if req.pattern is None else req.pattern]))
            else:
                node.write(offset, length, 0xCD if req.pattern is None else req.pattern)
            if req.fua:
                _emulate_fua(flushed, gen)
            return report
        if verb == "discard":
            node.discard(offset, length)
            return report
        if req.verbose and not req.quiet:
            starts, ends, vals = node.pread(offset, length)
            data = np.repeat(np.asarray(vals, dtype=np.uint8), ends - starts).tobytes()
            checked = data[req.pattern_offset:req.pattern_offset + req.pattern_count]
            differs = req.pattern is not None and checked.count(req.pattern) != len(checked)
            report = dump_buffer(data, offset) + report
        else:
            starts, ends, vals = node.pread(offset + req.pattern_offset, req.pattern_count) \
                if req.pattern is not None else node.pread(offset, length)
            differs = req.pattern is not None and req.pattern_count and bool((vals != req.pattern).any())
    except BlockIOError as err:
        return f"{verb} failed: {os.strerror(err.errno)}\n"
    if differs:
        report = f"Pattern verification failed at offset {offset + req.pattern_offset}, {req.pattern_count} bytes\n" \
            + report
    return report


def _has_readonly_bitmaps(node: Any) -> bool:
    """bdrv_has_readonly_bitmaps, which fails a write or discard with EPERM (bdrv_aligned_pwritev,
    bdrv_co_pdiscard): on the node, or the one a backup's filter passes it to. Only a qcow2 node left
    read-write by a failed read-only blockdev-reopen has such bitmaps (bitlab.block.reopen)."""
    while node.driver == "copy-before-write":
        node = node.child("file")
    return any(bm.readonly for bm in node.bitmaps)


def _fua_node(node: Any) -> Any:
    """The node a Force Unit Access write (``-f``) flushes: no driver here supports the flag (file-posix does
    not, so neither do the nodes that pass it down), so the block layer flushes the node that got the write
    (bdrv_driver_pwritev); a backup's copy-before-write filter stands for its source here."""
    while node.driver == "copy-before-write":
        node = node.child("file")
    return node


def _emulate_fua(node: Any, gen: int) -> None:
    """The flush after a FUA write to ``node``, whose write generation was ``gen`` before it: the flush comes
    before the write's own completion counts it (bdrv_co_write_req_finish), so it fires ``flush_to_disk`` only
    if the node was written before since its last flush; its children got the write already. A qcow2 node
    writes back its metadata caches; raw and blkdebug fire blkdebug's flush events."""
    after, node.write_gen = node.write_gen, gen
    try:
        node.flush()
    finally:
        node.write_gen = after


def _alloc(node: Any, req: Any, monitor: list[str]) -> str:
    """alloc_f: the bytes allocated in the node's own layer, from ``offset`` up to ``count`` bytes or
    the end of the node (the count shown is what was looked at)."""
    count = max(0, min(req.length, node.size - req.offset))
    total = 0
    if count:
        try:
            starts, ends, allocated = node.is_allocated(req.offset, count)
        except BlockIOError as err:  # (snapshot-access: a snapshot it may not read)
            return f"is_allocated failed: {os.strerror(err.errno)}\n"
        total = int((ends - starts)[allocated].sum())
    return f"{total}/{count} bytes allocated at offset {cvtstr(req.offset)}\n"


def _map(node: Any, req: Any, monitor: list[str]) -> str:
    """map_f: the node's allocated and unallocated stretches, start to end."""
    if not node.size:
        return ""
    try:
        starts, ends, allocated = node.is_allocated(0, node.size)  # maximal runs
    except BlockIOError as err:  # error_report, through the monitor (snapshot-access: EACCES, ENOTSUP)
        monitor.append(f"Failed to get allocation status: {os.strerror(err.errno)}\r\n")
        return ""
    return "".join(f"{cvtstr(int(e - s))} (0x{int(e - s):x}) bytes {'    allocated' if a else 'not allocated'} "
                   f"at offset {cvtstr(int(s))} (0x{int(s):x})\n" for s, e, a in zip(starts, ends, allocated))


def _length(node: Any, req: Any, monitor: list[str]) -> str:
    return f"{cvtstr(node.size)}\n"


def _info(node: Any, req: Any, monitor: list[str]) -> str:
    """info_f: the driver's names, bdrv_get_info's cluster size and VM state offset (a filter asks
    the node below; a driver without it ends the output), and the format-specific information, which
    qemu-io prints through the monitor."""
    out = "".join(f"format name: {name}\n" for name in driver_names(node))
    got = driver_info(node)
    if got is None:
        return out
    out += f"cluster size: {cvtstr(got[0])}\nvm state offset: {cvtstr(got[1])}\n"
    specific = format_specific(node)
    if specific is not None:
        out += "Format specific information:\n"
        monitor.append("".join(f"{line}\r\n" for line in dump_specific(wire_order(specific["data"]), 4)))
    return out


QUERIES = {"alloc": _alloc, "map": _map, "length": _length, "info": _info}


def _print_block_info(name: str, inserted: dict, verbose: bool, removable: bool) -> str:
    """print_block_info (block/monitor/block-hmp-cmds.c) of one device or node."""
    out = (f"{name}: {inserted['file']} ({inserted['drv']}{', read-only' if inserted['ro'] else ''}"
           f"{', encrypted' if inserted.get('encrypted') else ''})\n")
    if removable:  # a -drive if=none device: removable, its tray closed, not locked
        out += "    Removable device: not locked, tray closed\n"
    cache = inserted["cache"]
    out += (f"    Cache mode:       {'writeback' if cache['writeback'] else 'writethrough'}"
            f"{', direct' if cache['direct'] else ''}{', ignore flushes' if cache['no-flush'] else ''}\n")
    if "backing_file" in inserted:
        out += f"    Backing file:     {inserted['backing_file']} (chain depth: {inserted['backing_file_depth']})\n"
    if inserted["detect_zeroes"] != "off":
        out += f"    Detect zeroes:    {inserted['detect_zeroes']}\n"
    if verbose:
        out += "\nImages:\n"
        image: dict | None = inserted["image"]
        while image is not None:
            out += image_info_dump(image)
            image = image.get("backing-image")
    return out


def info_block(vm: Any, rest: str = "") -> str:
    """HMP ``info block [-n] [-v] [device]`` ("nodes:-n,verbose:-v,device:B?"): the devices (-drive) as
    query-block shows them, or with ``-n`` (or a device name that is no device) the named nodes as
    query-named-block-nodes does, each as print_block_info prints it."""
    words = rest.split()
    nodes = bool(words) and words[0] == "-n"
    words = words[1:] if nodes else words
    verbose = bool(words) and words[0] == "-v"
    words = words[1:] if verbose else words
    device = words[0] if words else None
    out, printed = "", False
    if not nodes:  # (a blank line before every entry but the list's first, printed or not)
        for i, info in enumerate(TABLE.dispatch(vm, {"execute": "query-block"})["return"]):
            if device is None or info["device"] == device:
                inserted = info["inserted"]
                out += ("\n" if i else "") + _print_block_info(f"{info['device']} ({inserted['node-name']})",
                                                               inserted, verbose, info["removable"])
                printed = True
    if printed or (device is None and not nodes):
        return out.replace("\n", "\r\n")
    for i, node in enumerate(TABLE.dispatch(vm, {"execute": "query-named-block-nodes"})["return"]):
        if device is None or node["node-name"] == device:
            out += ("\n" if i else "") + _print_block_info(node["node-name"], node, verbose, False)
    return out.replace("\n", "\r\n")


def info_block_jobs(vm: Any) -> str:
    """HMP ``info block-jobs``."""
    jobs = [j for j in reversed(vm.jobs.jobs) if j.is_block_job]
    if not jobs:
        return "No active jobs\r\n"
    out = ""
    for job in jobs:
        out += (f"Type {job.job_type}, device {job.id}: Completed {job.progress_current} of "
                f"{job.progress_total} bytes, speed limit {job.speed} bytes/s\r\n")
    return out


INFO = {"block": info_block, "block-jobs": info_block_jobs, "status": status_line}
INFO_NO_ARGS = ("block-jobs", "status")  # (info block takes a device)

NO_ARGS = {"stop": ("stop|s", vm_stop), "s": ("stop|s", vm_stop), "cont": ("cont|c", vm_cont),
           "c": ("cont|c", vm_cont)}
"""HMP commands without arguments: the name and its alias, as QEMU's errors show them, and what they run."""


def _extraneous(label: str, help_name: str) -> str:
    """monitor/hmp.c's reply to a command given more than it takes."""
    return f'{label}: extraneous characters at the end of line\r\nTry "help {help_name}" for more information\r\n'


_QEMU_IO_HELP = 'Try "help qemu-io" for more information\r\n'
_RESIZE_HELP = 'Try "help block_resize" for more information\r\n'


def _block_resize(vm: Any, rest: str) -> str:
    """hmp_block_resize ("device:B,size:o"): a device name (a word or a quoted string), a size read by
    qemu_strtosz_MiB (a number without a unit is MiB, at most INT64_MAX), nothing after it; then
    qmp_block_resize of that device (no node name), its error as ``Error: ...``."""
    words, _ = _hmp_args(rest)
    if not words:
        return "block_resize: block device name expected\r\n" + _RESIZE_HELP
    device = words[0]
    after = rest.lstrip()
    after = after[after.index(device) + len(device):] if not after.startswith('"') else \
        after[after.index('"', 1) + 1:]
    try:
        size, end = parse_size_prefix(after.lstrip(), "M")
    except ValueError:
        return "invalid size\r\n" + _RESIZE_HELP
    if size > INT64_MAX:
        return "invalid size\r\n" + _RESIZE_HELP
    if after.lstrip()[end:].strip():
        return "block_resize: extraneous characters at the end of line\r\n" + _RESIZE_HELP
    try:
        qmp_block_resize(vm, {"device": device, "size": size})
    except QMPError as err:
        return f"Error: {err.desc}\r\n"
    return ""


@lru_cache(maxsize=1024)
def _hmp_args(text: str) -> tuple[tuple[str, ...], str | None]:
    """monitor/hmp.c's argument reader for ``qemu-io [-d] [-q] device "command"``: options,
    a word, then a double-quoted string or a word. Returns (args, error text); remembered per
    line (a pure function of the text)."""
    pos, out = 0, []
    text = text.strip()
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        if text[pos] == '"':
            end, buf = pos + 1, []
            while end < len(text) and text[end] != '"':
                if text[end] == "\\" and end + 1 < len(text):
                    end += 1
                buf.append(text[end])
                end += 1
            if end >= len(text):
                return tuple(out), "unterminated"
            out.append("".join(buf))
            pos = end + 1
        else:
            end = pos
            while end < len(text) and not text[end].isspace():
                end += 1
            out.append(text[pos:end])
            pos = end
    return tuple(out), None


@TABLE.command("human-monitor-command", HumanMonitorCommand)
def qmp_hmp(vm: Any, args: dict) -> str:
    """HMP, as far as bitlab has it: ``qemu-io``, ``info block``, ``info block-jobs``, ``info status``,
    ``stop`` and ``cont``. Like QEMU's, qemu-io's output goes to the emulator's stdout (``vm.console``);
    errors come back as the command's text."""
    line = args["command-line"].strip()
    name, _, rest = line.partition(" ")
    if not name:
        return ""
    if name in NO_ARGS:
        label, run = NO_ARGS[name]
        if rest.strip():
            return _extraneous(label, name)
        run(vm)
        return ""
    if name == "info":
        what, _, more = rest.strip().partition(" ")
        if what in INFO_NO_ARGS and more.strip():
            return _extraneous(what, f"info {what}")
        if what == "block":
            return info_block(vm, more)
        if what in INFO and not more.strip():
            return INFO[what](vm)
    if name == "block_resize":
        return _block_resize(vm, rest)
    if name != "qemu-io":
        return f"unknown command: '{line.split()[0]}' (bitlab's monitor has qemu-io, info block, " \
               "info block-jobs, info status, stop, cont, block_resize)\r\n"
    args, error = _hmp_args(rest)
    words = list(args)
    if error:
        vm.console_err.append("unterminated string\n")
        return "qemu-io: string expected\r\n" + _QEMU_IO_HELP
    while words and words[0] in ("-d", "-q"):
        words.pop(0)
    if len(words) > 2 or any([w.startswith("'") or w.endswith("'") for w in words[1:]]):
        return "qemu-io: extraneous characters at the end of line\r\n" + _QEMU_IO_HELP
    if len(words) < 2:
        return "qemu-io: string expected\r\n" + _QEMU_IO_HELP
    monitor: list[str] = []
    try:
        vm.console.append(run_qemu_io(vm, words[0], words[1], monitor))
        _hmp_drains(vm, words[0])
    except QMPError as err:
        # qemu-io reports a permission it cannot take itself (error_report_err): no "Error: "
        own = err.desc.startswith("Permission conflict") or err.desc == "Block node is read-only"
        prefix = "" if own else "Error: "
        return f"{prefix}{err.desc}\r\n"
    try:  # warn_report reaches the monitor: a hex size with a suffix
        warnings = parse_qemu_io(words[1]).warnings
    except QemuIoError:
        warnings = ()
    return "".join(monitor) + "".join(f"warning: {text}\r\n" for text in warnings)
