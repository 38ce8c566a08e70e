"""Several proxy replicas sharing one database and one Redis, driven at once with the SDK.

Each replica is a separate app with its own state (key cache, limiter, pools), as it would be
in its own process; they share the session's background loop. A ``RedisServer`` is a private
``redis-server`` on a spare port that a test may kill and start again::

    replicas = Replicas.start(make_proxy, database_url=url, redis_url=redis)  # 3 replicas
    key_id, secret = replicas.create_key(rpm=30)
    outcomes = replicas.drive(secret, 45, chat)       # round-robin over the replicas, at once
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from redis import Redis as SyncRedis

from chatgpt_proxy.errors import ProxyError
from fake_openai import FakeOpenAI, Received
from fake_openai import payloads as p
from harness import ADMIN_KEY, Proxy
from servers import free_port, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

Call = Callable[[openai.OpenAI], Any]


@dataclass
class Outcome:
    """What one request came to: ``status`` 200 or the error's, and its error code."""

    status: int
    code: str | None = None
    headers: dict[str, str] | None = None


def chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to me"}]
    )


def attempt(client: openai.OpenAI, call: Call) -> Outcome:
    try:
        call(client)
    except openai.APIStatusError as exc:
        return Outcome(exc.status_code, exc.code, dict(exc.response.headers))
    return Outcome(200)


@dataclass
class Replicas:
    proxies: list[Proxy]

    @classmethod
    def start(cls, make_proxy: Callable[..., Proxy], count: int = 3, **settings: Any) -> Replicas:
        return cls([make_proxy(**settings) for _ in range(count)])

    def create_key(self, **policy: Any) -> tuple[str, str]:
        """A key made through the first replica's admin API, once every replica knows it."""
        answer = (
            self.proxies[0]
            .http()
            .post("/admin/keys", json={"name": "shared", **policy}, headers=ADMIN)
        )
        assert answer.status_code == 201, answer.text
        created = answer.json()
        self.wait_until(lambda: all(self.knows(proxy, created["key"]) for proxy in self.proxies))
        return created["id"], created["key"]

    @staticmethod
    def knows(proxy: Proxy, secret: str) -> bool:
        try:
            proxy.state.keys.authenticate(f"Bearer {secret}")
        except ProxyError:
            return False
        return True

    def clients(self, secret: str) -> list[openai.OpenAI]:
        return [proxy.client(secret) for proxy in self.proxies]

    def drive(self, secret: str, count: int, call: Call = chat) -> list[Outcome]:
        """``count`` requests at once, spread round-robin over the replicas."""
        clients = self.clients(secret)
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(attempt, clients[n % len(clients)], call) for n in range(count)]
            return [future.result() for future in futures]

    def flush_meters(self) -> None:
        for proxy in self.proxies:
            proxy.loop.run(proxy.state.meter.flush())

    def usage_totals(self, key_id: str) -> tuple[int, float]:
        self.flush_meters()
        store = self.proxies[0].state.store
        return self.proxies[0].loop.run(store.usage.totals(key_id))

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
        """Seconds until ``condition()`` held, polled every 10 ms; fails after ``timeout``."""
        started = time.monotonic()
        wait_for(condition, timeout)
        return time.monotonic() - started


def reported_tokens(fake: FakeOpenAI, record: Received) -> int:
    """The total_tokens the fake reported for one chat request it answered."""
    body = record.json()
    prompt = p.count_words(body.get("messages", []))
    texts = " ".join(p.collect_texts(body.get("messages", [])))
    marker = next((w for w in texts.split() if w.startswith("[[fault:long:")), None)
    completion = int(marker[13:-2]) if marker else len(fake.reply_text.split())
    return prompt + completion


class RedisServer:
    """A private redis-server on a spare port, without persistence: killed, it forgets all."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed"
            if os.environ.get("CHATGPT_PROXY_REQUIRE_SERVICES") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = SyncRedis(port=self.port, socket_connect_timeout=0.2)
        try:
            Replicas.wait_until(lambda: self._answers(client))
        finally:
            client.close()

    @staticmethod
    def _answers(client: SyncRedis) -> bool:
        try:
            return bool(client.ping())
        except Exception:
            return False

    def pause(self) -> None:
        """Stop the process without closing its sockets: a Redis that hangs."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
