"""Open a page in headless Chromium and record console errors and network requests.

A minimal Chrome DevTools Protocol client over a stdlib WebSocket (RFC 6455, client side,
text frames only), so the test needs no extra package. (No test lives here; the test is in
``test_report.py``.)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--mute-audio", "--disable-dev-shm-usage")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class WebSocket:
    """Just enough of a WebSocket client for the DevTools protocol."""

    def __init__(self, url: str, timeout: float):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"WebSocket upgrade refused: {head[:200]!r}")
        self.buf = bytearray(rest)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("DevTools connection closed")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._take(8))[0]
            mask = self._take(4) if b1 & 0x80 else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools connection closed")
            if opcode in (9, 10):          # ping / pong: Chromium does not ping clients
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    n_plots: int = 0
    screenshot: bytes = b""

    @property
    def network(self) -> list[str]:
        """Requests that left the page (anything not file:, data:, about: or blob:)."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class _Session:
    def __init__(self, ws: WebSocket, load: PageLoad):
        self.ws, self.load, self.next_id = ws, load, 0

    def event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            self.load.requests.append(p["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.load.errors.append("console: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.load.errors.append("exception: " + str(
                d.get("exception", {}).get("description", d.get("text"))))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.load.errors.append("log: " + p["entry"].get("text", ""))
        elif method == "Page.javascriptDialogOpening":
            self.load.dialogs.append(p.get("message", ""))
            self.call("Page.handleJavaScriptDialog", accept=True)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.event(msg)

    def wait_event(self, name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.event(msg)
            if msg.get("method") == name:
                return
        raise TimeoutError(f"no {name} before the deadline")


def _devtools_port(profile: Path, proc: subprocess.Popen, deadline: float) -> int:
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def open_page(chromium: str, page: Path, profile: Path, *, width: int = 1400,
              height: int = 1800, settle_s: float = 1.5, timeout: float = 120) -> PageLoad:
    """Load ``page`` (a local file) in headless Chromium and record what happened.

    Records every network request, console error, uncaught exception, log error and
    JavaScript dialog; counts rendered plotly figures; takes a PNG screenshot of the viewport.
    """
    deadline = time.monotonic() + timeout
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)     # stale from an earlier run
    log = open(profile / "chromium.log", "wb")
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", f"--window-size={width},{height}",
                             "about:blank"], stdout=log, stderr=log)
    load = PageLoad()
    try:
        port = _devtools_port(profile, proc, deadline)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        with direct.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = [t for t in json.load(r) if t.get("type") == "page"]
        ws = WebSocket(targets[0]["webSocketDebuggerUrl"], timeout=max(5.0, timeout / 2))
        s = _Session(ws, load)
        for domain in ("Network", "Runtime", "Log", "Page"):
            s.call(f"{domain}.enable")
        s.call("Page.navigate", url=page.resolve().as_uri())
        s.wait_event("Page.loadEventFired", deadline)
        load.n_plots = s.call("Runtime.evaluate", awaitPromise=True, returnByValue=True,
                              expression=f"new Promise(r => setTimeout(() => r(document."
                              f"querySelectorAll('.js-plotly-plot').length), "
                              f"{int(settle_s * 1000)}))")["result"]["value"]
        shot = s.call("Page.captureScreenshot", format="png")
        load.screenshot = base64.b64decode(shot["data"])
        ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return load
