"""NBD names, differentially: seeded random URLs and legacy ``nbd:`` names given to ``qemu-img info`` on the
simulator and on the real qemu-img against a real qemu-storage-daemon, each with one export ``a`` on ``nbd.sock``;
the answers (info, or the error's text) must be the same. (A ``socket`` parameter without a value crashes QEMU 7.2's
qemu-img: the generator leaves it out, tests/conformance/test_nbd_client.py checks bitlab's refusal.)"""

from __future__ import annotations

import random

import pytest

from bitlab import Machine, QemuImgError

SCHEMES = ["nbd", "nbd+unix", "nbd+tcp", "nbd+ssh", "NBD", "nbd+unix+x"]
HOSTS = ["", "127.0.0.1", "localhost", "[::1]", "h", "127.0.0.1:10809", "localhost:0", ":1", "a b", "user@h",
         "127.0.0.1:99999", "[::1]:1"]
PATHS = ["", "/", "/a", "/a/b", "/%61", "/a%", "/a b", "//a", "/a?", "/a#frag", "/%2Fa"]
QUERIES = ["", "?socket=nbd.sock", "?socket=", "?sock=x", "?socket=nbd.sock&x=1", "?socket=a%2Fb", "?=x",
           "?socket=nbd.sock;x", "?&socket=nbd.sock", "?socket=nbd.sock;", "?x=1;socket=nbd.sock"]
LEGACY = ["nbd:", "nbd:unix:", "nbd:unix:nbd.sock", "nbd:h:1", "nbd:h:", "nbd::1", "nbd:127.0.0.1:10809",
          "nbd:[::1]:1", "nbd:h:port", "nbd:unix:a:b", "nbd::", "nbd:[::1", "nbd:localhost:1,x", "nbd:localhost"]
EXPORTS = ["", ":exportname=", ":exportname=a", ":exportname=a:exportname=b", "exportname=a"]
REACH = ["nbd+unix:///a?socket=nbd.sock", "nbd:unix:nbd.sock:exportname=a", "nbd+unix:///%61?socket=nbd.sock",
         "nbd+unix:///a?&socket=nbd.sock", "nbd+unix:///a?socket=nbd.sock;", "nbd+unix:///a?socket=./nbd.sock#x",
         "nbd+unix:///a?socket=nbd%2esock"]  # names that reach the export


def names(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = set(REACH)
    while len(out) < n:
        if rng.random() < 0.6:
            name = f"{rng.choice(SCHEMES)}://{rng.choice(HOSTS)}{rng.choice(PATHS)}{rng.choice(QUERIES)}"
            if name.endswith("?socket") or "?socket&" in name:
                continue
            out.add(name)
        else:
            out.add(rng.choice(LEGACY) + rng.choice(EXPORTS))
    return sorted(out)


def _serve(vm: Machine) -> Machine:
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "a", "node-name": "a", "name": "a"})
    return vm


def _info(vm: Machine, name: str) -> tuple[str, str]:
    try:
        return "ok", vm.qemu_img("info", name)
    except QemuImgError as err:
        return "error", err.stderr


def test_the_names_cover_every_parser_branch():
    got = names(2411, 120)
    assert len(got) == 120 and any("://" in n for n in got) and any(n.startswith("nbd:") and "://" not in n
                                                                     for n in got)
    sim = _serve(Machine())
    answers = [_info(sim, n) for n in got]
    kinds = {"ok" if kind == "ok" else text.split(": ")[-1].split(" '")[0].strip() for kind, text in answers}
    assert {"ok", "No valid URL specified", "Unknown protocol", "Servname not supported for ai_socktype",
            "Name or service not known", "Connection refused", "NBD server address missing",
            "error parsing address", "No such file or directory"} <= kinds
    assert [n for n, (kind, _) in zip(got, answers) if kind == "ok"] == sorted(REACH)


@pytest.mark.qemu
@pytest.mark.parametrize("seed", [2411, 2412])
def test_nbd_names_as_qemu_img_reads_them(seed):
    sim = _serve(Machine())
    with Machine(backend="qemu") as real:
        _serve(real)
        different = [(n, _info(real, n), _info(sim, n)) for n in names(seed, 120)]
        different = [d for d in different if d[1] != d[2]]
    assert different == []
