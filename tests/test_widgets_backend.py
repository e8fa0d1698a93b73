"""The backend choice of every widget: greyed out, with the reason, when real QEMU is missing."""

import pytest

from bitlab.backends import qemu as qemu_backend
from bitlab.widgets import BitmapExplorer, QMPConsole, SyncModeLab, TransactionLab
from bitlab.widgets._common import backend_picker


@pytest.fixture
def no_qemu(monkeypatch):
    monkeypatch.setattr(qemu_backend, "qemu_missing", lambda daemon="auto": ["qemu-system-x86_64"])


def test_picker_without_qemu(no_qemu):
    picker, note = backend_picker("qemu")
    assert picker.disabled and picker.value == "sim"
    assert picker.options == (("simulated (bitlab)", "sim"), ("real QEMU 7.2", "qemu"))
    assert "qemu-system-x86_64 is not installed" in note.value
    assert "apt-get install --no-install-recommends qemu-system-x86" in note.value
    assert "Running on the simulator instead." in note.value


@pytest.mark.parametrize("build", [BitmapExplorer, QMPConsole, lambda **kw: SyncModeLab(live=False, **kw),
                                   lambda **kw: TransactionLab(live=False, **kw)])
def test_every_widget_falls_back(no_qemu, build):
    widget = build(backend="qemu")
    assert widget.backend.disabled and widget.backend.value == "sim"
    assert widget.backend_note.value.startswith("<i>Real QEMU is not available:")
    assert widget.backend.description == "Backend"
    assert widget.backend_note in widget.widget.children


def test_picker_with_qemu_is_enabled(monkeypatch):
    monkeypatch.setattr(qemu_backend, "qemu_missing", lambda daemon="auto": [])
    picker, note = backend_picker("qemu")
    assert not picker.disabled and picker.value == "qemu" and note.value == ""


def test_every_control_is_described():
    import ipywidgets as w

    for widget in (BitmapExplorer(), QMPConsole(), SyncModeLab(live=False), TransactionLab(live=False)):
        controls = [c for c in vars(widget).values() if isinstance(c, w.DOMWidget) and hasattr(c, "description")
                    and not isinstance(c, (w.HTML, w.Image))]
        assert len(controls) >= 5
        assert all(c.description for c in controls), [type(c).__name__ for c in controls if not c.description]


def test_displays_as_its_widget_box():
    lab = SyncModeLab(live=False)
    bundle = lab._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == lab.widget.model_id
