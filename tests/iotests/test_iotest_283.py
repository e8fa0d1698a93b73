"""QEMU 7.2's iotest 283 (backup's copy-before-write filter and a permission conflict).

Ported, both parts, replies compared with the system emulator's and asserted exactly (where 283.out, of
another QEMU, says "Cannot append backup-top filter: Conflicts with use by node 'source' as 'image', which
does not allow 'write' on base", the installed 7.2.22 reports the conflict in bdrv_check_perm's words):
- a blkdebug node ``source`` over null-co ``base``, and another blkdebug ``other`` over ``base`` that takes
  its child's write permission (``take-child-perms``): blockdev-backup of ``source`` is refused, the filter
  cannot unshare write on ``base``. 283 gives no job-id: on the installed 7.2.22 that is refused first
  ("Invalid job ID ''": a node without a device has no name to lend the job), where 283.out shows the
  permission error; the story sends it once without and once with a job-id, and bitlab answers both as 7.2.22;
- null-co source and target, a backup with auto-finalize and auto-dismiss off and ``filter-node-name``:
  once finalized, the filter node is gone (HMP ``qemu-io backup-filter`` cannot find it), then job-dismiss.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

OK = {"return": {}}


def story(vm) -> list:
    t = Log(vm)
    t.qmp_log("blockdev-add", node_name="target", driver="null-co", size=1 << 20)
    t.qmp_log("blockdev-add", node_name="source", driver="blkdebug",
              image={"node-name": "base", "driver": "null-co", "size": 1 << 20})
    t.qmp_log("blockdev-add", node_name="other", driver="blkdebug", image="base", take_child_perms=["write"])
    t.qmp_log("blockdev-backup", sync="full", device="source", target="target")
    t.qmp_log("blockdev-backup", sync="full", device="source", target="target", job_id="job0")
    for node in ("other", "source", "target"):
        t.qmp_log("blockdev-del", node_name=node)
    t.log("=== copy-before-write should be gone after job-finalize ===")
    t.qmp_log("blockdev-add", node_name="source", driver="null-co")
    t.qmp_log("blockdev-add", node_name="target", driver="null-co")
    t.qmp_log("blockdev-backup", job_id="backup", device="source", target="target", sync="full",
              filter_node_name="backup-filter", auto_finalize=False, auto_dismiss=False)
    t.event_wait("BLOCK_JOB_PENDING")
    t.qmp_log("job-finalize", id="backup")
    t.qmp_log("human-monitor-command", command_line='qemu-io backup-filter "write 0 1M"')
    t.qmp_log("job-dismiss", id="backup")
    return t.lines


def test_283():
    assert story(Machine()) == [
        OK, OK, OK, {"error": {"class": "GenericError", "desc": "Invalid job ID ''"}},
        {"error": {"class": "GenericError", "desc": "Permission conflict on node 'base': permissions 'write' are both "
                   "required by node 'other' (uses node 'base' as 'image' child) and unshared by node 'source' "
                   "(uses node 'base' as 'image' child)."}},
        OK, OK, OK, "=== copy-before-write should be gone after job-finalize ===", OK, OK, OK, OK,
        {"return": "Error: Cannot find device='' nor node-name='backup-filter'\r\n"}, OK]


@pytest.mark.qemu
def test_283_on_both():
    want, got = on_both(story, "system")
    assert got == want
