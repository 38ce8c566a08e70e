"""The proxy under test: a real server on 127.0.0.1, in front of the fake OpenAI upstream.

Every byte a client receives from it (headers and bodies, streams included) goes through a
recording transport, and every log record of the process is kept, so the session can check
at its end that no upstream key ever leaked (DESIGN §3.1).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
from aiohttp import web

from chatgpt_proxy.app import create_app
from chatgpt_proxy.keystore import ClientKey, KeyPolicy
from chatgpt_proxy.server import ProxyRunner
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.state import STATE, AppState
from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import BackgroundLoop, ServedProcess, serve_process

ADMIN_KEY = "admin-secret-for-tests-0123456789"
# An upstream key the fake accepts that tests configure when they want a key of their own.
CANARY_KEY = FAKE_KEYS[3]


class Recorder:
    """Everything the proxy said to clients and to its logs, for the leak scan."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[bytes] = []
        self.log_lines: list[str] = []

    def add_bytes(self, data: bytes) -> None:
        with self._lock:
            self.received.append(data)

    def add_log(self, line: str) -> None:
        with self._lock:
            self.log_lines.append(line)

    def leaks(self, secrets: list[str]) -> list[str]:
        with self._lock:
            blob = b"\n".join(self.received)
            logs = "\n".join(self.log_lines)
        found = []
        for secret in secrets:
            if secret.encode() in blob:
                found.append(f"{secret[:12]}... in a response")
            if secret in logs:
                found.append(f"{secret[:12]}... in a log line")
        return found


class RecordingHandler(logging.Handler):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(level=logging.DEBUG)
        self._recorder = recorder
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._recorder.add_log(self.format(record))


class RecordingStream(io.TextIOBase):
    """The proxy's access log stream: every line goes to the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self._recorder.add_log(line)
        return len(text)


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._recorder.add_bytes(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class RecordingTransport(httpx2.HTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        for name, value in response.headers.raw:
            self._recorder.add_bytes(name + b": " + value)
        response.stream = _Tee(response.stream, self._recorder)
        return response


@dataclass
class Proxy:
    """A running proxy, its client key, and clients that record what they receive."""

    url: str
    app: web.Application
    loop: BackgroundLoop
    recorder: Recorder
    key: str = ""
    key_record: ClientKey | None = None
    _clients: list[httpx2.Client] = field(default_factory=list)

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    def http(self, **kwargs: Any) -> httpx2.Client:
        client = httpx2.Client(
            base_url=self.url, transport=RecordingTransport(self.recorder), timeout=30, **kwargs
        )
        self._clients.append(client)
        return client

    def post_json(self, path: str, content: bytes) -> httpx2.Response:
        """POST these exact bytes as JSON with the client key; the answer is read whole."""
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        return self.http().post(path, content=content, headers=headers)

    def client(self, key: str | None = None, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=key or self.key,
            http_client=self.http(),
            **kwargs,
        )

    def flush_logs(self) -> None:
        """Write the access lines the proxy holds back for its next batch."""
        access_log = self.state.access_log
        if access_log is not None:

            async def flush() -> None:
                access_log.flush()

            self.loop.run(flush())

    def create_key(self, name: str = "test", policy: KeyPolicy | None = None) -> str:
        key, secret = self.loop.run(self.state.store.create(name, policy or KeyPolicy()))
        self.state.keys.apply(key)
        if self.key_record is None:
            self.key_record = key
        return secret

    @property
    def key_id(self) -> str:
        assert self.key_record is not None
        return self.key_record.id

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.loop.stop_app(self.url)


def proxy_settings(fake: FakeOpenAI, tmp_path: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "upstreams": [
            {"name": "openai", "base_url": fake.url + "/v1", "keys": list(FAKE_KEYS[:2])}
        ],
        "database_url": f"sqlite:///{tmp_path / 'proxy.db'}",
        "auth": {"admin_key": ADMIN_KEY, "cache_refresh_seconds": 0.2},
        "moderation": {"enabled": False},
        "retries": {"backoff_base": 0.01, "backoff_max": 0.05},
        "server": {"grace_seconds": 2},
        # The suite runs in two processes on as few as two cores, where Redis may take longer
        # than production's 0.5 s to answer; past it, limits would fall back to per process and
        # stop being exact. The outage tests set their own.
        "limits": {"redis_timeout": 5.0},
    }
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return Settings.model_validate(data)


def start_proxy(loop: BackgroundLoop, settings: Settings, recorder: Recorder) -> Proxy:
    app = loop.run(create_app(settings, log_stream=RecordingStream(recorder)))
    url = loop.start_app(
        app, runner_class=ProxyRunner, shutdown_timeout=settings.server.grace_seconds
    )
    proxy = Proxy(url, app, loop, recorder)
    proxy.key = proxy.create_key()
    return proxy


@contextlib.contextmanager
def served_proxy(fake: FakeOpenAI, tmp_path: Path, grace_seconds: float) -> Iterator[ServedProcess]:
    """``chatgpt-proxy serve`` as a process of its own in front of the fake upstream, for what
    only a real process shows (signals, shutdown); its log must not hold an upstream key."""
    config = {
        "upstreams": [{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])}],
        "database_url": f"sqlite:///{tmp_path / 'proxy.db'}",
        "server": {"grace_seconds": grace_seconds},
        "moderation": {"enabled": False},
    }
    with serve_process(config, tmp_path) as process:
        try:
            yield process
        finally:
            logs = process.stderr.read_text()
            for secret in FAKE_KEYS:
                assert secret not in logs
