"""TransactionLab driven through its controls; numbers are real QEMU 7.2's (checked on both backends)."""

import html

import numpy as np
import pytest

from bitlab.scenarios import FAIL_ON_READ, fail_on_read, run_seed
from bitlab.widgets import TransactionLab
from bitlab.widgets.transaction_lab import advice_rows, bitmaps_figure, drive_rows

D0_OK = ["drive0", "COMPLETED", "", "327680/327680", "327680 → 0", "d0-incr-1.qcow2", "keep"]
D0_CANCELLED = ["drive0", "CANCELLED", "", "327680/327680", "327680 → 327680", "d0-incr-1.qcow2", "delete"]
D1_FAILED = ["drive1", "COMPLETED", "Input/output error", "65536/131072", "131072 → 131072", "d1-incr-1.qcow2",
             "delete"]
D1_OK = ["drive1", "COMPLETED", "", "131072/131072", "131072 → 0", "d1-incr-1.qcow2", "keep"]


def shown(lab, row):
    """The row's cells appear, in order, in the summary table the lab shows."""
    cells = "".join(f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in row)
    return f"<tr>{cells}</tr>" in lab.summary.value


def test_default_is_the_seed_individual():
    lab = TransactionLab()
    assert drive_rows(lab.result) == [D0_OK, D1_FAILED]
    assert shown(lab, D0_OK) and shown(lab, D1_FAILED)
    assert ("<p><b>Keep:</b> d0-full.qcow2, d1-full.qcow2, d0-incr-1.qcow2<br>"
            "<b>Delete:</b> d1-incr-1.qcow2</p>") in lab.summary.value
    # bitlab.chain's advice: drive0's next incremental builds on its new image, drive1's on its full one
    assert advice_rows(lab.result) == [
        ["drive0", "d0-full.qcow2, d0-incr-1.qcow2", "—", "incremental on d0-incr-1.qcow2",
         "bitmap0 holds every change since the point d0-incr-1.qcow2 holds"],
        ["drive1", "d1-full.qcow2", "d1-incr-1.qcow2", "incremental on d1-full.qcow2",
         "bitmap1 holds every change since the point d1-full.qcow2 holds"]]
    assert "incremental on d0-incr-1.qcow2" in lab.summary.value
    assert lab.blkdebug == FAIL_ON_READ
    assert "<b>drive1's file node</b>" in lab.events.value and "&quot;errno&quot;: 5" in lab.events.value
    assert lab.drawn == "timeline" and lab.picture.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BLOCK_JOB_ERROR" in lab.events.value and "&quot;completion-mode&quot;" not in lab.events.value


def test_grouped_cancels_the_healthy_drive():
    lab = TransactionLab()
    lab.mode.value = "grouped"  # live: runs at once
    assert lab.result.mode == "grouped"
    assert drive_rows(lab.result) == [D0_CANCELLED, D1_FAILED]
    assert lab.result.keep == [] and lab.result.delete == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]
    assert ("<p><b>Keep:</b> d0-full.qcow2, d1-full.qcow2<br>"
            "<b>Delete:</b> d0-incr-1.qcow2, d1-incr-1.qcow2</p>") in lab.summary.value
    assert [r[3] for r in advice_rows(lab.result)] == ["incremental on d0-full.qcow2", "incremental on d1-full.qcow2"]
    assert "&quot;completion-mode&quot;: &quot;grouped&quot;" in lab.events.value


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_no_failure_keeps_everything(mode):
    lab = TransactionLab(mode=mode)
    lab.failing.value = None
    assert drive_rows(lab.result) == [D0_OK, D1_OK]
    assert "no drive fails" in lab.summary.value and "<b>Delete:</b> nothing" in lab.summary.value
    assert [r[3] for r in advice_rows(lab.result)] == ["incremental on d0-incr-1.qcow2",
                                                        "incremental on d1-incr-1.qcow2"]
    assert lab.blkdebug is None and "blkdebug" not in lab.events.value


def test_reads_before_the_failure():
    lab = TransactionLab()
    lab.fail_after.value = 1  # drive1 has two dirty runs: the second read fails
    assert lab.blkdebug == fail_on_read(1)
    assert drive_rows(lab.result) == [D0_OK, D1_FAILED]
    assert "read #2" in lab.summary.value
    lab.fail_after.value = 2  # only two reads: nothing fails
    assert drive_rows(lab.result) == [D0_OK, D1_OK]


def test_fail_on_read_rules():
    assert fail_on_read(0) is FAIL_ON_READ
    rules = fail_on_read(2)
    assert rules["set-state"] == [{"event": "write_aio", "state": 1, "new_state": 2},
                                  {"event": "read_aio", "state": 2, "new_state": 3},
                                  {"event": "read_aio", "state": 3, "new_state": 4}]
    assert rules["inject-error"] == [{"event": "read_aio", "state": 4, "iotype": "read", "errno": 5, "once": True}]
    with pytest.raises(ValueError):
        fail_on_read(-1)


def test_four_drives_and_the_failing_choice():
    lab = TransactionLab()
    lab.drives.value = 4
    assert [v for _, v in lab.failing.options] == [None, "drive0", "drive1", "drive2", "drive3"]
    lab.failing.value = "drive2"
    lab.mode.value = "grouped"
    rows = drive_rows(lab.result)
    assert [r[0] for r in rows] == ["drive0", "drive1", "drive2", "drive3"]
    assert [r[1] for r in rows] == ["CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED"]
    assert rows[2][2:5] == ["Input/output error", "196608/262144", "262144 → 262144"]
    assert lab.result.keep == []
    lab.drives.value = 2  # drive2 is gone: nothing fails
    assert lab.failing.value is None
    assert lab.result.keep == ["d0-incr-1.qcow2", "d1-incr-1.qcow2"]


def test_sync_full_and_bitmap_always():
    lab = TransactionLab()
    assert lab.bitmap_mode.disabled
    lab.failing.value = None
    lab.sync.value = "full"
    assert not lab.bitmap_mode.disabled
    assert lab.result.keep == ["d0-full-2.qcow2", "d1-full-2.qcow2"]
    assert drive_rows(lab.result)[0][3:5] == ["67108864/67108864", "327680 → 0"]
    lab.sync.value = "bitmap"
    lab.bitmap_mode.value = "always"
    lab.failing.value = "drive1"
    # always: the failed job's bitmap keeps only what it had not copied
    assert drive_rows(lab.result)[1][2:5] == ["Input/output error", "65536/131072", "131072 → 65536"]
    assert lab.result.transaction["actions"][1]["data"]["bitmap-mode"] == "always"


def test_compare_both_modes():
    lab = TransactionLab(live=False)
    assert lab.result is None and lab.summary.value == ""
    lab.compare.click()
    assert set(lab.results) == {"individual", "grouped"}
    assert drive_rows(lab.results["individual"]) == [D0_OK, D1_FAILED]
    assert drive_rows(lab.results["grouped"]) == [D0_CANCELLED, D1_FAILED]
    assert "individual completion" in lab.comparison.value and "grouped completion" in lab.comparison.value
    assert lab.comparison_picture.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_views_draw_what_they_say():
    lab = TransactionLab()
    shown = {}
    for view in ("bitmaps", "chain", "timeline"):
        lab.view.value = view  # drawn from the last result, without a new run
        assert lab.drawn == view
        shown[view] = lab.picture.value
        texts = {t.get_text() for f in [lab.figure, *lab.figure.subfigs] for ax in f.axes for t in ax.texts}
        if view == "chain":
            assert {"d0-incr-1.qcow2", "d1-incr-1.qcow2", "d0-full.qcow2"} <= texts
        elif view == "timeline":
            assert {"failed: Input/output error", " transaction"} <= texts
            assert [t.get_text() for t in lab.figure.axes[0].get_yticklabels()] == ["drive0", "drive1"]
    assert len(set(shown.values())) == 3
    lab.mode.value = "grouped"  # a new run redraws the chosen view only
    assert lab.drawn == "timeline" and lab.picture.value != shown["timeline"]


def test_not_live_waits_for_run():
    lab = TransactionLab(live=False)
    lab.mode.value = "grouped"
    assert lab.result is None
    lab.run.click()
    assert drive_rows(lab.result) == [D0_CANCELLED, D1_FAILED]


def test_bitmaps_picture_holds_the_bits():
    out = run_seed("individual", bitmaps=True)
    fig = bitmaps_figure(out)
    canvas = fig.axes[0].images[0].get_array()
    total = sum(d.bitmap_before.count + d.bitmap_after.count for d in out.drives.values()) // 65536
    assert int(np.ma.sum(canvas)) == total == 5 + 0 + 2 + 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["drive0: 5 → 0 bits\ncompleted\nkeep d0-incr-1.qcow2",
                     "drive1: 2 → 2 bits\ncompleted with error\ndelete d1-incr-1.qcow2"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["clean", "dirty"]


def test_run_seed_checks_its_arguments():
    with pytest.raises(ValueError, match="mode must be"):
        run_seed("together")
    with pytest.raises(ValueError, match="not 'drive9'"):
        run_seed("grouped", failing="drive9")
    with pytest.raises(ValueError, match="sync must be one of incremental, bitmap, full"):
        run_seed("grouped", sync="top")


@pytest.mark.qemu
def test_on_real_qemu():
    lab = TransactionLab(backend="qemu", live=False)
    assert lab.backend.value == "qemu" and not lab.backend.disabled
    lab.mode.value = "grouped"
    lab.run.click()
    assert lab.status.value == ""
    assert drive_rows(lab.result) == [D0_CANCELLED, D1_FAILED]


@pytest.mark.qemu
def test_model_matches_real_qemu():
    """run_seed's variations give the same rows and chain advice on real QEMU 7.2 (about 10 s)."""
    cases = [{}, {"failing": None}, {"fail_after": 1}, {"fail_after": 2}, {"sync": "full", "failing": None},
             {"failing": "drive0", "fail_after": 1}, {"failing": "drive0", "fail_after": 2},
             {"sync": "full"},
             {"sync": "bitmap", "bitmap_mode": "always"},
             {"drives": ("drive0", "drive1", "drive2", "drive3"), "failing": "drive2"}]
    def rows(out) -> list:
        # how far a job cancelled with its group got before the cancel is QEMU's own run-to-run variation
        return [[*row[:3], "?/" + row[3].split("/")[1], *row[4:]] if row[1] == "CANCELLED" else row
                for row in drive_rows(out)]

    for kw in cases:
        for mode in ("individual", "grouped"):
            sim, real = run_seed(mode, chain=True, **kw), run_seed(mode, chain=True, backend="qemu", **kw)
            assert rows(real) == rows(sim), (mode, kw)
            assert advice_rows(real) == advice_rows(sim), (mode, kw)
