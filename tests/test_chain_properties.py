"""Random histories of writes, backups, failures and retries: bitlab.chain's verdicts are sound.

Every image called valid restores exactly to its drive at its job's point in time (whatever base
the history chose, right or wrong); nothing a kept image restores through is called "delete"; and
following the advice after any failure leaves no gap: the next backup restores exactly too.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bitlab import Machine, chain
from bitlab.scenarios import FAIL_ON_READ

DRIVES = ("drive0", "drive1")
CLUSTER = 65536
SIZE = 64 * CLUSTER

writes = st.tuples(st.just("write"), st.sampled_from(DRIVES), st.integers(0, 63), st.integers(1, 4),
                   st.integers(1, 255))
backups = st.tuples(st.just("backup"), st.sampled_from(["individual", "grouped"]),
                    st.sampled_from(["on-success", "always", "never"]),
                    st.sampled_from(["none", "cancel-drive0", "cancel-drive1"]),
                    st.sampled_from(["advice", "advice", "advice", "random"]), st.integers(0, 1000))
toggles = st.tuples(st.just("toggle"), st.sampled_from(DRIVES))


def anchor(vm: Machine) -> None:
    actions = []
    for d in DRIVES:
        actions += [{"type": "block-dirty-bitmap-add", "data": {"node": d, "name": f"bitmap{d[-1]}"}},
                    {"type": "drive-backup", "data": {"device": d, "target": f"{d}-0.qcow2", "sync": "full",
                                                      "format": "qcow2"}}]
    vm.qmp("transaction", {"actions": actions})
    vm.run()


def backup_round(vm: Machine, n: int, step: tuple) -> None:
    _, mode, bitmap_mode, fail, base_choice, pick = step
    advice = chain.advise(vm)
    actions = []
    for d in DRIVES:
        target = f"{d}-{n}.qcow2"
        a = advice[d]
        if base_choice == "random" and a.next_sync == "incremental":
            images = sorted(img for img in vm.images.files if img.startswith(d + "-"))
            base = images[pick % len(images)]
            vm.qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", target)
            data = {"device": d, "target": target, "format": "qcow2", "mode": "existing", "sync": "incremental",
                    "bitmap": a.bitmap}
            if bitmap_mode != "on-success":
                data.update({"sync": "bitmap", "bitmap-mode": bitmap_mode})
            actions.append({"type": "drive-backup", "data": data})
        else:
            actions += a.actions(vm, target, bitmap_mode=bitmap_mode if a.next_sync == "incremental" else None)
    args: dict = {"actions": actions}
    if mode == "grouped" and all(a["type"] == "drive-backup" for a in actions):
        # QEMU refuses bitmap actions (a full backup's re-anchoring clear) in grouped transactions
        args["properties"] = {"completion-mode": "grouped"}
    vm.qmp("transaction", args)
    if fail != "none":
        job = fail.split("-")[1]
        if any(j["id"] == job for j in vm.qmp("query-jobs")):
            vm.qmp("block-job-cancel", {"device": job, "force": True})
    vm.run()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(writes, writes, backups, toggles), min_size=1, max_size=10))
def test_random_histories_keep_only_what_restores(steps):
    vm = Machine()
    vm.add_drive("drive0", SIZE)
    vm.add_drive("drive1", SIZE, blkdebug=FAIL_ON_READ)  # its first backup read after a write fails once
    anchor(vm)
    disabled: set[str] = set()
    n = 0
    for step in steps:
        if step[0] == "write":
            _, d, cluster, count, pattern = step
            vm.write(d, cluster * CLUSTER, min(count, 64 - cluster) * CLUSTER, pattern)
        elif step[0] == "toggle":
            d = step[1]
            verb = "enable" if d in disabled else "disable"
            vm.qmp(f"block-dirty-bitmap-{verb}", {"node": d, "name": f"bitmap{d[-1]}"})
            disabled ^= {d}
        else:
            n += 1
            backup_round(vm, n, step)
    report = chain.analyse(vm)
    for v in report.images.values():
        if v.valid:
            proof = chain.verify(vm, v.image)
            assert proof.ok, (v, proof, report.summary())
        if v.keep and v.backing is not None:
            assert report.images.get(v.backing) is None or report.images[v.backing].keep, report.summary()
    # following the advice now leaves no gap
    for d in disabled:
        vm.qmp("block-dirty-bitmap-enable", {"node": d, "name": f"bitmap{d[-1]}"})
    vm.write("drive0", 0, 4096, 0xEE)
    backup_round(vm, n + 1, ("backup", "individual", "on-success", "none", "advice", 0))
    after = chain.analyse(vm)
    for d in DRIVES:
        final = after.images[f"{d}-{n + 1}.qcow2"]
        if final.status == "completed":
            assert final.valid, after.summary()
            assert chain.verify(vm, final.image).ok, after.summary()
