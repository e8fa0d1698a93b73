"""qemu-img --image-opts (bitlab/qemu_img/image_opts.py): info, check, map, bitmap and measure take an image named by
block options, with qemu-img 7.2's texts where the options name no image; other options are refused."""


import pytest

from bitlab import Machine
from bitlab.qemu_img.image_opts import parse
from tests.both import on_both
from tests.imgrun import img as _img

M = 1 << 20
OPTS = ["driver=qcow2,file.filename=q.qcow2", "file.filename=q.qcow2", "file.driver=file,file.filename=q.qcow2",
        "driver=qcow2,file.driver=file,file.filename=q.qcow2", "driver=raw,file.filename=r.img",
        "file.filename=r.img", "driver=qcow2,file.filename=r.img", "driver=qcow2,file.filename=q.qcow2,driver=qcow2",
        "filename=q.qcow2", "driver=qcow2,filename=q.qcow2", "q.qcow2", "file=q.qcow2", "help", "", "=x",
        "driver=qcow2", "driver=foo,file.filename=q.qcow2", "driver=,file.filename=q.qcow2",
        "driver=qcow2,file.filename=nope.qcow2", "file.filename=nope.qcow2", "driver=qcow2,,file.filename=q.qcow2",
        "driver=qcow2,file=q.qcow2,file.filename=q.qcow2", "file.driver=file", "file.filename=",
        "driver=qcow2,file.filename=file:q.qcow2", "driver=qcow2,file.filename=./q.qcow2",
        "driver=qcow2,file.filename=q.qcow2,file.filename=r.img"]
SUBCOMMANDS = (["info"], ["check"], ["map", "--output=json"], ["bitmap", "--add"], ["measure", "-O", "qcow2"])



def _story(vm) -> list:
    vm.qemu_img("create", "-f", "qcow2", "q.qcow2", str(M))
    vm.qemu_img("create", "-f", "raw", "r.img", str(M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "q.qcow2"}})
    vm.write("q", 0, 65536)
    vm.qmp("blockdev-del", {"node-name": "q"})
    out = []
    for sub in SUBCOMMANDS:
        for n, opts in enumerate(OPTS):
            name = [f"b{n}"] if sub[0] == "bitmap" else []
            out.append((sub[0], opts, _img(vm, *sub, "--image-opts", opts, *name)))
        out.append((sub[0], "-f", _img(vm, *sub, "--image-opts", "-f", "qcow2", OPTS[0],
                                       *(["f"] if sub[0] == "bitmap" else []))))
    out.append(_img(vm, "info", "q.qcow2"))
    out.append(_img(vm, "bitmap", "--remove", "--image-opts", "driver=qcow2,file.driver=file,file.filename=q.qcow2",
                    "b0"))
    out.append(_img(vm, "bitmap", "--add", "--image-opts", "-b", "q.qcow2", "--merge", "b1", OPTS[0], "m"))
    out.append(_img(vm, "info", "q.qcow2"))
    return out


@pytest.mark.qemu
def test_matches_qemu_img():
    want, got = on_both(_story)
    assert got == want


def test_texts():
    out = {(sub, opts): result for sub, opts, result in _story(Machine())[:-4]}
    assert out["info", OPTS[0]][1].startswith("image: q.qcow2\nfile format: qcow2\nvirtual size: 1 MiB")
    assert out["info", "driver=qcow2,file.filename=./q.qcow2"][1].startswith("image: ./q.qcow2\n")
    assert out["check", OPTS[0]] == ("ok", "No errors were found on the image.\n1/16 = 6.25% allocated, "
                                           "0.00% fragmented, 0.00% compressed clusters\nImage end offset: 393216\n")
    assert out["info", "filename=q.qcow2"] == ("err", "qemu-img: Could not open 'filename=q.qcow2': "
                                                      "Must specify either driver or file\n", 1)
    assert out["map", "driver=qcow2,filename=q.qcow2"] == (
        "err", "qemu-img: Could not open 'driver=qcow2,filename=q.qcow2': A block device must be specified for "
               "\"file\"\n", 1)
    assert out["check", "help"] == ("err", "qemu-img: Could not open 'help': Cannot find device='help' nor "
                                           "node-name='help'\n", 1)
    assert out["info", "driver=qcow2,,file.filename=q.qcow2"] == (
        "err", "qemu-img: Could not open 'driver=qcow2,,file.filename=q.qcow2': Unknown driver "
               "'qcow2,file.filename=q.qcow2'\n", 1)
    assert out["info", "driver=qcow2,file.filename=r.img"] == (
        "err", "qemu-img: Could not open 'driver=qcow2,file.filename=r.img': Image is not in qcow2 format\n", 1)
    assert out["map", "file.filename=nope.qcow2"] == (
        "err", "qemu-img: Could not open 'file.filename=nope.qcow2': Could not open 'nope.qcow2': No such file or "
               "directory\n", 1)
    assert out["bitmap", "-f"] == ("err", "qemu-img: --image-opts and --format are mutually exclusive\n", 1)


def test_refused_options():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "q.qcow2", str(M))
    for opts, key in (("driver=qcow2,file.filename=q.qcow2,cache.direct=on", "cache.direct"),
                      ("driver=qcow2,file.filename=q.qcow2,nofoo", "nofoo"),
                      ("driver=qcow2,file.driver=nbd,file.filename=q.qcow2", "file.driver=nbd")):
        assert _img(vm, "info", "--image-opts", opts) == (
            "err", f"qemu-img: bitlab does not simulate the --image-opts option '{key}'\n", 1)
    for sub in ("compare", "convert", "commit", "rebase", "resize"):  # (measure takes it)
        assert _img(vm, sub, "--image-opts", "x", "y") == (
            "err", f"qemu-img: bitlab does not simulate 'qemu-img {sub} --image-opts'\n", 1)


def test_parse():
    assert parse("driver=qcow2,file.filename=a,,b,driver=raw") == {"driver": "raw", "file.filename": "a,b"}
    assert parse("x,driver=qcow2") == {"file": "x", "driver": "qcow2"}
    assert parse("a,,b") == {"file": "a,b"}
    assert parse("") == {} and parse("=x") == {"": "x"}
