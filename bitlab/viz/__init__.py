"""Figure builders for bitlab's pictures (pure: data in, matplotlib Figure out)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from .bitmap import BitmapGrid, bitmap_grid, plot_bitmap, plot_dirty_bitmap
from .chain import ChainArrow, ChainBox, ChainImage, ChainLayout, chain_layout, plot_chain
from .compare import CompareGrid, compare_grid, plot_bitmap_compare
from .graph import GraphBox, GraphLayout, GraphLink, graph_layout, plot_block_graph
from .outcome import DriveRow, outcome_rows, plot_outcome
from .timeline import AtEvent, Lane, Marker, MarkLine, Segment, Timeline, plot_timeline, timeline_lanes

__all__ = [
    "AtEvent", "BitmapGrid", "ChainArrow", "ChainBox", "ChainImage", "ChainLayout", "CompareGrid", "DriveRow",
    "GraphBox", "GraphLayout", "GraphLink", "Lane", "MarkLine", "Marker", "Segment", "Timeline", "bitmap_grid",
    "chain_layout", "compare_grid", "graph_layout", "outcome_rows", "plot_bitmap", "plot_bitmap_compare",
    "plot_block_graph", "plot_chain", "plot_dirty_bitmap", "plot_outcome", "plot_timeline", "show",
    "timeline_lanes",
]


def show(fig: Figure, *, dpi: int = 100) -> None:
    """Display ``fig`` in Jupyter as a PNG only.

    No ``<Figure size ...>`` text goes with it (nbval compares that text), no pyplot state
    is touched, and no ``%matplotlib`` magic is needed. Returns None, so a cell that ends
    with ``show(fig)`` has no other output.
    """
    from IPython.display import display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    display({"image/png": buf.getvalue()}, raw=True)
