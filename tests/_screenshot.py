"""Screenshots of a live web page (the dask dashboard), or a value the page computes, in headless
Chromium, for tests.

Chromium is driven through its DevTools protocol over a websocket (tornado's client, which
distributed already depends on). Its DevTools endpoint listens on 127.0.0.1 only, on a port the
browser picks itself; the browser runs with a throw-away profile and without any background
networking, and only the process started here is stopped afterwards (by its PID).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["evaluate", "find_chromium", "screenshot"]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # the browser picks a free port and writes it to its profile
)


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable, or None when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def screenshot(
    url: str,
    out: str | os.PathLike,
    *,
    wait: float = 8.0,
    size: tuple[int, int] = (1600, 1000),
    chromium: str | None = None,
    timeout: float = 60.0,
    until: Callable[[bytes], bool] | None = None,
    patience: float = 0.0,
) -> Path:
    """Open ``url`` in headless Chromium, let it render for ``wait`` seconds, save a PNG.

    Parameters
    ----------
    url : str
        The page; live pages (bokeh) keep updating over their own websocket meanwhile.
    out : path
        Where to write the PNG.
    wait : float
        Seconds of real time between navigating and capturing, seconds.
    size : (width, height)
        Viewport in CSS pixels (device scale factor 1), so the PNG is ``height x width``.
    chromium : str, optional
        The browser executable [found on PATH].
    timeout : float
        Seconds to wait for the browser's DevTools endpoint and for each protocol reply.
    until : callable, optional
        Given the PNG bytes of a capture, whether the page is ready (e.g. a viewer has drawn
        its data); captures are taken every 2 s after ``wait`` until it says so, for at most
        ``patience`` seconds more. The last capture is saved either way.
    patience : float
        Seconds of further captures ``until`` may take.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    FileNotFoundError
        No Chromium was found.
    TimeoutError
        The browser did not open its DevTools endpoint, or did not answer, within ``timeout``.
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable on PATH (apt-get install chromium)")
    out = Path(out)
    ready = (until, patience)
    asyncio.run(_shoot(exe, url, out, wait=wait, size=size, timeout=timeout, ready=ready))
    return out


def evaluate(
    url: str,
    expression: str,
    *,
    until: Callable[[object], bool],
    wait: float = 5.0,
    patience: float = 60.0,
    size: tuple[int, int] = (1600, 1000),
    timeout: float = 60.0,
) -> object:
    """Open ``url`` in headless Chromium and evaluate the JavaScript ``expression`` in the
    page every 2 s after ``wait`` seconds, until ``until(value)`` says it is ready or
    ``patience`` seconds have passed; the last value (JSON-like: str, list, dict, ...).

    Raises as :func:`screenshot` does; RuntimeError when the expression throws.
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable on PATH (apt-get install chromium)")
    return asyncio.run(
        _evaluate(exe, url, expression, until=until, wait=wait, patience=patience, size=size,
                  timeout=timeout)
    )  # fmt: skip


async def _evaluate(exe, url, expression, *, until, wait, patience, size, timeout) -> object:
    async with _page(exe, url, size=size, timeout=timeout) as call:
        await asyncio.sleep(wait)
        deadline = time.monotonic() + patience
        while True:
            reply = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in reply:
                raise RuntimeError(f"{expression!r} threw: {reply['exceptionDetails']}")
            value = reply["result"].get("value")
            if until(value) or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(2.0)


async def _shoot(exe, url, out: Path, *, wait, size, timeout, ready) -> None:
    async with _page(exe, url, size=size, timeout=timeout) as call:
        await asyncio.sleep(wait)  # real time: bokeh opens its websocket and streams updates
        until, patience = ready
        png = base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
        deadline = time.monotonic() + patience
        while until is not None and not until(png) and time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            png = base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
        out.write_bytes(png)


@contextlib.asynccontextmanager
async def _page(exe, url, *, size, timeout):
    """A browser showing ``url``; yields ``call(method, **params)`` of its DevTools protocol.
    The browser is closed, and its process stopped, on leaving."""
    from tornado.websocket import websocket_connect

    width, height = size
    profile = tempfile.mkdtemp(prefix="vstain-chromium-")
    proc = subprocess.Popen(
        [exe, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port = await _devtools_port(Path(profile), proc, timeout=timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        ws = await asyncio.wait_for(
            websocket_connect(page["webSocketDebuggerUrl"], max_message_size=256 * 2**20),
            timeout,
        )
        calls = iter(range(1, 1_000_000))

        async def call(method: str, **params):
            ident = next(calls)
            await ws.write_message(json.dumps({"id": ident, "method": method, "params": params}))
            while True:  # skip events until our reply arrives
                raw = await asyncio.wait_for(ws.read_message(), timeout)
                if raw is None:
                    raise ConnectionError(f"the browser closed DevTools during {method}")
                msg = json.loads(raw)
                if msg.get("id") == ident:
                    if "error" in msg:
                        raise RuntimeError(f"{method} failed: {msg['error']}")
                    return msg["result"]

        await call("Page.enable")
        await call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        await call("Page.navigate", url=url)
        yield call
        try:
            await call("Browser.close")
        except (ConnectionError, RuntimeError, TimeoutError):
            pass  # it is going away anyway; stopped by PID below if not
        await _close(ws, timeout=5.0)
    finally:
        _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


async def _close(ws, *, timeout: float) -> None:
    """Close the websocket and its socket before the event loop ends.

    tornado only schedules the socket's close (5 s after the closing handshake, if the peer does
    not answer); a loop that ends first would leave the socket open."""
    stream = getattr(ws.protocol, "stream", None) if ws.protocol is not None else None
    ws.close()
    with contextlib.suppress(TimeoutError):
        while await asyncio.wait_for(ws.read_message(), timeout) is not None:
            pass  # events still in flight
    if stream is not None and not stream.closed():
        stream.close()


async def _devtools_port(profile: Path, proc: subprocess.Popen, *, timeout: float) -> int:
    """The port the browser wrote to ``DevToolsActivePort`` in its profile."""
    portfile = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode} at start")
        try:
            first = portfile.read_text().split()
        except OSError:
            first = []
        if first:
            return int(first[0])
        await asyncio.sleep(0.1)
    raise TimeoutError(f"chromium did not open its DevTools port within {timeout:g} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the browser process started here (by its PID): wait, then SIGTERM, then SIGKILL."""
    for action in (None, proc.terminate, proc.kill):
        if action is not None:
            action()
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue
