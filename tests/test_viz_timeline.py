"""bitlab.viz.timeline: lanes, segments and markers as data, and the artists that draw them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from bitlab.scenarios import run_seed  # noqa: E402
from bitlab.viz import AtEvent, plot_timeline, timeline_lanes  # noqa: E402
from bitlab.viz.timeline import MARKER_STYLE, STATE_STYLE  # noqa: E402

T0 = 1447192343


def ev(name: str, us: int, **data) -> dict:
    return {"event": name, "timestamp": {"seconds": T0, "microseconds": us}, "data": data}


def status(job: str, state: str, us: int) -> dict:
    return ev("JOB_STATUS_CHANGE", us, status=state, id=job)


def completed(job: str, us: int, error: str | None = None) -> dict:
    data = {"device": job, "len": 65536, "offset": 65536, "speed": 0, "type": "backup"}
    if error is not None:
        data["error"] = error
    return ev("BLOCK_JOB_COMPLETED", us, **data)


HAND = [
    status("j0", "created", 0), status("j0", "running", 0),                                        # 0 1
    {"event": "BLOCK_IO_ERROR", "timestamp": {"seconds": T0, "microseconds": 5}, "data": {"device": "d"}},
    status("j1", "created", 10), status("j1", "running", 10),                                      # 2 3
    ev("BLOCK_JOB_ERROR", 20, device="j1", operation="read", action="report"),                     # 4
    status("j1", "aborting", 20), completed("j1", 20, "Input/output error"),                       # 5 6
    status("j1", "concluded", 20), status("j1", "null", 20),                                       # 7 8
    status("j0", "waiting", 30), status("j0", "aborting", 30),                                     # 9 10
    ev("BLOCK_JOB_CANCELLED", 30, device="j0", len=65536, offset=65536, speed=0, type="backup"),   # 11
    status("j0", "concluded", 30), status("j0", "null", 30),                                       # 12 13
    status("j0", "created", 40), status("j0", "running", 40),                                      # 14 15
    status("j0", "paused", 1040),                                                                  # 16
]


def test_order_axis_segments_and_markers():
    tl = timeline_lanes(HAND)
    assert tl.x == "order" and tl.unit == "event" and tl.xmax == 17.0
    assert [lane.label for lane in tl.lanes] == ["j0 #1", "j1", "j0 #2"]
    j0, j1, j0b = tl.lanes
    assert [(s.state, s.start, s.end, s.open) for s in j0.segments] == [
        ("created", 0, 1, False), ("running", 1, 9, False), ("waiting", 9, 10, False),
        ("aborting", 10, 12, False), ("concluded", 12, 13, False)]
    assert [(m.kind, m.x, m.text) for m in j0.markers] == [("cancelled", 11, "cancelled")]
    assert j0.end == "cancelled"
    assert j1.states == ["created", "running", "aborting", "concluded"]
    assert [(m.kind, m.x, m.text) for m in j1.markers] == [
        ("error", 4, "error: read (report)"), ("failed", 6, "failed: Input/output error")]
    assert j1.end == "failed"
    # a job still running at the end: its last state is open up to the axis end
    assert [(s.state, s.start, s.end, s.open) for s in j0b.segments] == [
        ("created", 14, 15, False), ("running", 15, 16, False), ("paused", 16, 17, True)]
    assert j0b.end is None
    assert tl.lane("j1") is j1
    with pytest.raises(KeyError):
        tl.lane("j0")


def test_time_axis_in_microseconds_and_min_width():
    tl = timeline_lanes(HAND, x="time")
    assert tl.unit == "ms" and tl.xmax == pytest.approx(1.04)
    j1 = tl.lane("j1")
    assert [(s.state, round(s.start, 6), round(s.end, 6)) for s in j1.segments] == [
        ("created", 0.01, 0.01), ("running", 0.01, 0.02), ("aborting", 0.02, 0.02), ("concluded", 0.02, 0.02)]
    fig = plot_timeline(HAND, x="time")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time since the first job event (ms)"
    aborting = next(c for c in ax.containers if c.get_label() == "aborting")
    # zero-length states are still drawn, at the minimum width
    assert all(p.get_width() == pytest.approx(0.008 * 1.04) for p in aborting.patches)


def test_marks_by_event_index_time_and_timestamp():
    marks = [(AtEvent(3), "txn"), (0.00003, "t=30us"), ({"seconds": T0, "microseconds": 40}, "ts"),
             (AtEvent(len(HAND)), "end")]
    tl = timeline_lanes(HAND, marks=marks)
    # HAND[3] is the 3rd job event (index 2): the BLOCK_IO_ERROR before it is not a job event
    assert [(m.x, m.label) for m in tl.marks] == [(1.5, "txn"), (8.5, "t=30us"), (13.5, "ts"), (17.0, "end")]
    tl = timeline_lanes(HAND, marks=marks, x="time")
    assert [round(m.x, 6) for m in tl.marks] == [0.01, 0.03, 0.04, 1.04]
    fig = plot_timeline(HAND, marks=marks)
    ax = fig.axes[0]
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [1.5, 8.5, 13.5, 17.0]
    assert {t.get_text().strip() for t in ax.texts if t.get_gid() == "mark-text"} == {"txn", "t=30us", "ts", "end"}


def test_drawn_bars_hatches_legend_and_labels():
    fig = plot_timeline(HAND, title="hand-made")
    ax = fig.axes[0]
    assert ax.get_title() == "hand-made"
    assert "order of the job events" in ax.get_xlabel() and "job" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["j0 #1", "j1", "j0 #2"]
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"created", "running", "paused", "waiting", "aborting", "concluded"}
    for state, bar in bars.items():
        assert all((p.get_hatch() or "") == STATE_STYLE[state][1] for p in bar.patches)
    hatches = [STATE_STYLE[s][1] for s in STATE_STYLE]
    assert len(set(hatches)) == len(hatches)  # every state has its own hatch, not only a colour
    aborting = [(p.get_x(), p.get_width(), p.get_y() + p.get_height() / 2) for p in bars["aborting"].patches]
    assert sorted(aborting) == [(5, 2, 1), (10, 2, 0)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "BLOCK_JOB_CANCELLED" in legend and "BLOCK_JOB_COMPLETED with error" in legend and "running" in legend
    scatters = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    assert sorted(scatters) == ["BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED with error", "BLOCK_JOB_ERROR"]
    assert scatters["BLOCK_JOB_CANCELLED"].get_offsets().tolist() == [[11, 0]]
    assert plot_timeline(HAND, legend=False).axes[0].get_legend() is None
    shapes = [s for s, _, _ in MARKER_STYLE.values()]
    assert len(set(shapes)) == len(shapes)
    texts = sorted(t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("marker-text"))
    assert texts == ["cancelled", "error: read (report)", "failed: Input/output error"]


def test_pending_and_ready_markers():
    events = [status("m", "created", 0), status("m", "running", 0), ev("BLOCK_JOB_READY", 1, device="m"),
              status("m", "ready", 1), status("m", "waiting", 2), status("m", "pending", 2),
              ev("BLOCK_JOB_PENDING", 2, type="mirror", id="m")]
    lane = timeline_lanes(events).lanes[0]
    assert [(m.kind, m.x) for m in lane.markers] == [("ready", 2), ("pending", 6)]
    assert lane.states == ["created", "running", "ready", "waiting", "pending"]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="no job events"):
        timeline_lanes([{"event": "SHUTDOWN", "timestamp": {"seconds": 0, "microseconds": 0}, "data": {}}])
    with pytest.raises(ValueError, match="order"):
        timeline_lanes(HAND, x="seconds")


@pytest.fixture(scope="module", params=["individual", "grouped"])
def seed(request):
    return run_seed(request.param)


def test_seed_outcome_lanes(seed):
    tl = timeline_lanes(seed.machine.events)
    labels = [lane.label for lane in tl.lanes]
    assert labels == ["drive0 #1", "drive1 #1", "drive0 #2", "drive1 #2"]
    assert tl.lane("drive0 #1").end == tl.lane("drive1 #1").end == "completed"
    d0, d1 = tl.lane("drive0 #2"), tl.lane("drive1 #2")
    assert d1.markers[-1].kind == "failed" and d1.markers[-1].text == "failed: Input/output error"
    assert d1.states[-2:] == ["aborting", "concluded"]
    if seed.mode == "individual":
        assert d0.end == "completed" and d0.states[-3:] == ["waiting", "pending", "concluded"]
    else:
        assert d0.end == "cancelled" and d0.states[-2:] == ["aborting", "concluded"]
    # one drive's own events (DriveOutcome.events) give one lane per drive
    lane = timeline_lanes(seed.drives["drive1"].events).lanes
    assert [la.label for la in lane] == ["drive1"] and lane[0].end == "failed"


def test_seed_figure_marks_the_transaction(seed):
    events = seed.machine.events
    created = [i for i, e in enumerate(events)
               if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "created"]
    fig = plot_timeline(events, marks=[(AtEvent(created[2]), "transaction")], title=f"seed, {seed.mode}")
    ax = fig.axes[0]
    [line] = ax.lines
    assert line.get_xdata()[0] == 17.5  # between the full backups' last event and the incrementals' first
    texts = [t.get_text() for t in ax.texts if t.get_gid() == "marker-text:failed"]
    assert texts == ["failed: Input/output error"]
    cancelled = [t.get_text() for t in ax.texts if t.get_gid() == "marker-text:cancelled"]
    assert cancelled == ([] if seed.mode == "individual" else ["cancelled"])
