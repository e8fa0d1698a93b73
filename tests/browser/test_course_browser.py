"""The course in a real browser: notebook 04 in Voila driven by keyboard, a notebook run in JupyterLab."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bitlab.scenarios import run_seed

from .conftest import ROOT, screenshot

pytestmark = pytest.mark.browser
NB04 = "04-partial-failures.ipynb"
LAB_NOTEBOOK = "05-sync-modes.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def widget_cells(name: str) -> int:
    """How many code cells of a course notebook display a widget (from its stored outputs)."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    return sum(any(WIDGET in o.get("data", {}) for o in c.get("outputs", [])) for c in nb["cells"]
               if c["cell_type"] == "code")


def require_widgets(name: str) -> None:
    if widget_cells(name) == 0:
        pytest.skip(f"{name} has no widget cell yet (bitlab.widgets not merged)")


def choose_by_keyboard(page: Any, label: str, option: str) -> None:
    """Focus the select labelled ``label`` and press arrow keys until ``option`` is chosen."""
    select = page.get_by_label(label, exact=True)
    select.focus()
    options = select.locator("option").all_inner_texts()
    here = options.index(select.evaluate("s => s.options[s.selectedIndex].text"))
    key = "ArrowDown" if options.index(option) > here else "ArrowUp"
    for _ in range(abs(options.index(option) - here)):
        page.keyboard.press(key)
    assert select.evaluate("s => s.options[s.selectedIndex].text") == option


def button(page: Any, text: str) -> Any:
    """The button whose visible text is exactly ``text`` (a tooltip may give it another accessible name)."""
    return page.locator("button").filter(has_text=re.compile(rf"^\s*{re.escape(text)}\s*$"))


def press_button(page: Any, text: str) -> None:
    """Keyboard activation: focus the button and press Enter."""
    target = button(page, text)
    target.focus()
    page.keyboard.press("Enter")


def test_voila_notebook04_grouped_with_drive0_failing(voila: Any, page: Any) -> None:
    require_widgets(NB04)
    page.goto(voila(NB04))
    button(page, "Run").wait_for()
    press_button(page, "grouped")                      # completion mode: a toggle button per mode
    choose_by_keyboard(page, "Failing drive", "drive0")
    press_button(page, "Run")
    summary = page.get_by_text(re.compile(r"^Keep:"))
    summary.wait_for()
    text = summary.locator("xpath=..").inner_text()
    assert "grouped completion" in page.content()
    expected = run_seed("grouped", failing="drive0")  # what the page must say, computed by bitlab
    assert {"d0-incr-1.qcow2", "d1-incr-1.qcow2"} <= set(expected.delete)
    keep = re.search(r"Keep:\s*(.*)", text)
    delete = re.search(r"Delete:\s*(.*)", text)
    assert keep is not None and delete is not None, text
    kept, deleted = set(keep.group(1).strip().split(", ")), set(delete.group(1).strip().split(", "))
    assert set(expected.delete) <= deleted          # both incrementals: delete
    assert not kept & set(expected.delete)          # and neither is kept
    assert set(expected.keep) <= kept | {"nothing"}
    path = screenshot(page, "notebook04-outcome")
    assert path.stat().st_size > 0


def test_jupyterlab_runs_a_notebook_and_renders_its_widgets(jupyterlab: Any, page: Any) -> None:
    require_widgets(LAB_NOTEBOOK)
    page.goto(jupyterlab(LAB_NOTEBOOK))
    page.locator(".jp-Notebook").wait_for()
    page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for()
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_text("Run All Cells", exact=True).click()
    rendered = page.locator(".jp-OutputArea-output .jupyter-widgets.widget-container, "
                            ".jp-OutputArea-output .jupyter-widgets.widget-box")
    rendered.first.wait_for()
    page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for()
    views = page.locator(".jp-OutputArea-output > .jupyter-widgets, .jp-OutputArea-output .widget-vbox")
    assert views.count() >= widget_cells(LAB_NOTEBOOK)
    assert page.get_by_text("Error displaying widget").count() == 0
    rendered.first.scroll_into_view_if_needed()
    screenshot(page, "jupyterlab-" + Path(LAB_NOTEBOOK).stem)
