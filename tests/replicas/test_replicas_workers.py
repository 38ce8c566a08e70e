"""``chatgpt-proxy serve --workers 2``: two processes on one port, one limit through Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml
from replica_harness import Outcome, Replicas, attempt, chat

from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import free_port, is_serving
from services import redis_url


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_PROXY_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "chatgpt_proxy", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(params=["redis", "no-redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path, fake: FakeOpenAI) -> Path:
    path = tmp_path / "config.yaml"
    settings: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": free_port(), "access_log": False},
        "upstreams": [{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])}],
        "moderation": {"enabled": False},
        "database_url": f"sqlite:///{tmp_path / 'proxy.db'}",
    }
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        settings |= {"redis_url": redis_url(), "limits": {"redis_prefix": prefix}}
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


@pytest.fixture
def secret(config: Path, tmp_path: Path) -> str:
    """A client key with rpm 8, made with the CLI before the proxy starts."""
    args = ["keys", "create", "--name", "w", "--rpm", "8", "--json", "--config", str(config)]
    created = _cli(*args, cwd=tmp_path)
    key: str = orjson.loads(created.strip().splitlines()[-1])["key"]
    return key


@pytest.fixture
def served(config: Path, tmp_path: Path, secret: str) -> Iterator[str]:
    """The proxy served by two worker processes; its base URL."""
    port = yaml.safe_load(config.read_text())["server"]["port"]
    process = subprocess.Popen(
        [sys.executable, "-m", "chatgpt_proxy", "serve", "--config", str(config), "--workers", "2"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        Replicas.wait_until(lambda: is_serving(url) and _listening(port) == 2, timeout=30)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def _listening(port: int) -> int:
    """Sockets listening on ``port``: one per worker once each has started (Linux)."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return 2  # elsewhere, trust /healthz
    rows = [line.split() for line in table.read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def _one_connection(url: str, secret: str) -> Outcome:
    # A client of its own: a new connection, which the kernel gives to either worker.
    with openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0) as client:
        return attempt(client, chat)


def test_workers_share_limits_through_redis_and_count_alone_without(
    config: Path, served: str, secret: str
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: _one_connection(served, secret), range(20)))
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) == {200, 429}
    if "redis_url" in yaml.safe_load(config.read_text()):
        assert statuses[200] == 8
    else:
        # Per process, as documented: each worker lets 8 through. 20 new connections all
        # landing on one worker would happen once in 2**19 runs.
        assert 8 < statuses[200] <= 16
