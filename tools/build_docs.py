"""Build the course as a static HTML site: each notebook executed and converted, plus an index page.

    python tools/build_docs.py --out site notebooks            # what `make docs` runs
    python tools/build_docs.py --out site --no-execute notebooks/01-dirty-bitmaps.ipynb

Pictures are embedded as PNG (data: URIs), so the pages read offline; a widget needs its
JavaScript from a CDN, which is why every widget in the notebooks comes after a cell that
draws the same thing as a static picture.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor

INDEX_CSS = """body{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em;line-height:1.5}
li{margin:.6em 0}a{font-weight:600}.goal{color:#444;font-size:.95em}"""


def notebooks(paths: list[Path]) -> list[Path]:
    """The numbered notebooks named by ``paths`` (files, or directories holding them), in order."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.glob("[0-9][0-9]-*.ipynb")) if path.is_dir() else [path]
    return found


def title_and_goal(nb: nbformat.NotebookNode, fallback: str) -> tuple[str, str]:
    """The first ``#`` heading of a notebook and its learning goals (its numbered list), in one line."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        heads = [k for k, line in enumerate(lines) if line.startswith("# ")]
        if heads:
            goals = re.findall(r"^\d+\.\s+(.*(?:\n[ \t]+\S.*)*)", cell.source, flags=re.M)
            goal = "; ".join(" ".join(g.split()).rstrip(";.") for g in goals).replace("*", "").replace("`", "")
            return lines[heads[0]][2:].strip(), goal
    return fallback, ""


def build(paths: list[Path], out: Path, *, execute: bool = True, timeout: int = 600) -> list[Path]:
    """Convert the notebooks to ``out``/NAME.html and write ``out``/index.html; return the pages written."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    entries: list[tuple[str, str, str]] = []
    pages: list[Path] = []
    for path in notebooks(paths):
        nb = nbformat.read(path, as_version=4)
        if execute:
            ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
                nb, {"metadata": {"path": str(path.parent)}})
        body, _ = exporter.from_notebook_node(nb)
        page = out / (path.stem + ".html")
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        title, goal = title_and_goal(nb, path.stem)
        entries.append((page.name, title, goal))
        print(f"{path} -> {page}", file=sys.stderr)
    items = "\n".join(f'<li><a href="{html.escape(name)}">{html.escape(title)}</a>'
                      f'<div class="goal">{html.escape(goal)}</div></li>' for name, title, goal in entries)
    index = out / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bitlab — the course</title><style>{INDEX_CSS}</style></head>
<body><h1>bitlab — learn QEMU incremental backup by doing it</h1>
<p>The notebooks, executed on bitlab's simulation of QEMU 7.2. Open them live with
<code>make lab</code> (or on Binder) to use the widgets.</p>
<ol>
{items}
</ol></body></html>
""", encoding="utf-8")
    return [index, *pages]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="notebooks, or directories of numbered notebooks")
    parser.add_argument("--out", type=Path, default=Path("site"))
    parser.add_argument("--no-execute", action="store_true", help="convert the stored outputs as they are")
    args = parser.parse_args(argv)
    pages = build(args.paths, args.out, execute=not args.no_execute)
    print(f"wrote {len(pages)} pages to {args.out}/ (open {args.out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
