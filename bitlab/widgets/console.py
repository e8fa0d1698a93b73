"""QMPConsole: type QMP, see the reply and the events, with history and examples.

Input is a wire message (``{"execute": "query-block"}``) or the shorthand
``NAME [ARGS]`` where ARGS is a JSON object or qmp-shell's ``key=value`` pairs
(``block-dirty-bitmap-add node=drive0 name=bitmap0 granularity=65536``; a dotted key
nests: ``x-perf.max-workers=1``). Input is parsed with ``json.loads`` only, never evaluated.
"""

from __future__ import annotations

import html
import json
from typing import Any

import ipywidgets as w

from ._common import WidgetBase, backend_picker, close_machine, error_html, new_machine, pre

EXAMPLES: dict[str, str] = {
    "query-block": '{"execute": "query-block"}',
    "add a bitmap": "block-dirty-bitmap-add node=drive0 name=bitmap0 granularity=65536",
    "guest write (HMP qemu-io)": '{"execute": "human-monitor-command", '
                                 '"arguments": {"command-line": "qemu-io drive0 \\"write -P 0x41 0 64k\\""}}',
    "bitmap counts": "query-named-block-nodes flat=true",
    "allocated stretches (HMP qemu-io map)": '{"execute": "human-monitor-command", '
                                             '"arguments": {"command-line": "qemu-io drive0 map"}}',
    "grow the drive (block_resize)": "block_resize device=drive0 size=68157440",
    "create a file (blockdev-create)": '{"execute": "blockdev-create", "arguments": {"job-id": "create0", '
                                       '"options": {"driver": "file", "filename": "target.qcow2", "size": 0}}}',
    "dismiss the create job": "job-dismiss id=create0",
    "open the new file": "blockdev-add driver=file node-name=target-file filename=target.qcow2",
    "create a qcow2 in it": '{"execute": "blockdev-create", "arguments": {"job-id": "create1", '
                            '"options": {"driver": "qcow2", "file": "target-file", "size": 67108864}}}',
    "full backup": '{"execute": "drive-backup", "arguments": {"device": "drive0", "target": "d0-full.qcow2", '
                   '"sync": "full", "format": "qcow2"}}',
    "incremental transaction": json.dumps({"execute": "transaction", "arguments": {"actions": [
        {"type": "drive-backup", "data": {"device": "drive0", "bitmap": "bitmap0", "format": "qcow2",
                                          "sync": "incremental", "target": "d0-incr-1.qcow2"}}],
        "properties": {"completion-mode": "grouped"}}}),
    "query-jobs": '{"execute": "query-jobs"}',
    "bitmap sha256": "x-debug-block-dirty-bitmap-sha256 node=drive0 name=bitmap0",
    "a mistake (bad granularity)": "block-dirty-bitmap-add node=drive0 name=b1 granularity=64000",
}


def _value(text: str) -> Any:
    """A ``key=value`` value: JSON if it parses (numbers, true, null, objects), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_input(text: str) -> dict:
    """The wire message for what was typed (JSON, or the ``NAME [ARGS]`` shorthand).

    Raises ValueError with a readable reason for anything else.
    """
    text = text.strip()
    if not text:
        raise ValueError("type a QMP command, e.g. query-block")
    if text.startswith(("{", "[", '"')):
        message = json.loads(text)  # a JSONDecodeError is a ValueError
        if not isinstance(message, dict):
            raise ValueError("a QMP message is a JSON object")
        return message
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    message: dict = {"execute": name}
    if not rest:
        return message
    if rest.startswith("{"):
        args = json.loads(rest)
        if not isinstance(args, dict):
            raise ValueError("arguments are a JSON object")
        message["arguments"] = args
        return message
    args = {}
    for pair in rest.split():
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value, not {pair!r}")
        *outer, last = key.split(".")
        node = args
        for part in outer:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key!r} nests under a value that is not an object")
        node[last] = _value(value)
    message["arguments"] = args
    return message


class QMPConsole(WidgetBase):
    """Controls: ``backend``, ``input`` (Textarea), ``send`` (Button), ``run_jobs`` (Checkbox:
    let jobs run after each command), ``history`` (Dropdown; picking one refills the input),
    ``previous`` / ``next`` (Buttons), ``examples`` (Dropdown that fills the input).
    Shown: ``reply`` and ``events`` (HTML). Data: ``sent``, ``replies``, ``result`` (the last
    reply, as QEMU sent it), ``last_events`` (the events that followed it).
    """

    def __init__(self, vm: Any = None, backend: str = "sim") -> None:
        self.sent: list[dict] = []
        self.replies: list[dict] = []
        self.result: dict | None = None
        self.last_events: list[dict] = []
        self._own = vm is None
        self._pos = 0  # where previous/next are in the history
        self.backend, self.backend_note = backend_picker(getattr(vm, "backend", backend))
        self.backend.disabled = self.backend.disabled or not self._own
        self.input = w.Textarea(value=EXAMPLES["query-block"], description="QMP", rows=4,
                                placeholder='{"execute": "query-block"}  or  query-block',
                                tooltip="a QMP message in JSON, or NAME key=value …",
                                layout=w.Layout(width="90%"))
        self.send = w.Button(description="Send", icon="paper-plane", tooltip="send the message to the machine")
        self.run_jobs = w.Checkbox(value=True, description="Run jobs after each command", indent=False,
                                   tooltip="let background jobs run until they settle")
        self.history = w.Dropdown(options=[], value=None, description="History",
                                  tooltip="pick an earlier command to edit and send again")
        self.previous = w.Button(description="previous", icon="arrow-up", tooltip="the command before")
        self.next = w.Button(description="next", icon="arrow-down", tooltip="the command after")
        self.examples = w.Dropdown(options=[("choose an example…", "")] + [(k, v) for k, v in EXAMPLES.items()],
                                   value="", description="Examples",
                                   tooltip="fills the input with an example command")
        self.reply = w.HTML()
        self.events = w.HTML(layout=w.Layout(max_height="320px", overflow="auto"))
        self.send.on_click(lambda _: self.submit())
        self.previous.on_click(lambda _: self._walk(-1))
        self.next.on_click(lambda _: self._walk(+1))
        self.history.observe(self._pick, names="value")
        self.examples.observe(self._example, names="value")
        self.backend.observe(self._switch, names="value")
        self.widget = w.VBox([self.backend, self.backend_note, self.examples, self.input,
                              w.HBox([self.send, self.run_jobs]), w.HBox([self.history, self.previous, self.next]),
                              self.reply, self.events])
        self.vm = vm if vm is not None else self._machine(self.backend.value)

    @staticmethod
    def _machine(backend: str) -> Any:
        vm = new_machine(backend)
        for drive in ("drive0", "drive1"):  # what the examples use
            vm.add_drive(drive, "64M")
        return vm

    def _switch(self, change: dict) -> None:
        close_machine(self.vm)
        self.vm = self._machine(change["new"])
        self.reply.value = f"New machine: {html.escape(change['new'])} with drives drive0 and drive1."
        self.events.value = ""

    def close(self) -> None:
        """Stop the console's own real QEMU, if it runs one."""
        if self._own:
            close_machine(self.vm)

    # -- sending ------------------------------------------------------------------------------
    def submit(self) -> dict | None:
        """Parse the input, send it, show the reply and the events that followed."""
        text = self.input.value
        try:
            message = parse_input(text)
        except ValueError as err:
            self.reply.value = error_html(f"not sent: {err}")
            return None
        self._remember(text)
        since = len(self.vm.events)
        try:
            reply = self.vm.execute(message)
            if self.run_jobs.value:
                self.vm.run()
        except Exception as err:  # noqa: BLE001  (a dead QEMU, a timeout: shown, not raised)
            self.reply.value = error_html(str(err) or repr(err))
            return None
        self.sent.append(message)
        self.replies.append(reply)
        self.result = reply
        self.last_events = list(self.vm.events[since:])
        self.reply.value = "<b>Reply</b>" + pre(reply)
        self.events.value = (f"<b>Events ({len(self.last_events)})</b>" + "".join(pre(ev) for ev in self.last_events)
                             if self.last_events else "<b>Events</b><br><i>none</i>")
        return reply

    # -- history and examples -----------------------------------------------------------------
    def _remember(self, text: str) -> None:
        entries = [t for t in self.history.options if t != text] + [text]
        self.history.unobserve(self._pick, names="value")
        self.history.options = entries
        self.history.value = None
        self.history.observe(self._pick, names="value")
        self._pos = len(entries)

    def _pick(self, change: dict) -> None:
        if change["new"] is not None:
            self.input.value = change["new"]
            self._pos = list(self.history.options).index(change["new"])

    def _walk(self, step: int) -> None:
        entries = list(self.history.options)
        if not entries:
            return
        self._pos = min(max(self._pos + step, 0), len(entries) - 1)
        self.input.value = entries[self._pos]

    def _example(self, change: dict) -> None:
        if change["new"]:
            self.input.value = change["new"]
