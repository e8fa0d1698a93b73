"""bitlab.viz.chain: boxes, arrows, hatches and words — what is drawn, not pixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

from bitlab.viz import chain_layout, plot_chain  # noqa: E402
from bitlab.viz.chain import STYLES  # noqa: E402


@dataclass(frozen=True)
class Img:  # the attributes bitlab.chain's verdicts have
    image: str
    drive: str | None
    backing: str | None
    valid: bool
    keep: bool
    reason: str


FAILED = "job 'drive1' failed (Input/output error): the image is incomplete"
SEED = [
    Img("d0-full.qcow2", "drive0", None, True, True, "complete full backup of drive0"),
    Img("d0-incr-1.qcow2", "drive0", "d0-full.qcow2", True, True, "incremental on d0-full.qcow2"),
    Img("d1-full.qcow2", "drive1", None, True, True, "complete full backup of drive1"),
    Img("d1-incr-1.qcow2", "drive1", "d1-full.qcow2", False, False, FAILED),
]


def test_layout_rows_columns_and_labels():
    lay = chain_layout(SEED)
    assert lay.drives == (("drive0", 0.0), ("drive1", 1.0))
    assert (lay.rows, lay.columns) == (2, 2)
    assert [(b.image, b.column, b.row) for b in lay.boxes] == [
        ("d0-full.qcow2", 0, 0), ("d0-incr-1.qcow2", 1, 0), ("d1-full.qcow2", 0, 1), ("d1-incr-1.qcow2", 1, 1)]
    assert lay.box("d0-incr-1.qcow2").label == "keep"
    assert lay.box("d1-incr-1.qcow2").label == f"delete: {FAILED}"
    assert lay.box("d1-incr-1.qcow2").style == "invalid, delete"
    assert [(a.image, a.backing) for a in lay.arrows] == [("d0-incr-1.qcow2", "d0-full.qcow2"),
                                                          ("d1-incr-1.qcow2", "d1-full.qcow2")]


def test_long_chains_branches_and_unlisted_backing_files():
    imgs = [Img("i3", "d", "i2", True, True, ""), Img("i2", "d", "i1", True, True, ""),
            Img("i1", "d", "full", True, True, ""), Img("full", "d", None, True, True, ""),
            Img("i1b", "d", "full", False, True, "partial, bitmap relies on it"),
            Img("x1", None, "x0", True, True, "")]
    lay = chain_layout(imgs)
    assert {b.image: (b.column, b.row) for b in lay.boxes} == {
        "i3": (3, 0), "i2": (2, 0), "i1": (1, 0), "full": (0, 0), "i1b": (1, 1), "x0": (0, 2), "x1": (1, 2)}
    assert lay.drives == (("d", 0.5), ("(no drive)", 2.0))
    x0 = lay.box("x0")
    assert not x0.listed and x0.style == "not listed"
    assert lay.box("i1b").style == "invalid, keep"


def test_drawn_boxes_stripes_arrows_and_legend():
    fig = plot_chain(SEED, title="seed, individual")
    ax = fig.axes[0]
    assert ax.get_title() == "seed, individual"
    patches = {p.get_gid(): p for p in ax.patches}
    assert patches["stripe:d1-incr-1.qcow2"].get_hatch() == STYLES[(False, False)][2] == "xx"
    assert not patches["stripe:d0-incr-1.qcow2"].get_hatch()
    assert patches["stripe:d0-incr-1.qcow2"].get_facecolor() == pytest.approx(STYLES[(True, True)][1])
    texts = {t.get_gid(): t.get_text() for t in ax.texts}
    assert texts["name:d1-incr-1.qcow2"] == "d1-incr-1.qcow2"
    body = texts["text:d1-incr-1.qcow2"]
    assert body.startswith("INVALID\ndelete: job 'drive1' failed")
    assert " ".join(body.split()) == f"INVALID {' '.join(('delete: ' + FAILED).split())}"
    assert texts["text:d0-incr-1.qcow2"].split("\n")[:2] == ["valid", "keep"]
    arrows = [a for a in ax.texts if (a.get_gid() or "").startswith("arrow:")]
    assert sorted(a.get_gid() for a in arrows) == ["arrow:d0-incr-1.qcow2->d0-full.qcow2",
                                                  "arrow:d1-incr-1.qcow2->d1-full.qcow2"]
    d0 = next(a for a in arrows if a.get_gid().startswith("arrow:d0"))
    assert d0.xy == pytest.approx((0.39, 0.0))  # points at the backing file's right edge
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["valid, keep", "invalid, delete"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["drive0", "drive1"]
    assert "backing" in ax.get_xlabel()


def test_every_style_has_its_own_hatch():
    hatches = [h for _, _, h in STYLES.values()]
    assert len(set(hatches)) == len(hatches)


def test_rejects_loops_and_duplicates_and_says_when_empty():
    with pytest.raises(ValueError, match="loop: a -> b -> a"):
        chain_layout([Img("a", "d", "b", True, True, ""), Img("b", "d", "a", True, True, "")])
    with pytest.raises(ValueError, match="twice"):
        chain_layout([Img("a", "d", None, True, True, ""), Img("a", "d", None, True, True, "")])
    empty = plot_chain([]).axes[0]
    assert [t.get_text() for t in empty.texts] == ["no backup images"] and not empty.patches
