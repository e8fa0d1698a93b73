"""What every bitlab widget shares: the backend choice, figures as PNG images, small HTML helpers."""

from __future__ import annotations

import html
import io
import json
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from ..machine import Machine

BACKENDS = (("simulated (bitlab)", "sim"), ("real QEMU 7.2", "qemu"))


def qemu_unavailable() -> str | None:
    """Why ``Machine(backend="qemu", daemon="system")`` cannot run here, or None if it can."""
    from ..backends.qemu import QemuNotFound, qemu_missing

    missing = qemu_missing("system")
    if missing:
        return str(QemuNotFound(missing))
    try:
        import qemu.qmp  # noqa: F401  (the optional QMP client)
    except ImportError:
        return "real QEMU needs the QMP client: pip install 'qemu-bitlab[qemu]'"
    return None


def backend_picker(value: str = "sim") -> tuple[w.ToggleButtons, w.HTML]:
    """The backend choice and a line that says why real QEMU is unavailable (then the choice is
    disabled and stays on the simulator)."""
    why = qemu_unavailable()
    picker = w.ToggleButtons(options=BACKENDS, value=value if why is None else "sim", description="Backend",
                             tooltips=["bitlab's simulation of QEMU 7.2 (instant, deterministic)",
                                       "a private real QEMU 7.2 (system emulator) in a temporary directory"],
                             disabled=why is not None, style={"description_width": "initial"})
    note = w.HTML("" if why is None else f"<i>Real QEMU is not available: {html.escape(why)}</i>")
    if why is not None and value == "qemu":
        note.value += "<br><i>Running on the simulator instead.</i>"
    return picker, note


def new_machine(backend: str) -> Machine:
    """A machine for a widget: the simulator, or real QEMU's system emulator (HMP for guest I/O)."""
    if backend == "qemu":
        return Machine(backend="qemu", daemon="system")
    return Machine(backend="sim")


def close_machine(vm: Any) -> None:
    """Stop a real QEMU (a simulated machine has nothing to stop)."""
    close = getattr(vm, "close", None)
    if close is not None:
        close()


def png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes, for an ``ipywidgets.Image``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def pre(obj: Any) -> str:
    """JSON (or text) as an escaped ``<pre>`` block."""
    text = obj if isinstance(obj, str) else json.dumps(obj, indent=2)
    return f"<pre style='margin:0'>{html.escape(text)}</pre>"


def table(header: list[str], rows: list[list[Any]], caption: str | None = None) -> str:
    """A small HTML table (cells escaped) with a header row and an optional caption."""
    cap = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def error_html(text: str) -> str:
    """An error line that does not rely on colour alone."""
    return f"<b>Error:</b> <code>{html.escape(text)}</code>"


class WidgetBase:
    """A builder's result: ``widget`` is the whole box; displaying the object displays it."""

    widget: w.Box

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
