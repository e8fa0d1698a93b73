"""The monitor's qemu-io: texts as qemu-io 7.2 prints them (checked with real qemu-io)."""

import re

import pytest

from bitlab import Machine, QMPError


def timing(text):
    return re.sub(r"ops; .*", "ops; T", text)


@pytest.fixture
def vm():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "p.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "p", "file": {"driver": "file", "filename": "p.qcow2"}})
    return vm


def test_qemu_io_texts(vm):
    assert timing(vm.qemu_io("p", "write -P 0x41 0 64k")) == "wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; T\n"
    assert timing(vm.qemu_io("p", "read -P 0x41 0 64k")) == "read 65536/65536 bytes at offset 0\n64 KiB, 1 ops; T\n"
    assert timing(vm.qemu_io("p", "read -P 0x42 0 128k")) == (
        "Pattern verification failed at offset 0, 131072 bytes\n"
        "read 131072/131072 bytes at offset 0\n128 KiB, 1 ops; T\n")
    assert vm.qemu_io("p", "write -P 0x41 2M 64k") == "write failed: Input/output error\n"
    assert timing(vm.qemu_io("p", "read -P 0x41 4096 512")) == (
        "read 512/512 bytes at offset 4096\n512 bytes, 1 ops; T\n")
    assert timing(vm.qemu_io("p", "discard 0 64k")) == "discard 65536/65536 bytes at offset 0\n64 KiB, 1 ops; T\n"
    assert timing(vm.qemu_io("p", "write -z 0 64k")) == "wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; T\n"
    assert vm.qemu_io("p", "flush") == ""


def test_hmp_reply_is_empty_and_output_goes_to_the_console(vm):
    assert vm.hmp('qemu-io p "write -P0x41 0 4k"') == ""
    assert vm.console_take().startswith("wrote 4096/4096 bytes at offset 0\n")
    assert vm.hmp('qemu-io nope "write 0 512"') == "Error: Cannot find device='' nor node-name='nope'\r\n"
    assert vm.hmp("qemu-io p bogus") == ""
    assert vm.console_take("stderr") == 'command "bogus" not found\n'


def test_node_name_during_a_backup_is_a_permission_conflict(vm):
    """Real QEMU 7.2: qemu-io opens its own BlockBackend on the node, which the filter refuses."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "p", "target": "t", "sync": "full", "speed": 65536,
                               "filter-node-name": "top"})
    assert vm.hmp('qemu-io p "write -P 0x42 512k 64k"') == (
        "Permission conflict on node 'p': permissions 'write' are both required by an unnamed block device "
        "(uses node 'p' as 'root' child) and unshared by node 'top' (uses node 'p' as 'file' child).\r\n")
    # A guest sits above the filter: vm.write addresses the filter, whose copy-before-write runs first.
    assert vm.guest_name("p") == "top"
    assert "wrote 65536/65536" in vm.write("p", "512k", "64k", 0x42)
    with pytest.raises(QMPError, match="Permission conflict"):
        vm.qemu_io("p", "write 0 512")


def test_sizes_in_reports_have_three_decimals(vm):
    assert timing(vm.qemu_io("p", "write -P 0x41 0 1536")) == "wrote 1536/1536 bytes at offset 0\n1.500 KiB, 1 ops; T\n"
    assert timing(vm.qemu_io("p", "write 0 1000000")) == (
        "wrote 1000000/1000000 bytes at offset 0\n976.562 KiB, 1 ops; T\n")


def test_file_child_of_a_format_node_is_not_writable_by_qemu_io(vm):
    vm.qemu_img("create", "-f", "qcow2", "q.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q",
                            "file": {"driver": "file", "node-name": "f-q", "filename": "q.qcow2"}})
    assert vm.hmp('qemu-io f-q "write 0 512"') == (
        "Permission conflict on node 'f-q': permissions 'write' are both required by an unnamed block device "
        "(uses node 'f-q' as 'root' child) and unshared by node 'q' (uses node 'f-q' as 'file' child).\r\n")
