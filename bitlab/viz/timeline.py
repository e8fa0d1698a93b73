"""Job timelines — QMP events in, :class:`matplotlib.figure.Figure` out.

One lane per job: its ``JOB_STATUS_CHANGE`` states as segments, its ``BLOCK_JOB_*`` events as
markers. A job id that QEMU reuses after the job went to ``null`` (the seed's full and then
incremental backup of ``drive0``) gets a new lane, labelled ``drive0 #2``.

Simulated jobs often change state several times within one microsecond, so the default x axis
is the *order* of the job events (event ``i`` sits at ``x = i``; every state is at least one
step wide). ``x="time"`` puts them at their timestamps instead, with zero-length states drawn
at a minimum width. :func:`timeline_lanes` returns what is drawn, as data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["AtEvent", "Lane", "MarkLine", "Marker", "STATE_STYLE", "Segment", "Timeline", "plot_timeline",
           "timeline_lanes"]

XMode = Literal["order", "time"]
JOB_EVENTS = ("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR",
              "BLOCK_JOB_PENDING", "BLOCK_JOB_READY")
MIN_TIME_WIDTH = 0.008  # zero-length states in x="time": this fraction of the axis span


def _state_styles() -> dict[str, tuple[tuple[float, float, float, float], str]]:
    """QEMU's job states (qapi/job.json order) → (cividis colour, hatch): never colour alone."""
    cmap = mpl.colormaps["cividis"]
    spec = [("created", 0.95, ".."), ("running", 0.62, ""), ("paused", 0.82, "//"), ("ready", 0.45, "++"),
            ("standby", 0.72, "oo"), ("waiting", 0.35, "\\\\"), ("pending", 0.55, "xx"),
            ("aborting", 0.08, "**"), ("concluded", 0.22, "--"), ("undefined", 1.0, "||")]
    return {state: (cmap(pos), hatch) for state, pos, hatch in spec}


STATE_STYLE = _state_styles()

# marker kind → (matplotlib marker, legend text, text above the bar?)
MARKER_STYLE: dict[str, tuple[str, str, bool]] = {
    "completed": ("o", "BLOCK_JOB_COMPLETED", True),
    "failed": ("X", "BLOCK_JOB_COMPLETED with error", True),
    "cancelled": ("s", "BLOCK_JOB_CANCELLED", True),
    "error": ("^", "BLOCK_JOB_ERROR", False),
    "pending": ("D", "BLOCK_JOB_PENDING", False),
    "ready": (">", "BLOCK_JOB_READY", False),
}


@dataclass(frozen=True)
class AtEvent:
    """A mark position: just before ``events[index]`` (``index == len(events)``: after the last)."""

    index: int


@dataclass(frozen=True)
class Segment:
    """A job in one state from ``start`` to ``end`` (x-axis units); ``open``: still in it at the end."""

    state: str
    start: float
    end: float
    open: bool = False

    @property
    def width(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Marker:
    """One ``BLOCK_JOB_*`` event on a lane: ``kind`` is a key of :data:`MARKER_STYLE`."""

    kind: str
    text: str
    x: float
    event: Mapping[str, Any]


@dataclass(frozen=True)
class Lane:
    """One job (one run of a job id) and what happened to it."""

    job: str
    label: str
    segments: tuple[Segment, ...]
    markers: tuple[Marker, ...]

    @property
    def states(self) -> list[str]:
        return [s.state for s in self.segments]

    @property
    def end(self) -> str | None:
        """``completed``, ``failed`` or ``cancelled`` from the job's last event, or None if it has not ended."""
        ends = [m.kind for m in self.markers if m.kind in ("completed", "failed", "cancelled")]
        return ends[-1] if ends else None


@dataclass(frozen=True)
class MarkLine:
    """A labelled vertical line (e.g. where the transaction was sent)."""

    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    """Everything :func:`plot_timeline` draws, in x-axis units (``unit``)."""

    lanes: tuple[Lane, ...]
    marks: tuple[MarkLine, ...]
    x: XMode
    unit: str  # "event" for x="order", else "s" / "ms" / "µs"
    xmax: float

    def lane(self, label: str) -> Lane:
        """The lane labelled ``label`` (a job id, or ``id #n`` for a reused id)."""
        for lane in self.lanes:
            if lane.label == label:
                return lane
        raise KeyError(label)


def _job_of(ev: Mapping[str, Any]) -> str | None:
    data = ev.get("data") or {}
    return data.get("id") if ev["event"] == "JOB_STATUS_CHANGE" else data.get("device", data.get("id"))


def _micros(ts: Mapping[str, Any]) -> int:
    """A QMP timestamp in integer microseconds (a float of epoch seconds would lose the microseconds)."""
    return int(ts["seconds"]) * 1_000_000 + int(ts["microseconds"])


def _marker(ev: Mapping[str, Any]) -> tuple[str, str]:
    name, data = ev["event"], ev.get("data") or {}
    if name == "BLOCK_JOB_COMPLETED":
        if data.get("error") is not None:
            return "failed", f"failed: {data['error']}"
        return "completed", "completed"
    if name == "BLOCK_JOB_CANCELLED":
        return "cancelled", "cancelled"
    if name == "BLOCK_JOB_ERROR":
        return "error", f"error: {data.get('operation', '?')} ({data.get('action', '?')})"
    if name == "BLOCK_JOB_PENDING":
        return "pending", "pending"
    return "ready", "ready"


def _time_unit(span: float) -> tuple[str, float]:
    if span >= 1.0:
        return "s", 1.0
    if span >= 1e-3:
        return "ms", 1e3
    return "µs", 1e6


class _Run:
    def __init__(self, job: str) -> None:
        self.job = job
        self.states: list[tuple[str, int]] = []  # (state, job-event ordinal)
        self.markers: list[tuple[int, Mapping[str, Any]]] = []
        self.gone = False  # reached "null"


def timeline_lanes(events: Sequence[Mapping[str, Any]], *, marks: Sequence[tuple[Any, str]] = (),
                   x: XMode = "order") -> Timeline:
    """Lanes, segments, markers and mark lines of ``events`` (QMP event dicts, as ``vm.events``).

    A mark's position is a QMP timestamp (``{"seconds", "microseconds"}``), a number of seconds
    since the first job event, or :class:`AtEvent` ``(i)``: just before ``events[i]``.
    """
    if x not in ("order", "time"):
        raise ValueError('x must be "order" or "time"')
    picked = [(i, ev) for i, ev in enumerate(events) if ev.get("event") in JOB_EVENTS and _job_of(ev) is not None]
    if not picked:
        raise ValueError("no job events to draw")
    runs: list[_Run] = []
    current: dict[str, _Run] = {}
    for n, (_, ev) in enumerate(picked):
        job = _job_of(ev)
        run = current.get(job)
        is_state = ev["event"] == "JOB_STATUS_CHANGE"
        if run is None or (run.gone and is_state and ev["data"]["status"] == "created"):
            run = current[job] = _Run(job)
            runs.append(run)
        if is_state:
            state = ev["data"]["status"]
            run.gone = state == "null"
            run.states.append((state, n))
        else:
            run.markers.append((n, ev))

    times = [_micros(ev["timestamp"]) for _, ev in picked]
    t0 = times[0]
    if x == "order":
        unit, scale = "event", 1.0
        pos = [float(n) for n in range(len(picked))]
        xmax = float(len(picked))
    else:
        unit, scale = _time_unit((times[-1] - t0) / 1e6)
        pos = [(t - t0) / 1e6 * scale for t in times]
        xmax = pos[-1] if pos[-1] > 0 else 1.0

    total = {r.job: sum(1 for q in runs if q.job == r.job) for r in runs}
    seen: dict[str, int] = {}
    lanes = []
    for run in runs:
        seen[run.job] = seen.get(run.job, 0) + 1
        label = run.job if total[run.job] == 1 else f"{run.job} #{seen[run.job]}"
        segments = []
        for k, (state, n) in enumerate(run.states):
            if state == "null":
                continue  # the job is gone: nothing to draw
            if k + 1 < len(run.states):
                segments.append(Segment(state, pos[n], pos[run.states[k + 1][1]]))
            else:
                segments.append(Segment(state, pos[n], xmax, open=True))
        markers = tuple(Marker(*_marker(ev), x=pos[n], event=ev) for n, ev in run.markers)
        lanes.append(Lane(run.job, label, tuple(segments), markers))

    lines = []
    for at, label in marks:
        if isinstance(at, AtEvent):
            later = [n for n, (i, _) in enumerate(picked) if i >= at.index]
            xm = (pos[later[0]] - (0.5 if x == "order" else 0.0)) if later else xmax
        else:
            t = _micros(at) if isinstance(at, Mapping) else t0 + round(float(at) * 1e6)
            if x == "order":  # before the first job event at or after that time
                later = [n for n, tn in enumerate(times) if tn >= t]
                xm = later[0] - 0.5 if later else xmax
            else:
                xm = (t - t0) / 1e6 * scale
        lines.append(MarkLine(xm, label))
    return Timeline(tuple(lanes), tuple(lines), x, unit, xmax)


def plot_timeline(events: Sequence[Mapping[str, Any]], *, marks: Sequence[tuple[Any, str]] = (),
                  title: str | None = None, x: XMode = "order", ax: Axes | None = None,
                  legend: bool = True) -> Figure:
    """Draw the jobs in ``events`` as lanes of states, with their events as labelled markers.

    ``marks`` are ``(position, label)`` vertical lines (see :func:`timeline_lanes`), e.g.
    ``[(AtEvent(since), "transaction")]``. Draws into ``ax`` if given (``legend=False``: the
    caller draws one, from ``ax.get_legend_handles_labels()``); returns the Figure.
    """
    tl = timeline_lanes(events, marks=marks, x=x)
    if ax is None:  # fixed margins in inches: a layout engine would cost more than the drawing
        entries = len({s.state for lane in tl.lanes for s in lane.segments}) + len(
            {m.kind for lane in tl.lanes for m in lane.markers})
        left, right, top = 1.25, 0.3, 0.45
        bottom = 0.75 + (0.22 * -(-entries // 4) + 0.1 if legend else 0.0)
        width, ax_h = 9.0, 0.55 + 0.75 * len(tl.lanes)
        fig = Figure(figsize=(width, ax_h + top + bottom))
        total = ax_h + top + bottom
        ax = fig.add_axes((left / width, bottom / total, 1 - (left + right) / width, ax_h / total))
    else:
        fig = ax.figure.figure
    min_width = MIN_TIME_WIDTH * tl.xmax if x == "time" else 0.0
    height = 0.5

    by_state: dict[str, list[tuple[int, Segment]]] = {}
    for y, lane in enumerate(tl.lanes):
        for seg in lane.segments:
            by_state.setdefault(seg.state, []).append((y, seg))
    for state in [s for s in STATE_STYLE if s in by_state] + [s for s in by_state if s not in STATE_STYLE]:
        colour, hatch = STATE_STYLE.get(state, ((0.5, 0.5, 0.5, 1.0), "||"))
        rows = by_state[state]
        ax.barh([y for y, _ in rows], [max(s.width, min_width) for _, s in rows], left=[s.start for _, s in rows],
                height=height, color=colour, hatch=hatch, edgecolor="white" if sum(colour[:3]) < 1.2 else "black",
                linewidth=0.6, label=state)

    by_kind: dict[str, list[tuple[int, Marker]]] = {}
    for y, lane in enumerate(tl.lanes):
        for m in lane.markers:
            by_kind.setdefault(m.kind, []).append((y, m))
    for kind in [k for k in MARKER_STYLE if k in by_kind]:
        shape, name, above = MARKER_STYLE[kind]
        rows = by_kind[kind]
        ax.scatter([m.x for _, m in rows], [y for y, _ in rows], marker=shape, s=110, c="black",
                   edgecolors="white", linewidths=1.2, zorder=4, label=name)
        for y, m in rows:
            dy = -(height / 2 + 0.06) if above else height / 2 + 0.06
            ax.text(m.x, y + dy, m.text, ha="center", va="bottom" if above else "top", fontsize="small",
                    gid=f"marker-text:{kind}")

    for line in tl.marks:
        ax.axvline(line.x, color="black", linestyle="--", linewidth=1.0, zorder=3)
        ax.text(line.x, -0.5 - height / 2, f" {line.label}", ha="left", va="bottom", fontsize="small",
                rotation=0, gid="mark-text")

    ax.set_yticks(range(len(tl.lanes)), [lane.label for lane in tl.lanes])
    ax.set_ylim(len(tl.lanes) - 0.5 + 0.15, -0.5 - height / 2 - 0.35)
    pad = 0.02 * tl.xmax
    ax.set_xlim(min([0.0, *(m.x for m in tl.marks)]) - pad - (0.5 if x == "order" else 0), tl.xmax + pad)
    if x == "order":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("order of the job events (each state lasts at least one step)")
    else:
        ax.set_xlabel(f"time since the first job event ({tl.unit})")
    ax.set_ylabel("job (one lane per job)")
    ax.set_title(title if title else "jobs: states and events", fontsize="medium")
    if legend:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.6, ncols=4, fontsize="small",
                  frameon=False)
    return fig
