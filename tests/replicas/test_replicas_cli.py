"""The CLI against running replicas: new keys get the config's defaults, changes arrive at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import orjson
import pytest
import yaml
from replica_harness import Replicas, chat

from fake_openai import FAKE_KEYS, FakeOpenAI
from services import redis_url


def _cli(config: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_PROXY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "chatgpt_proxy", *args, "--config", str(config)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_keys_made_and_revoked_with_the_cli_reach_running_replicas_at_once(
    replicas: Replicas, fake: FakeOpenAI, tmp_path: Path, redis_prefix: str
) -> None:
    config = tmp_path / "cli.yaml"
    settings = {
        "upstreams": [{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])}],
        "database_url": replicas.proxies[0].state.settings.database_url,
        "redis_url": redis_url(),
        "limits": {"redis_prefix": redis_prefix, "default_rpm": 4},
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    created = orjson.loads(_cli(config, "keys", "create", "--name", "cli", "--json"))
    assert created["rpm"] == 4  # the config's default
    secret = created["key"]
    # The replicas poll the store every 30 s here: Redis tells them.
    replicas.wait_until(lambda: all(replicas.knows(p, secret) for p in replicas.proxies), 1.0)
    assert sum(o.status == 200 for o in replicas.drive(secret, 6)) == 4

    _cli(config, "keys", "revoke", created["id"])
    clients = replicas.clients(secret)
    replicas.wait_until(lambda: not any(replicas.knows(p, secret) for p in replicas.proxies), 1.0)
    for client in clients:
        with pytest.raises(openai.AuthenticationError):
            chat(client)
