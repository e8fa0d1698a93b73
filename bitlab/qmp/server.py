"""The QMP wire protocol, served by a simulated machine (monitor/qmp.c, qapi/qmp-dispatch.c).

``bitlab serve`` runs a :class:`QMPServer`: a :class:`~bitlab.Machine` on the wall
clock (:mod:`bitlab.rt`) behind a unix socket (mode 0600) or 127.0.0.1, speaking
QMP as QEMU 7.2 does, so ``qemu.qmp``, ``qmp-shell`` and management code drive it
unchanged:

- on connect, the greeting ``{"QMP": {"version": …, "capabilities": ["oob"]}}``;
- capability negotiation: until ``qmp_capabilities`` succeeds, every other command
  gets CommandNotFound "Expecting capabilities negotiation with 'qmp_capabilities'",
  and no events are sent; ``{"enable": ["oob"]}`` is accepted and allows
  ``exec-oob`` (which no bitlab command supports, as in QEMU);
- input is read by QEMU's own JSON rules (:mod:`bitlab.qmp.qjson`): parse errors,
  limits and the number of error replies are QEMU's; replies echo ``id`` as sent;
- every negotiated client gets every event as it is emitted (events a command
  emits come before its reply); replies go only to the client that asked;
- ``quit`` replies, then closes every connection and the server.

Unlike a QEMU chardev, one socket serves several clients at once. Input is
handled in slices and a client whose replies are not read stops being read
(QEMU's monitor suspend), so one client cannot stall the others. Nothing is
evaluated or unpickled; a Python error inside a command is logged and answered
as a GenericError instead of ending the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from ..errors import QMPError
from ..machine import Machine
from ..rt import RealtimeScheduler, WallClock
from .commands import TABLE, Command
from .qjson import JSONStreamer, Message, dumps, qdict_hash, qdict_order

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost")
SLICE = 16 << 10  # input bytes handled per loop iteration and client
MAX_OUTPUT = 256 << 20  # a client with more unread output than this is dropped
NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"
QUIT = Command("quit", None, lambda vm, args: None)  # until the command table has its own


def realtime_machine(seed: int = 0) -> Machine:
    """A Machine on the wall clock; its jobs run in real time once a loop drives them."""
    clock = WallClock()
    return Machine(seed=seed, clock=clock, scheduler=RealtimeScheduler(clock), start_ns=clock.now_ns)


def _error(desc: str, error_class: str = "GenericError") -> dict:
    return qdict_order({"class": error_class, "desc": desc})


def _top_order(reply: dict) -> dict:
    """A reply's own members in QDict order (their values are already in order)."""
    keys = list(reply)
    order = sorted(range(len(keys)), key=lambda i: (qdict_hash(keys[i]) % 512, -i))
    return {keys[i]: reply[keys[i]] for i in order}


def check_obj(request: dict, allow_oob: bool) -> str | None:
    """qmp_dispatch_check_obj: what is wrong with the request's members, in QDict order."""
    exec_key = None
    for key in qdict_order({k: None for k in request}):
        value = request[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                return f"QMP input member '{key}' must be a string"
            if exec_key is not None:
                return f"QMP input member '{key}' clashes with '{exec_key}'"
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                return "QMP input member 'arguments' must be an object"
        elif key != "id":
            return f"QMP input member '{key}' is unexpected"
    return None if exec_key is not None else "QMP input lacks member 'execute'"


@contextlib.contextmanager
def _headroom(depth: int) -> Iterator[None]:
    """Recursion enough for a message nested ``depth`` deep (QEMU allows 1024)."""
    if depth < 64:
        yield
        return
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + 16 * depth)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


class QMPConnection(asyncio.Protocol):
    """One client: its JSON stream, its negotiation state, its replies."""

    def __init__(self, server: QMPServer) -> None:
        self.server = server
        self.streamer = JSONStreamer()
        self.transport: asyncio.Transport | None = None
        self.negotiated = False
        self.oob = False
        self.inbox = bytearray()
        self.lost = False
        self.eof = False
        self._write_paused = False
        self._scheduled = False

    # -- transport ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.server.closing or len(self.server.clients) >= self.server.max_clients:
            log.warning("refusing a QMP client: %s", "closing" if self.server.closing else "too many clients")
            transport.close()
            self.lost = True
            return
        self.server.clients.add(self)
        if self.server._no_clients is not None:
            self.server._no_clients.clear()
        self.send(self.server.greeting())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.inbox.clear()
        self.server.clients.discard(self)
        if not self.server.clients and self.server._no_clients is not None:
            self.server._no_clients.set()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._kick()

    def data_received(self, data: bytes) -> None:
        if self.lost or self.server.closing:
            return
        self.inbox += data
        self._kick()

    def eof_received(self) -> bool | None:
        """The client is done sending: what it sent is still answered (QEMU reads up to the
        end of file before it sees it), then the connection closes."""
        self.eof = True
        self._kick()
        return True

    def send(self, message: dict) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            return
        transport.write(dumps(message).encode("ascii") + b"\r\n")
        if transport.get_write_buffer_size() > MAX_OUTPUT:
            log.warning("dropping a QMP client that does not read its replies and events")
            transport.abort()

    # -- input --------------------------------------------------------------------
    def _kick(self) -> None:
        """Handle pending input, a slice per loop iteration; no reading while output is stuck
        (QEMU suspends its monitor likewise) or while a slice waits its turn."""
        transport = self.transport
        if self.lost or transport is None or self._scheduled:
            return
        if not self._write_paused and self.inbox:
            chunk = bytes(self.inbox[:SLICE])
            del self.inbox[:SLICE]
            for message in self.streamer.feed(chunk):
                if self.lost or self.server.closing:
                    return
                self.handle(message)
            if self.inbox:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._continue)
        if self._write_paused or self.inbox:
            transport.pause_reading()
        elif self.eof:
            transport.close()
        else:
            transport.resume_reading()

    def _continue(self) -> None:
        self._scheduled = False
        self._kick()

    def handle(self, message: Message) -> None:
        """Answer one message off the wire (handle_qmp_command + monitor_qmp_dispatch)."""
        if message.error is not None:
            self.send({"error": _error(message.error)})
            return
        with _headroom(message.depth):
            reply = self.dispatch(message.value)
            self.send(reply)
        self.server.after_command()

    def dispatch(self, request: Any) -> dict:
        """The reply to one parsed request."""
        if not isinstance(request, dict):
            return {"error": _error("QMP input must be a JSON object")}
        problem = check_obj(request, self.oob)
        if problem is not None:
            return self._reply(request, {"error": _error(problem)})
        oob = "execute" not in request
        name = request["exec-oob" if oob else "execute"]
        if not self.negotiated:
            return self._negotiate(request, name)
        if name == "quit" and "quit" not in TABLE:
            return self._quit(request, oob)
        try:
            reply = self.server.vm.execute(request)
        except Exception as err:  # noqa: BLE001 - a bug in a command must not end the server
            self.server.internal_error(err)
            return self._reply(request, {"error": _error(f"bitlab internal error: {type(err).__name__}: {err}")})
        if "id" in reply:
            reply["id"] = qdict_order(request["id"])
        if name == "quit" and "return" in reply:
            self.server.request_quit()
        return reply

    def _reply(self, request: dict, body: dict) -> dict:
        if "id" in request:
            body["id"] = qdict_order(request["id"])
        return _top_order(body)

    def _negotiate(self, request: dict, name: str) -> dict:
        """Capabilities negotiation mode: only ``qmp_capabilities`` exists."""
        if name != "qmp_capabilities":
            return self._reply(request, {"error": _error(NEGOTIATION_DESC, "CommandNotFound")})
        try:
            args = TABLE.check_args(TABLE.commands["qmp_capabilities"], request.get("arguments"))
        except QMPError as err:
            desc = NEGOTIATION_DESC if err.error_class == "CommandNotFound" else err.desc
            return self._reply(request, {"error": _error(desc, err.error_class)})
        self.negotiated = True
        self.oob = "oob" in (args.get("enable") or ())
        return self._reply(request, {"return": {}})

    def _quit(self, request: dict, oob: bool) -> dict:
        if oob:
            return self._reply(request, {"error": _error("The command quit does not support OOB")})
        try:
            TABLE.check_args(QUIT, request.get("arguments"))
        except QMPError as err:
            return self._reply(request, {"error": _error(err.desc, err.error_class)})
        self.server.request_quit()
        return self._reply(request, {"return": {}})


class QMPServer:
    """A Machine served over QMP. Start it with :meth:`start_unix` or :meth:`start_tcp`.

    ``history`` bounds the machine's event log and transcript (a server runs for
    long); ``echo`` is where the emulator's own output (qemu-io's text from
    ``human-monitor-command``, warnings) is printed, as QEMU prints it on its
    stdout and stderr; ``None`` discards it.
    """

    def __init__(self, vm: Machine | None = None, *, seed: int = 0, history: int | None = 10_000,
                 max_clients: int = 64, echo: tuple[TextIO, TextIO] | None = None) -> None:
        self.vm = vm if vm is not None else realtime_machine(seed)
        self.history = history
        self.max_clients = max_clients
        self.echo = echo
        self.clients: set[QMPConnection] = set()
        self.closing = False
        self.internal_errors = 0  # Python exceptions caught in commands and timers (goal: 0)
        self.address: str = ""
        self._servers: list[asyncio.AbstractServer] = []
        self._socket_path: str | None = None
        self._socket_id: tuple[int, int] | None = None
        self._done: asyncio.Event | None = None
        self._no_clients: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.vm.listeners.append(self._broadcast)

    # -- starting -----------------------------------------------------------------
    def _prepare(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = asyncio.Event()
        self._no_clients = asyncio.Event()
        self._no_clients.set()
        scheduler = self.vm.scheduler
        if isinstance(scheduler, RealtimeScheduler):
            scheduler.on_error = self.internal_error
            scheduler.attach(loop)
        return loop

    async def start_unix(self, path: str | os.PathLike[str]) -> str:
        """Listen on a unix socket created with mode 0600. An existing socket nobody listens on
        is replaced; any other file is not."""
        loop = self._prepare()
        path = os.fspath(path)
        sock = bind_unix(path)
        st = os.stat(path)
        self._socket_path, self._socket_id = path, (st.st_dev, st.st_ino)
        self._servers.append(await loop.create_unix_server(lambda: QMPConnection(self), sock=sock))
        self.address = f"unix:{path}"
        return path

    async def start_tcp(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Listen on 127.0.0.1 (only); returns the port (``port=0`` picks a free one)."""
        check_host(host)
        loop = self._prepare()
        server = await loop.create_server(lambda: QMPConnection(self), "127.0.0.1", port, reuse_address=True)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.address = f"tcp:127.0.0.1:{port}"
        return port

    def greeting(self) -> dict:
        version = TABLE.commands["query-version"].handler(self.vm, {})
        return qdict_order({"QMP": {"version": version, "capabilities": ["oob"]}})

    # -- running ------------------------------------------------------------------
    def _broadcast(self, event: dict) -> None:
        """Events go to every negotiated client (monitor_qapi_event_emit)."""
        for client in list(self.clients):
            if client.negotiated:
                client.send(event)

    def after_command(self) -> None:
        """After each command: due timers run, the console is echoed, history is bounded."""
        scheduler = self.vm.scheduler
        if isinstance(scheduler, RealtimeScheduler) and scheduler.attached:
            scheduler.run_due()
        out, err = self.vm.console_take(), self.vm.console_take("stderr")
        if self.echo is not None:
            for text, stream in ((out, self.echo[0]), (err, self.echo[1])):
                if text:
                    with contextlib.suppress(OSError, ValueError):  # a closed terminal or pipe
                        stream.write(text)
                        stream.flush()
        if self.history is not None:
            for log_list in (self.vm.events, self.vm.transcript):
                if len(log_list) > 2 * self.history:
                    del log_list[: -self.history]

    def internal_error(self, err: BaseException) -> None:
        self.internal_errors += 1
        log.error("bitlab internal error", exc_info=err)

    def request_quit(self) -> None:
        """``quit``: no more input is handled; the reply goes out, then everything closes."""
        self.closing = True
        if self._loop is not None:
            self._loop.call_soon(self.close)

    async def wait_closed(self) -> None:
        """Until ``quit``, a signal or :meth:`close` has shut the server down."""
        if self._done is not None:
            await self._done.wait()

    async def serve(self) -> None:
        """Wait for shutdown, then for the clients' last output (at most 5 s)."""
        await self.wait_closed()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.no_clients(), 5)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()

    async def no_clients(self) -> None:
        """Until no client is connected."""
        if self._no_clients is not None:
            await self._no_clients.wait()

    def close(self) -> None:
        """Stop listening, remove the socket file, and close every client after its output."""
        self.closing = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        self._remove_socket()
        scheduler = self.vm.scheduler
        if isinstance(scheduler, RealtimeScheduler):
            scheduler.detach()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        if self._broadcast in self.vm.listeners:
            self.vm.listeners.remove(self._broadcast)
        if self._done is not None:
            self._done.set()

    def _remove_socket(self) -> None:
        path, ident = self._socket_path, self._socket_id
        self._socket_path = self._socket_id = None
        if path is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == ident:
                os.unlink(path)


def check_host(host: str) -> None:
    """Only loopback: the server has no authentication, so nothing else may reach it."""
    if host not in LOOPBACK:
        raise ValueError(f"refusing to listen on {host!r}: bitlab's QMP server has no authentication; "
                         "it listens only on 127.0.0.1 or on a unix socket (--socket)")


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from the start (umask while binding)."""
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket: nobody listens on it
        else:
            raise FileExistsError(f"{path} is in use: a server is listening on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(server: QMPServer, *, socket_path: str | None = None, port: int | None = None,
                host: str = "127.0.0.1", announce: TextIO | None = None) -> None:
    """Run ``server`` until ``quit``, SIGINT or SIGTERM (used by ``bitlab serve``)."""
    import signal

    if socket_path is not None:
        await server.start_unix(socket_path)
        note = "mode 0600"
    else:
        await server.start_tcp(port or 0, host)
        note = "loopback only"
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, server.close)
    if announce is not None:
        announce.write(f"bitlab serve: QMP listening on {server.address} ({note}); stop with quit, Ctrl-C or SIGTERM\n")
        announce.flush()
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        server.close()
