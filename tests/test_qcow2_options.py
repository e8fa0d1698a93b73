"""blockdev-add's qcow2 options that change nothing bitlab simulates (overlap-check) or that bitlab's
images never allow (encrypt), against qemu-storage-daemon 7.2: QEMU's replies, texts and node entries."""

from __future__ import annotations

import random

import pytest

from bitlab import Machine
from bitlab.block import qcow2_opts
from bitlab.conformance.compare import normalise

from .both import on_both

ENTRY_SIZE = "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"

# (options added to a qcow2 blockdev-add, QEMU 7.2's error text or None)
CASES = [
    ({"overlap-check": "none"}, None),
    ({"overlap-check": "cached"}, None),
    ({"overlap-check": {"bitmap-directory": True, "template": "constant"}}, None),
    ({"overlap-check": "bogus"}, "Parameter 'overlap-check' does not accept value 'bogus'"),
    ({"overlap-check": {"template": "none", "l2": False}}, "Parameter 'overlap-check.l2' is unexpected"),
    ({"overlap-check": {"template": "bogus"}}, "Parameter 'template' does not accept value 'bogus'"),
    ({"overlap-check": 5}, "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks"),
    ({"encrypt": {"format": "aes", "key-secret": "s0"}},
     "No encryption in image header, but options specified format 'aes'"),
    ({"encrypt": {"format": "luks"}}, "No encryption in image header, but options specified format 'luks'"),
    ({"encrypt": {}}, "Parameter 'encrypt.format' is missing"),
    ({"encrypt": {"format": "bogus"}}, "Parameter 'format' does not accept value 'bogus'"),
    ({"cache-size": 1 << 20, "l2-cache-size": 2 << 20}, "l2-cache-size may not exceed cache-size"),
    ({"cache-size": 4 << 20, "l2-cache-size": 1 << 20, "refcount-cache-size": 65536},
     "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"),
    ({"cache-size": 1 << 20, "refcount-cache-size": 2 << 20}, "refcount-cache-size may not exceed cache-size"),
    ({"l2-cache-entry-size": 1000}, ENTRY_SIZE),
    ({"l2-cache-entry-size": 256}, ENTRY_SIZE),
    ({"l2-cache-entry-size": 131072}, ENTRY_SIZE),
    ({"cache-size": -1}, "Parameter 'cache-size' expects a non-negative number below 2^64"),
    ({"l2-cache-size": -5, "lazy-refcounts": True}, "Parameter 'l2-cache-size' expects a non-negative number "
                                                     "below 2^64"),
    ({"cache-clean-interval": -1}, "Cache clean interval too big"),
    ({"cache-clean-interval": 1 << 32}, "Cache clean interval too big"),
    ({"cache-clean-interval": (1 << 32) - 1}, None),
    ({"l2-cache-size": 1 << 40}, None),  # more than every table: QEMU's default
    ({"l2-cache-size": 1 << 20, "l2-cache-entry-size": 65536, "refcount-cache-size": 1 << 20}, None),
    ({"refcount-cache-size": 1 << 62}, "Refcount cache size too big"),
    ({"cache-size": 1 << 62, "refcount-cache-size": 65536}, "L2 cache size too big"),
    ({"lazy-refcounts": False, "pass-discard-request": False, "pass-discard-snapshot": True}, None),
    ({"pass-discard-request": True}, None),
    ({"data-file": {"driver": "file", "filename": "d.raw"}},
     "'data-file' can only be set for images with an external data file"),
    ({"data-file": "nonode"}, "Cannot find device='nonode' nor node-name='nonode'"),
    ({"data-file": "df"}, "'data-file' can only be set for images with an external data file"),
    ({"data-file": {"driver": "file", "filename": "none.raw"}}, "Could not open 'none.raw': No such file or directory"),
    # the runtime options come first, then the data file
    ({"data-file": "df", "cache-size": -1}, "Parameter 'cache-size' expects a non-negative number below 2^64"),
    ({"data-file": "nonode", "cache-size": -1}, "Parameter 'cache-size' expects a non-negative number below 2^64"),
    ({"data-file": "df", "cache-size": 1 << 20, "l2-cache-size": 2 << 20}, "l2-cache-size may not exceed cache-size"),
    ({"data-file": "df", "encrypt": {"format": "luks"}},
     "No encryption in image header, but options specified format 'luks'"),
    ({"data-file": "df", "cache-clean-interval": -1}, "Cache clean interval too big"),
    ({"cache-clean-interval": -1, "l2-cache-size": -1},
     "Parameter 'l2-cache-size' expects a non-negative number below 2^64"),
    ({"data-file": "df", "lazy-refcounts": True},  # QEMU's error before bitlab's refusal of lazy refcounts
     "'data-file' can only be set for images with an external data file"),
]
# QEMU 7.2 opens these; bitlab says it does not simulate them (caches that evict, lazy refcounts,
# discard pass-through other than the default), rather than ignoring them
NOT_SIMULATED = [
    ({"cache-size": 65536}, "option 'cache-size'"),
    ({"l2-cache-entry-size": 4096}, "option 'l2-cache-entry-size'"),
    ({"lazy-refcounts": True}, "option 'lazy-refcounts'"),
    ({"pass-discard-other": True}, "option 'pass-discard-other'"),
    ({"pass-discard-snapshot": False}, "option 'pass-discard-snapshot'"),
]


def story(vm: Machine, cases: list = CASES) -> list:
    """Each case on a fresh node name; after a success, the node list (then the node is deleted)."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    vm.qemu_img("create", "-f", "raw", "d.raw", "64M")
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "df", "filename": "d.raw"})
    out = []
    for i, (extra, _) in enumerate(cases):
        reply = vm.execute({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": f"n{i}", "file": {"driver": "file", "filename": "a.qcow2"}, **extra}})
        if "error" in reply:
            out.append(reply["error"])
            continue
        out.append(normalise(vm.qmp("query-named-block-nodes", {"flat": True})))
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
    return out


def test_texts_as_qemu():
    got = story(Machine())
    for (extra, text), reply in zip(CASES, got, strict=True):
        if text is None:
            assert isinstance(reply, list) and reply[0]["node-name"].startswith("n"), extra
        else:
            assert reply == {"class": "GenericError", "desc": text}, extra
    # overlap-check changes neither the node's file name nor anything else query-named-block-nodes shows
    assert got[0][0]["file"] == "a.qcow2" and got[0] == [{**got[1][0], "node-name": "n0"}, *got[1][1:]]
    # nothing a failed open made is left behind: the node list is the same after every success
    assert len({len(reply) for reply in got if isinstance(reply, list)}) == 1


def test_what_bitlab_does_not_simulate_is_refused():
    for (_, option), reply in zip(NOT_SIMULATED, story(Machine(), NOT_SIMULATED), strict=True):
        assert reply["desc"].startswith("bitlab does not simulate ") and reply["desc"].endswith(f"({option})")


@pytest.mark.qemu
def test_on_both_backends():
    real, sim = on_both(story)
    assert sim == real


@pytest.mark.qemu
def test_qemu_opens_what_bitlab_refuses():
    real, _ = on_both(lambda vm: story(vm, NOT_SIMULATED))
    assert all(isinstance(reply, list) for reply in real)


@pytest.mark.parametrize("seed", range(10))
def test_remembered_default_cache_sizes_are_the_computed_ones(seed: int) -> None:
    """Options setting none of the cache sizes take the sizes remembered per geometry (qcow2_opts._sizes): what
    read_cache_sizes computes for them; options setting one are computed (errors included)."""
    rng = random.Random(seed)
    cluster = 1 << rng.randrange(9, 22)
    disk = rng.randrange(1, 1 << 45)
    plain = {"lazy-refcounts": False, "overlap-check": "none"} if seed % 2 else {}
    assert qcow2_opts._sizes(plain, cluster, disk) == qcow2_opts._cache_sizes({}, cluster, disk)
    assert qcow2_opts.l2_slice_bytes(cluster, disk) == qcow2_opts._cache_sizes({}, cluster, disk)[1] // 8 * cluster
    sized = {rng.choice(qcow2_opts.SIZE_OPTIONS): 1 << rng.randrange(9, 30)}
    try:
        expected: object = qcow2_opts._cache_sizes(sized, cluster, disk)
    except ValueError as err:
        expected = str(err)
    try:
        got: object = qcow2_opts._sizes(sized, cluster, disk)
    except ValueError as err:
        got = str(err)
    assert got == expected
