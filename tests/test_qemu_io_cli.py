"""qemu-io's command line (bitlab/qmp/qemu_io.py, HMP ``qemu-io``) against the real qemu-io 7.2:
the same checks in the same order, the same texts on the same streams."""

import os
import re
import shutil
import subprocess

import pytest

from bitlab import Machine
from bitlab.qmp.qemu_io import QemuIoError, cvtnum, parse_qemu_io

# Run in this order on one 1 MiB qcow2 image whose first 192 KiB hold 0x11.
CASES = ["read 0", "read 0 1 2", "read -x 0 512", "read -P 0x11 0 512", "read -P 0x12 0 512", "read -q 0 512",
         "read -P zz 0 512", "read -q -P 0x12 0 512", "read -l 4 0 512", "read -P 0x11 -s 1000 0 512",
         "read -P 0x11 -s 8 -l 8 0 512", "read -P 0x11 -l zz 0 512", "read -p 0 512", "r 0", "r 0 512",
         "flush x", "flush", "f", "f 1", "foo 0 1", "", "write -x 0 1", "w -x 0 1", "write 0 1 2", "write -P 1",
         "write -P", "write -zP", "write -q 0 512", "write -P zz -x 0 1", "write -P 256 0 1", "write -P 010 0 1",
         "write -P 08 0 1", "write -P +5 0 1", "write -P 0x11 -P 0x12 0 512", "write -P1 0 512", "write -P -1 0 512",
         "write -u 0 512", "write -P 1 -u 0 512", "write -z -P 1 0 512", "write -n 0 512", "write -n -u 0 512",
         "write -b -z 0 512", "write -f -c 0 512", "write -f 0 512", "write -p 0 512", "write 0 -1", "write -1 512",
         "write 0 2G", "write 0 1k", "write 0 1x", "write abc 512", "write 0 99999999999999999999",
         "write 1.5k 512", "write 0 1.5k", "write 0x200 512", "write 1e3 512", "write - 512", "write -- 0 512",
         "write 0 512 -q", "read 1.0 0", "read 1.0b 0", "read 1.5 0", "read 1.5b 0", "read 010 0", "read 08 0",
         "read .5k 0", "read 0.5k 0", "read 1. 0", "read 1kb 0", "read +5 0", "read 0x 0", "read 0x10.5 0",
         "read 9223372036854775807 0", "read 9223372036854775808 0", "read 8E 0", "read 0 3G", "discard 0 3G",
         "discard 0", "discard 0 4096 1", "discard -q 0 4096", "d 0 4096", "write -z -u 0 65536",
         "write -zu 65536 4096", "w -z -u 0 4096", "write -q -z -u 0 4096", "read 1M 512", "write 1M 512",
         "write 0 0", "read -P 0 0 65536",
         # the commands that look and dump: length, info, map, alloc, read -v; readv and writev
         "length", "l", "length 1", "info", "i", "info x", "map", "map 1", "alloc", "alloc 0", "a 0",
         "alloc 0 64k", "alloc 0 1M", "alloc 0 2M", "alloc 1M", "alloc 100 1000", "alloc x", "alloc 0 x",
         "alloc 0 1 2", "alloc -1", "alloc 8E", "alloc 1.5k 1", "alloc 250k 10k", "readv", "readv 0",
         "readv 0 512", "readv 100 512 4", "readv -P 0x11 0 1k 1k", "readv -P 0x12 0 1k", "readv -v 0 40",
         "readv -x 0 512", "readv 0 3G", "readv 0 1G 1G 1G", "readv 0 1x", "readv 1M 512", "readv -q 0 512",
         "readv 0 -5", "readv -P 1", "readv -P zz 0 1k", "writev", "writev 0 512", "writev 100 512",
         "writev -P 0x22 512 512 1k", "writev -z 0 512", "writev -u 0 512", "writev -f 0 512", "writev 1M 512",
         "writev 0 0", "writev -P 0x33 -q 64k 1k", "write -P 0x41 300k 1k", "write -P 0x20 400k 16",
         "write -z 512k 64k", "read -v 0 20", "read -v 65530 20", "read -v -q 0 16", "read -v -P 0x11 0 16",
         "read -vP 0x12 -s 4 -l 4 0 16", "read -v 299k 2k", "read -v 400k 40", "readv -v 65532 8 8",
         "map", "alloc 0 1M", "zone_open 0 0", "zone_report 0 0",
         # fractions of a unit round half up (qemu_strtosz): 0.512 bytes is 1
         "write -P 0x42 500k 0.0005k", "read 0 0.0015k", "read 0 1.9999k", "read 0.0004k 0.4995k"]
TIMING = re.compile(r"^.* ops; .*\n", re.M)  # qemu-io's measured rate (bitlab's clock takes no time)


def sim_outputs() -> list[tuple[str, str]]:
    vm = Machine()
    vm.add_drive("drive0", "1M")
    vm.write("drive0", 0, "192k", 0x11)
    out = []
    for case in CASES:
        reply = vm.hmp(f'qemu-io drive0 "{case}"')  # only info's format-specific lines come this way
        assert reply == "" or case.split()[0] in ("info", "i")
        out.append((TIMING.sub("", vm.console_take()) + reply.replace("\r\n", "\n"), vm.console_take("stderr")))
    return out


def test_streams_and_texts():
    """What qemu-io 7.2 prints, and where (recorded from the real qemu-io)."""
    got = dict(zip(CASES, sim_outputs()))
    assert got["read 0"] == ("", "bad argument count 1 to read, expected at least 2 arguments\n")
    assert got["write -x 0 1"] == ("write [-bcCfnquz] [-P pattern | -s source_file] off len -- writes a number "
                                   "of bytes at a specified offset\n", "write: invalid option -- 'x'\n")
    assert got["write -u 0 512"] == ("-u requires -z to be specified\n", "")
    assert got["write 0 2G"] == ("length cannot exceed 2147483136 without -n, given 2G\n", "")
    assert got["read 1.5 0"] == ("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1.5\n",
                                 "")
    assert got["read -q 0 512"] == ("", "")
    assert got["read -P 0x11 -s 8 -l 8 0 512"] == ("read 512/512 bytes at offset 0\n", "")
    assert got["f 1"] == ("", "bad argument count 1 to f, expected 0 arguments\n")
    assert got[""] == ("", "")


def test_hex_with_a_suffix_warns_on_the_monitor():
    vm = Machine()
    vm.add_drive("drive0", "1M")
    assert vm.hmp('qemu-io drive0 "read 0x1k 0"') == (
        "warning: Using a multiplier suffix on hex numbers is deprecated: 0x1k\r\n")
    assert vm.console_take().startswith("read 0/0 bytes at offset 1024\n")


def test_what_bitlab_does_not_run_says_so():
    for line, text in (("aio_write 0 512", "bitlab's qemu-io runs read, readv, write, writev, discard, flush, alloc, "
                                           "map, length, info, truncate; \"aio_write\" is not simulated\n"),
                       ("write -b 0 512", "bitlab's qemu-io does not simulate write -b\n"),
                       ("readv -C 0 512", "bitlab's qemu-io does not simulate readv -C\n")):
        with pytest.raises(QemuIoError) as err:
            parse_qemu_io(line)
        assert (err.value.stdout, err.value.stderr) == ("", text)


def test_cvtnum_limits():
    warnings: list[str] = []
    assert cvtnum("9223372036854775807", warnings) == (1 << 63) - 1
    assert cvtnum("1.25k", warnings) == 1280 and cvtnum("0x200", warnings) == 512 and warnings == []
    assert [cvtnum(text, warnings) for text in ("0.0005k", "0.0015k", "1.9999k", "0.0004k", "0.4995k")] == [
        1, 2, 2048, 0, 511]
    with pytest.raises(QemuIoError, match="argument too large -- 8E"):
        cvtnum("8E", warnings)


@pytest.mark.qemu
def test_every_case_matches_the_real_qemu_io(tmp_path):
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io is missing")
    image = os.fspath(tmp_path / "d.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", image, "-c", "write -P 0x11 0 192k"], check=True, capture_output=True)
    real = []
    for case in CASES:
        done = subprocess.run(["qemu-io", "-f", "qcow2", image, "-c", case], capture_output=True, text=True)
        real.append((TIMING.sub("", done.stdout), done.stderr))
    assert dict(zip(CASES, sim_outputs())) == dict(zip(CASES, real))
    subprocess.run(["qemu-img", "check", "-q", image], check=True)


QSD_CASES = ["write -q -P 0x22 0 4096", "read -q -P 0x22 0 4096", "read -P 0x22 -s 8 -l 8 0 4096",
             "read -P 0x22 -s 4090 0 8192", "write -z -u 0 65536", "read -P 0 0 65536", "write -u 0 512", ""]


def _qio(backend: str, daemon: str | None = None) -> list:
    vm = Machine(backend=backend) if daemon is None else Machine(backend=backend, daemon=daemon)
    try:
        vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "1M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "discard": "unmap",
                                "file": {"driver": "file", "filename": "d.qcow2"}})
        out = []
        for case in QSD_CASES:
            try:
                out.append(TIMING.sub("", vm.qemu_io("d0", case)))
            except QemuIoError as err:
                out.append(("refused", err.stdout, err.stderr))
        return out
    finally:
        if backend == "qemu":
            vm.close()


@pytest.mark.qemu
def test_qemu_io_over_nbd_on_qemu_storage_daemon_matches():
    """On qemu-storage-daemon the real backend sends qemu-io's requests over NBD: -q, -u and
    read -s/-l behave as on bitlab."""
    assert _qio("qemu", "qsd") == _qio("sim")


def _monitor(backend: str) -> list:
    vm = Machine(backend=backend)
    try:
        vm.add_drive("drive0", "1M", blkdebug={"inject-error": []})  # no rule: no -drive option at all
        reply = vm.hmp('qemu-io drive0 "read 0x1k 0"')
        out = TIMING.sub("", vm.console_take() + vm.console_take("stderr"))
        names = sorted(entry["file"].replace(vm.workdir + "/", "") for entry in
                       vm.qmp("query-named-block-nodes", {"flat": True}))
        return [reply, out, names]
    finally:
        if backend == "qemu":
            vm.close()


@pytest.mark.qemu
def test_monitor_warning_and_a_drive_without_rules_match_the_system_emulator():
    """qemu-system-x86_64 -M none: the hex-suffix warning comes back as HMP's reply; a blkdebug
    drive with an empty rule list is named blkdebug::FILE."""
    assert _monitor("sim") == _monitor("qemu")
