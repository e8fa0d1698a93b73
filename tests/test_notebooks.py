"""The course notebooks keep the conventions nbval, static docs and Binder rely on.

(nbval itself runs the notebooks in ``make test``; these checks catch the silent traps: a
marker nbval ignores, a checked cell stored without an execution count, an SVG, a widget
without a static picture before it.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
MARKERS = {"# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP", "# NBVAL_RAISES_EXCEPTION"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_course_is_there() -> None:
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == [f"{n:02d}" for n in range(13)]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure(path: Path) -> None:
    nb = load(path)
    first = source(nb["cells"][0])
    assert first.startswith(f"# {path.name[:2]} · ")
    assert "**Learning goals.**" in first
    markdown = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Key points" in markdown
    assert any(re.search(r"^check\(\"[a-z-]+\", my_answer\)", source(c), re.M) for c in code_cells(nb))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_ones_nbval_reads(path: Path) -> None:
    for cell in code_cells(load(path)):
        for line in source(cell).splitlines():
            if line.lstrip().startswith("# NBVAL"):
                assert line in MARKERS, f"{line!r}: nbval only reads the bare marker (reason on the next line)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_comparable(path: Path) -> None:
    for cell in code_cells(load(path)):
        text = source(cell)
        assert cell["execution_count"] is not None, f"not executed (nbval would skip it): {text[:60]!r}"
        outputs = cell.get("outputs", [])
        assert [o for o in outputs if o["output_type"] == "error"] == []
        for out in outputs:
            data = out.get("data", {})
            assert "image/svg+xml" not in data
            assert not "".join(data.get("text/plain", "")).startswith("<Figure size")
        if text.startswith("# NBVAL_CHECK_OUTPUT"):
            assert cell["metadata"].get("keep_output") is True
            assert outputs, f"a checked cell with no stored output compares nothing: {text[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_widget_follows_a_static_picture(path: Path) -> None:
    picture_seen = False
    for cell in code_cells(load(path)):
        outputs = cell.get("outputs", [])
        if any(WIDGET in o.get("data", {}) for o in outputs):
            assert source(cell).startswith("# NBVAL_IGNORE_OUTPUT")
            assert picture_seen, f"widget without a static picture before it: {source(cell)[:60]!r}"
            picture_seen = False
        if any("image/png" in o.get("data", {}) for o in outputs):
            picture_seen = True


def test_docs_embed_pictures_and_index_the_notebooks(tmp_path: Path) -> None:
    nb = ROOT / "notebooks" / "00-start-here.ipynb"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--no-execute", "--out", str(tmp_path),
                    str(nb)], check=True, capture_output=True)
    index = (tmp_path / "index.html").read_text()
    assert '<a href="00-start-here.html">00 · Start here</a>' in index
    page = (tmp_path / "00-start-here.html").read_text()
    pngs = sum("image/png" in o.get("data", {}) for c in code_cells(load(nb)) for o in c.get("outputs", []))
    assert pngs > 0
    assert len(re.findall(r"<img[^>]+src=\"data:image/png;base64,", page)) == pngs
    assert not re.search(r'<img[^>]+src="https?:', page)


def test_the_map_in_00_links_every_notebook() -> None:
    text = "\n".join(source(c) for c in load(ROOT / "notebooks" / "00-start-here.ipynb")["cells"])
    linked = sorted(set(re.findall(r"\]\(([0-9][0-9]-[a-z0-9-]+\.ipynb)\)", text)))
    assert linked == [p.name for p in NOTEBOOKS if p.name != "00-start-here.ipynb"]
