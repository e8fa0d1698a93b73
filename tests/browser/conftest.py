"""Real-browser fixtures: Debian's chromium driven by Playwright, against Voila and JupyterLab on 127.0.0.1.

Tests here are marked ``browser``: without chromium, Playwright, Voila or JupyterLab they are skipped
with the reason, and they fail instead when ``BITLAB_REQUIRE_BROWSER=1`` (CI). Each server is
started on a free port with its own config, runtime and settings directories under the test's
temporary directory, and stopped by its own process id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("BITLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
SERVER_TIMEOUT = 90.0
PAGE_TIMEOUT_MS = 240_000  # Voila runs the whole notebook before it shows it; the machine may be busy


def browser_missing() -> str | None:
    """Why the browser tier cannot run here, or None."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"chromium not installed ({CHROMIUM}): apt-get install -y chromium"
    for module, package in (("playwright", "playwright"), ("voila", "voila"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"Python package {package} not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(autouse=True)
def _browser_gate(request: pytest.FixtureRequest) -> None:
    """Tests marked ``browser`` skip without a browser, or fail when BITLAB_REQUIRE_BROWSER=1."""
    if request.node.get_closest_marker("browser") is None:
        return
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("BITLAB_REQUIRE_BROWSER") == "1":
        pytest.fail("BITLAB_REQUIRE_BROWSER=1 but " + reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A Jupyter-family server subprocess on 127.0.0.1, in its own process group.

    Its output goes to ``server.log``; :meth:`wait` returns once the server has printed its own
    address (``ready``), which Voila does only when it listens. Jupyter Server 2 prints it before: it binds
    its port in a callback of the IO loop it starts next (ServerApp.init_httpserver: ``io_loop.add_callback(
    self._bind_http_server)``), so a browser sent there at once may find the port closed on a busy machine.
    With ``port``, :meth:`wait` then also waits until the port takes a connection (tried again after each
    50 ms wait on the server's exit).
    """

    def __init__(self, argv: list[str], url: str, home: Path, env: dict[str, str], ready: str,
                 port: int | None = None) -> None:
        self.url = url
        self.port = port
        self.log = home / "server.log"
        self._ready_text = ready
        self._ready = threading.Event()
        self._exited = threading.Event()  # the server's output ended: it exited
        self._ended = False
        self.proc = subprocess.Popen(argv, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.log.open("w") as log:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                if self._ready_text in line:
                    self._ready.set()
        self._ended = True
        self._exited.set()
        self._ready.set()  # the server exited: wait() reports it

    def wait(self, timeout: float = SERVER_TIMEOUT) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.url} not up after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")
        if self._ended:
            raise RuntimeError(f"server exited with {self.proc.wait()}:\n{self.log.read_text()[-3000:]}")
        if self.port is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=timeout).close()
                return
            except ConnectionRefusedError:
                if self._exited.wait(0.05):
                    raise RuntimeError(f"server exited with {self.proc.wait()}:\n"
                                       f"{self.log.read_text()[-3000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.url} printed its address but took no connection within "
                                       f"{timeout:.0f} s:\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        """Stop the server; if it had ended on its own, print why (shown with a failed test)."""
        if self.proc.poll() is not None:
            print(f"{self.url}: the server ended on its own with {self.proc.returncode}:\n"
                  f"{self.log.read_text()[-3000:]}")
        else:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=15)


def server_env(home: Path) -> dict[str, str]:
    """Environment for a server: this checkout's bitlab, private Jupyter directories, no news popup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    settings = home / "lab-settings"
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env.update(PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    return env


def copy_notebook(name: str, home: Path) -> Path:
    """The course notebook ``name`` copied into ``home`` (the servers never write to the checkout)."""
    src = ROOT / "notebooks" / name
    dst = home / "notebooks" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def voila(home: Path) -> Iterator[Any]:
    """``voila(notebook_name)`` serves one course notebook with Voila and returns its URL."""
    servers: list[Server] = []

    def start(name: str) -> str:
        nb = copy_notebook(name, home)
        port = free_port()
        argv = [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
                "--ServerApp.port_retries=0", "--show_tracebacks=True", str(nb)]
        server = Server(argv, f"http://127.0.0.1:{port}/", home, server_env(home), ready=f"127.0.0.1:{port}")
        servers.append(server)
        server.wait()  # no HTTP request to find out: Voila would run the notebook for it
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def jupyterlab(home: Path) -> Iterator[Any]:
    """``jupyterlab(notebook_name)`` starts JupyterLab on a copy of the notebook; returns the notebook's URL."""
    servers: list[Server] = []

    def start(name: str) -> str:
        copy_notebook(name, home)
        port, token = free_port(), secrets.token_hex(16)
        argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={home / 'notebooks'}", "--LabApp.news_url=", "--ServerApp.open_browser=False"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        base = f"http://127.0.0.1:{port}"
        server = Server(argv, base, home, server_env(home), ready=f"127.0.0.1:{port}", port=port)
        servers.append(server)
        server.wait()
        return f"{base}/lab/tree/{name}?token={token}"

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh Playwright page in Debian's chromium (headless)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(PAGE_TIMEOUT_MS)
        yield pg
        context.close()
        browser.close()


def screenshot(pg: Any, name: str) -> Path:
    """Save a full-page screenshot to test-artifacts/NAME.png (gitignored) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path
