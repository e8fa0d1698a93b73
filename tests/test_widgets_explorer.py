"""BitmapExplorer driven through its controls: counts, flags and the exact QMP each click sent."""

import pytest

from bitlab import Machine
from bitlab.widgets import BitmapExplorer


def hmp(line):
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}}


BITMAP = {"node": "drive0", "name": "bitmap0"}


def count(ex):
    return ex.result.count


def clicks(ex):
    """A fixed sequence of clicks; the bitmap's count after each one."""
    seen = []
    ex.offset.value, ex.length.value = 126976, 8192  # unaligned: two 64 KiB clusters
    ex.write_button.click()
    seen.append(count(ex))
    ex.clear_button.click()
    seen.append(count(ex))
    ex.offset.value, ex.length.value = 0, 65536
    ex.discard_button.click()  # the node is opened with discard=unmap: a discard dirties
    seen.append(count(ex))
    ex.disable_button.click()
    ex.offset.value = 1 << 20
    ex.write_button.click()  # not recorded
    seen.append(count(ex))
    ex.enable_button.click()
    ex.offset.value = 2 << 20
    ex.write_button.click()
    seen.append(count(ex))
    ex.granularity.value = 4096  # re-created: remove, then add
    seen.append(count(ex))
    ex.offset.value, ex.length.value = 4096, 4097
    ex.write_button.click()
    seen.append(count(ex))
    return seen


EXPECTED_COUNTS = [131072, 0, 65536, 65536, 131072, 0, 8192]
EXPECTED_SENT = [
    hmp('qemu-io drive0 "write -P 0xcd 126976 8192"'),
    {"execute": "block-dirty-bitmap-clear", "arguments": BITMAP},
    hmp('qemu-io drive0 "discard 0 65536"'),
    {"execute": "block-dirty-bitmap-disable", "arguments": BITMAP},
    hmp('qemu-io drive0 "write -P 0xcd 1048576 65536"'),
    {"execute": "block-dirty-bitmap-enable", "arguments": BITMAP},
    hmp('qemu-io drive0 "write -P 0xcd 2097152 65536"'),
    {"execute": "block-dirty-bitmap-remove", "arguments": BITMAP},
    {"execute": "block-dirty-bitmap-add", "arguments": {**BITMAP, "granularity": 4096}},
    hmp('qemu-io drive0 "write -P 0xcd 4096 4097"'),
]


def test_clicks_counts_and_sent_qmp():
    ex = BitmapExplorer()
    assert count(ex) == 0 and ex.sent == []
    assert clicks(ex) == EXPECTED_COUNTS
    assert ex.sent == EXPECTED_SENT
    assert ex.result.granularity == 4096 and ex.result.nbits == 16384
    assert "count <b>8192</b> bytes (8 KiB) = 2 of 16384 bits dirty at granularity 4096" in ex.count.value
    assert "recording: <b>true</b>" in ex.count.value
    assert "qemu-io drive0 \\&quot;write -P 0xcd 4096 4097\\&quot;" in ex.qmp.value
    assert ex.status.value.startswith("qemu-io: <pre") and "wrote 4097/4097 bytes at offset 4096" in ex.status.value
    assert ex.picture.value[:8] == b"\x89PNG\r\n\x1a\n"


def legend(ex):
    return [t.get_text() for t in ex.figure.axes[0].get_legend().get_texts()]


def test_picture_shows_what_the_click_changed():
    ex = BitmapExplorer()
    assert ex.figure.axes[0].get_title().startswith("bitmap0 on drive0\ngranularity 64 KiB, count 0")
    ex.offset.value, ex.length.value = 126976, 8192
    ex.write_button.click()
    assert legend(ex) == ["neither: 1022 bits", "both: 0 bits", "only before the click: 0 bits",
                          "only after it: 2 bits"]
    ex.offset.value = 0
    ex.write_button.click()  # cluster 1 was dirty already; cluster 0 is new
    assert legend(ex) == ["neither: 1021 bits", "both: 2 bits", "only before the click: 0 bits",
                          "only after it: 1 bits"]
    ex.clear_button.click()
    assert legend(ex)[2] == "only before the click: 3 bits"
    ex.granularity.value = 131072  # a new bitmap of another size: drawn on its own
    ax = ex.figure.axes[0]
    assert ax.get_legend() is None and "count 0 (0 B): 0 of 512 bits dirty" in ax.get_title()


def test_disabled_shows_not_recording():
    ex = BitmapExplorer()
    ex.disable_button.click()
    assert "recording: <b>false</b>" in ex.count.value and not ex.result.recording


def test_errors_are_shown():
    ex = BitmapExplorer(size=1 << 20)
    ex.offset.value, ex.length.value = (1 << 20) - 512, 4096  # past the end: fails, dirties nothing
    ex.write_button.click()
    assert "write failed: Input/output error" in ex.status.value
    assert count(ex) == 0
    ex.granularity.value = 1 << 20  # the whole 1 MiB node in one bit
    assert ex.status.value == ""
    assert ex.result.granularity == 1 << 20 and ex.result.nbits == 1
    ex.length.value = 0  # clamped to 1 byte by the control
    assert ex.length.value == 1


def test_an_existing_machine_keeps_its_bitmap():
    vm = Machine()
    vm.add_drive("disk", "4M")
    node = next(b for b in vm.qmp("query-block") if b["device"] == "disk")["inserted"]["node-name"]
    vm.qmp("block-dirty-bitmap-add", {"node": node, "name": "b", "granularity": 16384})
    vm.write(node, 0, 4096)
    ex = BitmapExplorer(vm, node=node, bitmap="b")
    assert ex.granularity.value == 16384 and count(ex) == 16384
    assert ex.backend.disabled  # the machine given is the one shown
    assert ex.sent == []


@pytest.mark.qemu
def test_same_clicks_on_real_qemu():
    ex = BitmapExplorer(backend="qemu")
    try:
        assert ex.vm.backend == "qemu"
        assert clicks(ex) == EXPECTED_COUNTS
        assert ex.sent == EXPECTED_SENT
    finally:
        ex.close()
