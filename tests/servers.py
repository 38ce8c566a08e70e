"""A private asyncio event loop on a daemon thread, for running real HTTP servers in sync tests.

Tests are plain synchronous functions; servers (the fake OpenAI upstream, the proxy itself) run on a
`BackgroundLoop` and are reached over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx2
import yaml
from aiohttp import web

T = TypeVar("T")


class BackgroundLoop:
    """An event loop running forever on its own daemon thread until `close()`."""

    def __init__(self, name: str = "test-background-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._runners: dict[str, web.BaseRunner] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run_forever, name=name, daemon=True)
        self._thread.start()

    def _run_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        """Run `coro` on the background loop and wait for its result (from any other thread)."""
        if self._closed:
            coro.close()
            raise RuntimeError("BackgroundLoop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def start_app(
        self,
        app: web.Application,
        *,
        handler_cancellation: bool = True,
        shutdown_timeout: float = 1.0,
        runner_class: Callable[..., web.BaseRunner] = web.AppRunner,
        host: str = "127.0.0.1",
    ) -> str:
        """Serve `app` on `host` with a free port; returns its base URL "http://HOST:PORT".

        `handler_cancellation=True` makes aiohttp cancel a handler whose client went away, which
        is how servers here notice disconnects. Only the container tests (tests/deploy/) serve
        on another address than 127.0.0.1: a container reaches the host through its bridge.
        """

        async def start() -> tuple[web.BaseRunner, str]:
            runner = runner_class(
                app,
                handler_cancellation=handler_cancellation,
                shutdown_timeout=shutdown_timeout,
                access_log=None,
            )
            await runner.setup()
            site = web.TCPSite(runner, host, 0)
            await site.start()
            port = runner.addresses[0][1]
            return runner, f"http://{host}:{port}"

        runner, url = self.run(start())
        with self._lock:
            self._runners[url] = runner
        return url

    def runner(self, url: str) -> web.BaseRunner:
        """The runner serving ``url`` (as returned by `start_app`)."""
        with self._lock:
            return self._runners[url]

    def stop_app(self, url: str, timeout: float = 30) -> None:
        """Stop the app served at `url` (as returned by `start_app`); unknown URLs are ignored."""
        with self._lock:
            runner = self._runners.pop(url, None)
        if runner is not None:
            self.run(runner.cleanup(), timeout=timeout)

    def close(self) -> None:
        """Stop every app, cancel what is left on the loop, stop the loop and join the thread."""
        if self._closed:
            return
        with self._lock:
            urls = list(self._runners)
        for url in urls:
            with contextlib.suppress(Exception):
                self.stop_app(url)
        with contextlib.suppress(Exception):
            self.run(self._cancel_leftovers(), timeout=10)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    @staticmethod
    async def _cancel_leftovers() -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def free_port() -> int:
    """A port nothing listens on right now (closed again: a server may take it, or none)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def is_serving(url: str) -> bool:
    """Whether the proxy at ``url`` answers ``/healthz``."""
    try:
        return httpx2.get(url + "/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


POLL_SECONDS = 0.01


def wait_for(condition: Callable[[], T], timeout: float = 5.0, message: str = "") -> T:
    """Poll ``condition()`` until it is truthy and return that value; fail after ``timeout`` s.

    For a test that waits on something happening elsewhere (a thread, a server, a background
    task) instead of sleeping a fixed time and hoping::

        wait_for(lambda: len(fake.requests_to("/v1/models")) >= 2, message="no probes")
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, message or f"not within {timeout} s"
        time.sleep(POLL_SECONDS)
    return value


async def wait_for_async(
    condition: Callable[[], T | Awaitable[T]], timeout: float = 5.0, message: str = ""
) -> T:
    """`wait_for` inside a running event loop: polls without blocking it, and awaits a
    condition that returns an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, message or f"not within {timeout} s"
        await asyncio.sleep(POLL_SECONDS)


def refuses_connections(url: str) -> bool:
    """Whether nothing listens at ``url`` any more (a server stopping closes its socket)."""
    try:
        httpx2.get(url + "/healthz", timeout=2)
    except httpx2.ConnectError:
        return True
    return False


def wait_until_serving(
    url: str, process: subprocess.Popen[str] | None = None, timeout: float = 20.0
) -> None:
    """Wait for a proxy started as a subprocess to answer; fail if it exits or never does."""

    def serving() -> bool:
        assert process is None or process.poll() is None, "the proxy exited before serving"
        return is_serving(url)

    wait_for(serving, timeout, f"the proxy never came up at {url}")


class Lines:
    """The lines a process writes to a pipe, read on a thread so a test can wait with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))

    def next(self, timeout: float) -> str:
        line = self._queue.get(timeout=timeout)
        self.seen.append(line)
        return line


@dataclass
class ServedProcess:
    """A `chatgpt-proxy serve` process, its URL, the default key it printed, its stderr."""

    process: subprocess.Popen[str]
    url: str
    key: str
    stderr: Path


@contextlib.contextmanager
def serve_process(config: dict[str, Any], tmp_path: Path) -> Iterator[ServedProcess]:
    """Run `chatgpt-proxy serve` with `config` (YAML) until it serves; kill it at the end."""
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stderr = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "chatgpt_proxy", "serve", "--config", str(path)]
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert process.stdout is not None
        lines = Lines(process.stdout)
        assert "created one named 'default'" in lines.next(timeout=20)
        key = lines.next(timeout=5).strip()
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process)
        yield ServedProcess(process, url, key, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
