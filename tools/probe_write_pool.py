"""A guest write of more than eight pieces over blkdebug, on real QEMU 7.2 and on bitlab: which clusters each
writes when one of the write's tasks fails (README, "Known differences": QEMU's outcome varies from run to run).

    python tools/probe_write_pool.py [RUNS]

A 2 MiB qcow2 image (64 KiB clusters) has its odd clusters 1 to 19 written first, so a write over clusters 0 to 20
is 21 pieces (new and allocated clusters alternate), more than qcow2's pool of eight tasks holds. Each rule set-up
fails one of its data writes; the probe prints, per cluster, the pattern it reads afterwards (7: written, 77: the
first write's, 0: neither) on both backends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bitlab import Machine  # noqa: E402
from tests.both import on_both  # noqa: E402

C = 64 << 10
FAIL = {"event": "write_aio", "errno": 5, "once": True, "iotype": "write"}


def _steps(event: str, count: int) -> list[dict]:
    return [{"event": event, "state": s, "new_state": s + 1} for s in range(1, count + 1)]


CASES = {
    "armed by the first write done": {"inject-error": [FAIL | {"state": 2}], "set-state": _steps("pwritev_done", 1)},
    "armed by the third write done": {"inject-error": [FAIL | {"state": 4}], "set-state": _steps("pwritev_done", 3)},
    "the tenth write_aio": {"inject-error": [FAIL | {"state": 10}], "set-state": _steps("write_aio", 9)},
    "the ninth write_aio, immediately": {"inject-error": [FAIL | {"state": 9, "immediately": True}],
                                         "set-state": _steps("write_aio", 8)},
}


def _pattern(vm: Machine, cluster: int) -> int | None:
    for pattern in (0, 7, 0x4D):
        if not vm.guest_io("plain", f"read -P {pattern:#x} {cluster * C} {C}").startswith("Pattern"):
            return pattern
    return None


def story(vm: Machine) -> dict[str, dict]:
    """Each rule set-up on a new image: the write's answer, the image's map, and each cluster's pattern."""
    out = {}
    plain = {"driver": "qcow2", "node-name": "plain"}
    for i, (case, rules) in enumerate(CASES.items()):
        name = f"p{i}.qcow2"
        vm.qemu_img("create", "-f", "qcow2", name, "2M")
        vm.qmp("blockdev-add", plain | {"file": {"driver": "file", "filename": name}})
        for cluster in range(1, 21, 2):
            vm.guest_io("plain", f"write -P 0x4d {cluster * C} {C}")
        vm.qmp("blockdev-del", {"node-name": "plain"})
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d",
                                "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": name}} | rules})
        answer = vm.guest_io("d", f"write -P 0x07 0 {21 * C}").splitlines()
        vm.qmp("blockdev-del", {"node-name": "d"})
        got: dict = {"write": answer[0] if answer else ""}
        got["map"] = [(m["start"], m["length"], m["data"], m.get("offset"))
                      for m in json.loads(vm.qemu_img("map", "--output=json", name))]
        vm.qmp("blockdev-add", plain | {"file": {"driver": "file", "filename": name}})
        got["content"] = [_pattern(vm, cluster) for cluster in range(22)]
        vm.qmp("blockdev-del", {"node-name": "plain"})
        out[case] = got
    return out


def main(runs: int) -> None:
    for run in range(runs):
        real, sim = on_both(story)
        for case in CASES:
            verdict = "same" if real[case] == sim[case] else "differs"
            print(f"run {run} {case}: {verdict}\n  QEMU   {real[case]['content']}\n  bitlab {sim[case]['content']}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
