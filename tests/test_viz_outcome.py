"""bitlab.viz.outcome: the seed under both completion modes, checked in the drawn artists."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from dataclasses import dataclass, field  # noqa: E402

import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from bitlab.scenarios import run_seed  # noqa: E402
from bitlab.viz import outcome_rows, plot_outcome, timeline_lanes  # noqa: E402
from bitlab.viz.chain import STYLES as IMAGE_STYLES  # noqa: E402
from bitlab.viz.outcome import COUNT_STYLES, _ordered_events  # noqa: E402


@pytest.fixture(scope="module")
def outcomes():
    return {mode: run_seed(mode) for mode in ("individual", "grouped")}


def test_rows_individual_and_grouped(outcomes):
    rows = outcome_rows(outcomes)
    ind = {r.drive: r for r in rows["individual"]}
    grp = {r.drive: r for r in rows["grouped"]}
    assert (ind["drive0"].end, ind["drive0"].count_before, ind["drive0"].count_after) == ("completed", 327680, 0)
    assert ind["drive0"].image_text == "d0-incr-1.qcow2: keep"
    assert (ind["drive1"].end_text, ind["drive1"].count_before, ind["drive1"].count_after) == (
        "failed: Input/output error", 131072, 131072)
    assert ind["drive1"].image_text == "d1-incr-1.qcow2: delete (job failed)"
    assert (grp["drive0"].end, grp["drive0"].count_after, grp["drive0"].keep) == ("cancelled", 327680, False)
    assert grp["drive0"].image_text == "d0-incr-1.qcow2: delete (job cancelled)"
    assert grp["drive1"].end == "failed"


def test_events_in_emission_order(outcomes):
    events = _ordered_events(outcomes["grouped"])
    names = [(e["event"], e["data"].get("device", e["data"].get("id"))) for e in events]
    # drive1 fails first, then drive0 is cancelled (same microsecond: the machine's order decides)
    assert names.index(("BLOCK_JOB_COMPLETED", "drive1")) < names.index(("BLOCK_JOB_CANCELLED", "drive0"))


def _texts(axes) -> dict[str, str]:
    return {t.get_gid(): t.get_text() for ax in axes for t in ax.texts if t.get_gid()}


def test_figure_side_by_side(outcomes):
    fig = plot_outcome(outcomes)
    assert fig.get_suptitle() == "the same scenario under each completion mode"
    heads = {t.get_gid(): t for t in fig.texts if t.get_gid()}
    assert heads["mode:individual"].get_text() == "completion-mode: individual"
    assert heads["mode:grouped"].get_text() == "completion-mode: grouped"
    assert heads["mode:individual"].get_position()[0] < heads["mode:grouped"].get_position()[0]  # side by side
    ind, grp = fig.axes[:2], fig.axes[2:]
    ti = _texts(ind)
    assert ti["end-text:drive0"] == "completed" and ti["end-text:drive1"] == "failed: Input/output error"
    assert ti["count-text-before:drive0"] == "before 327680" and ti["count-text-after:drive0"] == "after 0"
    assert ti["image-text:drive0"] == "d0-incr-1.qcow2\nkeep"
    assert ti["image-text:drive1"] == "d1-incr-1.qcow2\ndelete (job failed)"
    tg = _texts(grp)
    assert tg["end-text:drive0"] == "cancelled" and tg["count-text-after:drive0"] == "after 327680"
    assert tg["image-text:drive0"] == "d0-incr-1.qcow2\ndelete (job cancelled)"

    # the timeline lanes: drive1 ends with the failure marker in individual mode; grouped: both stopped
    top_i, rows_i = ind
    assert top_i.get_position().x0 < grp[0].get_position().x0
    failed = next(c for c in top_i.collections if isinstance(c, PathCollection)
                  and c.get_label() == "BLOCK_JOB_COMPLETED with error")
    [(x, y)] = failed.get_offsets().tolist()
    assert [t.get_text() for t in top_i.get_yticklabels()][int(y)] == "drive1"
    lanes = timeline_lanes(_ordered_events(outcomes["individual"]))
    assert lanes.lane("drive1").markers[-1].kind == "failed" and lanes.lane("drive0").end == "completed"
    assert max(s.end for s in lanes.lane("drive1").segments) >= x
    lanes = timeline_lanes(_ordered_events(outcomes["grouped"]))
    assert (lanes.lane("drive0").end, lanes.lane("drive1").end) == ("cancelled", "failed")
    top_g = grp[0]
    labels = {c.get_label() for c in top_g.collections if isinstance(c, PathCollection)}
    assert {"BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED with error"} <= labels
    assert "BLOCK_JOB_COMPLETED" not in labels
    assert any(t.get_text().strip() == "transaction" for t in top_g.texts)

    # count bars are proportional and hatched; image stripes use the chain diagram's styles
    bars = {p.get_gid(): p for p in rows_i.patches}
    assert bars["count-before:drive0"].get_width() == pytest.approx(0.5)
    assert bars["count-after:drive0"].get_width() == 0
    assert bars["count-before:drive1"].get_width() == pytest.approx(0.5 * 131072 / 327680)
    assert bars["count-before:drive0"].get_hatch() == COUNT_STYLES["before"][1]
    assert bars["count-after:drive1"].get_hatch() == COUNT_STYLES["after"][1]
    assert bars["image:drive1"].get_hatch() == IMAGE_STYLES[(False, False)][2]
    assert not bars["image:drive0"].get_hatch()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for want in ("BLOCK_JOB_COMPLETED with error", "BLOCK_JOB_CANCELLED", "count before", "count after",
                 "image valid, keep", "image invalid, delete", "aborting"):
        assert want in legend


@dataclass
class FakeDrive:
    drive: str
    image: str
    events: list = field(default_factory=list)
    end: str = ""
    error: str | None = None
    count_before: int = 0
    count_after: int = 0

    @property
    def valid(self) -> bool:
        return self.end == "BLOCK_JOB_COMPLETED" and self.error is None


@dataclass
class FakeOutcome:
    mode: str
    drives: dict


def test_duck_typed_outcome_without_events_or_keep():
    out = FakeOutcome("individual", {"d": FakeDrive("d", "d.qcow2", count_before=65536, count_after=65536)})
    [row] = outcome_rows({"individual": out})["individual"]
    assert (row.end, row.keep, row.image_text) == ("running", False, "d.qcow2: delete (job running)")
    fig = plot_outcome({"individual": out}, title="no job ran")
    assert fig.get_suptitle() == "no job ran"
    with pytest.raises(ValueError, match="no outcomes"):
        plot_outcome({})
