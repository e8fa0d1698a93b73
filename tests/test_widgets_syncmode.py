"""SyncModeLab and bitlab.syncmodes agree with iotest 257's matrix for every combination."""

import pytest

from bitlab.syncmodes import BITMAP_MODES, IOTEST_FAILURE, OUTCOMES, SYNCS, run_sync_mode
from bitlab.widgets import SyncModeLab
from tests.test_iotest_257 import MATRIX

ROWS = {(r[0], r[1], r[2]): r for r in MATRIX}
# reference §11.3 (iotest 257 "API failure tests"): what QEMU refuses, with its texts
REFUSED = {
    "none": "sync mode 'none' does not produce meaningful bitmap outputs",
    ("full", "never"): "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'",
    ("top", "never"): "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'top'",
    "incremental": "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
}


def expected(sync, mode, outcome):
    """(error, 257 row) for one combination; incremental+on-success is bitmap+on-success."""
    if sync == "none":
        return REFUSED["none"], None
    if sync == "incremental" and mode != "on-success":
        return REFUSED["incremental"], None
    if (sync, mode) in REFUSED:
        return REFUSED[(sync, mode)], None
    row = ROWS[("bitmap" if sync == "incremental" else sync, mode, IOTEST_FAILURE[outcome])]
    return None, (sync, *row[1:])


COMBOS = [(s, m, o) for s in SYNCS for m in BITMAP_MODES for o in OUTCOMES]


def test_every_257_row_is_a_combination():
    accepted = {expected(*c)[1][:3] for c in COMBOS if expected(*c)[0] is None and c[0] != "incremental"}
    assert accepted == set(ROWS) and len(ROWS) == 21


@pytest.fixture(scope="module")
def lab():
    return SyncModeLab()


@pytest.mark.parametrize("sync,mode,outcome", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_lab_agrees_with_257(lab, sync, mode, outcome):
    lab.sync.value, lab.bitmap_mode.value, lab.outcome.value = sync, mode, outcome  # live: runs on change
    res = lab.result
    assert (res.sync, res.bitmap_mode, res.outcome) == (sync, mode, outcome)
    error, row = expected(sync, mode, outcome)
    assert res.error == error
    if error is not None:
        assert "QEMU refuses it" in lab.summary.value and res.end1 is None
        return
    assert res.row == row
    assert res.bits_before == 6
    assert f"<td style='padding:2px 8px'>{res.bits1} bits ({res.bits1 * 65536} bytes)</td>" in lab.summary.value
    assert [res.bitmaps[k].count // 65536 for k in ("before", "after #1", "after #2")] == [6, row[4], row[7]]
    assert res.error1 == ("Input/output error" if outcome == "failure" else None)


def test_picture_and_explanation(lab):
    lab.sync.value, lab.bitmap_mode.value, lab.outcome.value = "full", "always", "failure"
    assert "the successor, plus the clusters the job had not copied yet" in lab.summary.value
    assert lab.picture.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_not_live_waits_for_run():
    lab = SyncModeLab(live=False)
    assert lab.result is None
    lab.bitmap_mode.value = "never"
    assert lab.result is None
    lab.run.click()
    assert lab.result.row == ROWS[("bitmap", "never", "ok")]


def test_whole_matrix():
    lab = SyncModeLab(live=False)
    lab.matrix_button.click()
    assert len(lab.results) == 45
    for combo, res in lab.results.items():
        error, row = expected(*combo)
        assert res.error == error and (error is not None or res.row == row)
    assert ("<tr><td style='padding:2px 8px'>full</td><td style='padding:2px 8px'>always</td>"
            "<td style='padding:2px 8px'>failure</td><td style='padding:2px 8px'>COMPLETED (67108864, 983040)</td>"
            "<td style='padding:2px 8px'>1009</td><td style='padding:2px 8px'>1014</td>"
            "<td style='padding:2px 8px'>0</td></tr>") in lab.matrix.value


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_sync_mode("mirror", "always")


@pytest.mark.qemu
def test_on_real_qemu():
    lab = SyncModeLab(backend="qemu", sync="bitmap", bitmap_mode="always", outcome="failure", live=False)
    lab.run.click()
    assert lab.result.row == ROWS[("bitmap", "always", "int")]
    lab.sync.value = "none"
    lab.run.click()
    assert lab.result.error == REFUSED["none"]


@pytest.mark.qemu
def test_every_combination_on_real_qemu():
    """The model on real QEMU 7.2: all 45 combinations give 257's rows or QEMU's refusals (about 7 s)."""
    for combo in COMBOS:
        res = run_sync_mode(*combo, backend="qemu")
        error, row = expected(*combo)
        assert res.error == error, combo
        assert error is not None or res.row == row, combo
