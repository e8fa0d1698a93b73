"""BitmapExplorer: write, discard, clear, enable and disable — and watch one dirty bitmap change.

Every button sends QMP (guest I/O is HMP ``qemu-io`` inside ``human-monitor-command``, as on
the system emulator); ``explorer.sent`` keeps every message the clicks sent, and the last
ones are shown pretty-printed next to the picture and the bitmap's ``count``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from ..bitmap import DirtyBitmap
from ..errors import QMPError
from ..qemu_img import QemuImgError
from ..units import format_size
from ..viz import plot_bitmap_compare, plot_dirty_bitmap
from ._common import WidgetBase, backend_picker, close_machine, error_html, new_machine, png, pre

GRANULARITIES = tuple(1 << k for k in range(9, 21))  # 512 B ... 1 MiB (QEMU allows up to 2 GiB)
SHOWN = 4  # messages shown of the last click(s)


class BitmapExplorer(WidgetBase):
    """One qcow2 node (opened with ``"discard": "unmap"`` so discards dirty bitmaps) and one bitmap.

    Controls: ``backend``, ``granularity`` (re-creates the bitmap: remove, then add), ``offset``
    and ``length`` in bytes, buttons ``write_button`` / ``discard_button`` / ``clear_button`` /
    ``enable_button`` / ``disable_button``. Shown: ``picture`` (PNG: the bitmap before the last
    click overlaid with the bitmap after it), ``count`` and ``status``
    (HTML), ``qmp`` (the last messages sent). Data: ``sent`` (every QMP message the clicks
    sent, in order) and ``result`` (the bitmap after the last click).
    """

    def __init__(self, vm: Any = None, node: str = "drive0", backend: str = "sim", *, bitmap: str = "bitmap0",
                 size: int = 64 << 20, granularity: int = 65536) -> None:
        self.node, self.name, self.size = node, bitmap, size
        self.sent: list[dict] = []
        self.result: DirtyBitmap | None = None
        self.figure: Figure | None = None  # what ``picture`` shows
        self._own = vm is None
        self.backend, self.backend_note = backend_picker(getattr(vm, "backend", backend))
        self.backend.disabled = self.backend.disabled or not self._own  # a given machine is kept
        self.granularity = w.Dropdown(options=[(format_size(g), g) for g in GRANULARITIES], value=granularity,
                                      description="Granularity",
                                      tooltip="bytes per bit; changing it re-creates the bitmap")
        self.offset = w.BoundedIntText(value=0, min=0, max=size - 1, step=4096, description="Offset (B)",
                                       tooltip="byte offset of the write or discard")
        self.length = w.BoundedIntText(value=65536, min=1, max=size, step=4096, description="Length (B)",
                                       tooltip="bytes to write or discard")
        self.pattern = w.BoundedIntText(value=0xCD, min=0, max=255, description="Pattern",
                                        tooltip="the byte qemu-io write -P writes")
        self.write_button = w.Button(description="write", icon="pencil", tooltip="guest write (qemu-io write -P)")
        self.discard_button = w.Button(description="discard", icon="eraser", tooltip="guest discard (qemu-io discard)")
        self.clear_button = w.Button(description="clear", tooltip="block-dirty-bitmap-clear")
        self.enable_button = w.Button(description="enable", tooltip="block-dirty-bitmap-enable: record writes")
        self.disable_button = w.Button(description="disable", tooltip="block-dirty-bitmap-disable: stop recording")
        self.picture = w.Image(format="png", layout=w.Layout(max_width="640px"))
        self.count = w.HTML()
        self.status = w.HTML()
        self.qmp = w.HTML(layout=w.Layout(max_height="320px", overflow="auto"))
        self.write_button.on_click(lambda _: self._guest("write"))
        self.discard_button.on_click(lambda _: self._guest("discard"))
        self.clear_button.on_click(lambda _: self._command("block-dirty-bitmap-clear"))
        self.enable_button.on_click(lambda _: self._command("block-dirty-bitmap-enable"))
        self.disable_button.on_click(lambda _: self._command("block-dirty-bitmap-disable"))
        self.granularity.observe(self._regranulate, names="value")
        self.backend.observe(self._switch, names="value")
        buttons = w.HBox([self.write_button, self.discard_button, self.clear_button, self.enable_button,
                          self.disable_button])
        self.widget = w.VBox([w.HBox([self.backend]), self.backend_note,
                              w.HBox([self.granularity, self.pattern]), w.HBox([self.offset, self.length]),
                              buttons, self.status, self.count, w.HBox([self.picture, self.qmp])])
        self.vm = vm if vm is not None else new_machine(self.backend.value)
        self._setup()

    # -- machine ------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Create the node (if missing) and the bitmap (if missing) with plain QMP."""
        vm = self.vm
        nodes = {n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})}
        if self.node not in nodes:
            filename = f"{self.node}.qcow2"
            vm.qemu_img("create", "-f", "qcow2", filename, str(self.size))
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": self.node, "discard": "unmap",
                                    "file": {"driver": "file", "filename": filename}})
        if not any(b.get("name") == self.name for b in self._bitmaps()):
            vm.qmp("block-dirty-bitmap-add", {"node": self.node, "name": self.name,
                                              "granularity": self.granularity.value})
        else:
            self.granularity.unobserve(self._regranulate, names="value")
            self.granularity.value = next(b["granularity"] for b in self._bitmaps() if b.get("name") == self.name)
            self.granularity.observe(self._regranulate, names="value")
        self.refresh()

    def _bitmaps(self) -> list[dict]:
        node = next(n for n in self.vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == self.node)
        return node.get("dirty-bitmaps", [])

    def _switch(self, change: dict) -> None:
        close_machine(self.vm)
        self.vm = new_machine(change["new"])
        self.sent.clear()
        self._setup()
        self.status.value = f"New machine: {html.escape(change['new'])}."

    def close(self) -> None:
        """Stop the explorer's own real QEMU, if it runs one."""
        if self._own:
            close_machine(self.vm)

    # -- clicks -------------------------------------------------------------------------------
    def _send(self, action: Callable[[], Any]) -> None:
        """Run ``action``; record the QMP messages it sent; show errors; redraw."""
        since = len(self.vm.transcript)
        try:
            out = action()
            # qemu-io's own output (QEMU prints it on stdout; a failed request is not a QMP error)
            self.status.value = f"qemu-io: {pre(out.strip())}" if isinstance(out, str) and out.strip() else ""
        except (QMPError, QemuImgError, ValueError) as err:
            self.status.value = error_html(getattr(err, "desc", None) or str(err))
        new = [t["message"] for t in self.vm.transcript[since:] if t["kind"] == "cmd"]
        self.sent.extend(new)
        self.qmp.value = ("<b>QMP sent</b>" + "".join(pre(m) for m in self.sent[-SHOWN:])
                          if new else "<b>QMP sent</b><br><i>this click sent no QMP message</i>")
        self.refresh()

    def _guest(self, verb: str) -> None:
        off, ln = self.offset.value, self.length.value
        if verb == "write":
            self._send(lambda: self.vm.write(self.node, off, ln, self.pattern.value).split("\n")[0])
        else:
            self._send(lambda: self.vm.discard(self.node, off, ln).split("\n")[0])

    def _command(self, name: str) -> None:
        self._send(lambda: self.vm.qmp(name, {"node": self.node, "name": self.name}))

    def _regranulate(self, change: dict) -> None:
        def recreate() -> None:
            self.vm.qmp("block-dirty-bitmap-remove", {"node": self.node, "name": self.name})
            self.vm.qmp("block-dirty-bitmap-add", {"node": self.node, "name": self.name,
                                                   "granularity": change["new"]})
        self._send(recreate)

    # -- view ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the bitmap back (QEMU's own numbers) and redraw: the bitmap before the last click
        overlaid with the bitmap after it (what the click changed), or just the bitmap."""
        info = next(b for b in self._bitmaps() if b.get("name") == self.name)
        bm = self.vm.dirty_bitmap(self.node, self.name)
        before, self.result = self.result, bm
        bits = info["count"] // info["granularity"]
        self.count.value = (f"<b>{html.escape(self.name)}</b> on <code>{html.escape(self.node)}</code>: "
                            f"count <b>{info['count']}</b> bytes ({format_size(info['count'])}) = {bits} of "
                            f"{bm.nbits} bits dirty at granularity {info['granularity']}; "
                            f"recording: <b>{str(info['recording']).lower()}</b>")
        if before is not None and (before.granularity, before.size) == (bm.granularity, bm.size):
            fig = plot_bitmap_compare(before, bm, ("before the click", "after it"),
                                      title=f"{self.name} on {self.node}: what the last click changed")
        else:
            fig = plot_dirty_bitmap(bm, title=f"{self.name} on {self.node}")
        self.picture.value, self.figure = png(fig), fig
