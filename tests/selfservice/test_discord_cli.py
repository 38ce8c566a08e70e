"""``chatgpt-proxy discord register|block|unblock``, and owners in ``keys list``, run as a
user runs them: a process of its own, against the fake Discord API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from chatgpt_proxy.keystore import KeyPolicy, KeyStore
from fake_openai import FAKE_KEYS
from selfservice.discord_helpers import APPLICATION_ID, BOT_TOKEN, GUILD_ID, FakeDiscord, Signer

USER = "900000000000000077"


def run(args: list[str], tmp_path: Path, **discord: Any) -> subprocess.CompletedProcess[str]:
    config = {
        "upstreams": [
            {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": [FAKE_KEYS[0]]}
        ],
        "database_url": f"sqlite:///{tmp_path / 'proxy.db'}",
        "discord": discord,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "chatgpt_proxy", *args, "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_register_puts_the_commands_in_the_guild(
    tmp_path: Path, fake_discord: FakeDiscord, signer: Signer
) -> None:
    result = run(
        ["discord", "register"],
        tmp_path,
        application_id=APPLICATION_ID,
        public_key=signer.public_key,
        bot_token=BOT_TOKEN,
        api_base=fake_discord.url + "/api/v10",
        guild_id=GUILD_ID,
    )
    assert result.returncode == 0, result.stderr
    assert "registered /key, /usage" in result.stdout
    assert BOT_TOKEN not in result.stdout + result.stderr
    [call] = fake_discord.wait_for_calls(1)
    assert call.method == "PUT"
    assert call.path == f"/api/v10/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
    assert call.headers["Authorization"] == f"Bot {BOT_TOKEN}"
    assert [command["name"] for command in call.body] == ["key", "usage"]
    [action] = call.body[0]["options"]
    assert action["name"] == "action" and action["choices"] == [
        {"name": "rotate", "value": "rotate"}
    ]


def test_register_without_a_guild_registers_globally(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    result = run(
        ["discord", "register"],
        tmp_path,
        application_id=APPLICATION_ID,
        bot_token=BOT_TOKEN,
        api_base=fake_discord.url + "/api/v10",
    )
    assert result.returncode == 0, result.stderr
    [call] = fake_discord.wait_for_calls(1)
    assert call.path == f"/api/v10/applications/{APPLICATION_ID}/commands"


def test_register_reports_discords_refusal_without_the_token(tmp_path: Path) -> None:
    result = run(
        ["discord", "register"],
        tmp_path,
        application_id=APPLICATION_ID,
        bot_token=BOT_TOKEN,
        api_base="http://127.0.0.1:9/api/v10",  # nothing listens on port 9
    )
    assert result.returncode != 0
    assert "Discord could not be reached" in result.stderr and BOT_TOKEN not in result.stderr


def test_register_needs_the_bot_token(tmp_path: Path) -> None:
    result = run(["discord", "register"], tmp_path, application_id=APPLICATION_ID)
    assert result.returncode != 0 and "bot_token" in result.stderr


def test_block_revokes_the_users_key_and_keys_list_shows_the_owner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'proxy.db'}"

    async def issue() -> str:
        async with await KeyStore.open(url) as store:
            await store.migrate()
            issued = await store.owners.issue(f"discord:{USER}", "member", KeyPolicy(), None)
            assert issued.key is not None
            return issued.key.id

    key_id = asyncio.run(issue())
    listed = run(["keys", "list"], tmp_path)
    assert f"discord:{USER}" in listed.stdout and "OWNER" in listed.stdout
    result = run(["discord", "block", USER], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "revoked 1 key(s)" in result.stdout
    [shown] = orjson.loads(run(["keys", "list", "--json"], tmp_path).stdout)
    assert shown["id"] == key_id and shown["state"] == "revoked"
    assert shown["owner"] == f"discord:{USER}"

    async def refused() -> str:
        async with await KeyStore.open(url) as store:
            return (await store.owners.issue(f"discord:{USER}", "m", KeyPolicy(), None)).outcome

    assert asyncio.run(refused()) == "blocked"
    assert run(["discord", "unblock", USER], tmp_path).returncode == 0
    assert asyncio.run(refused()) == "issued"
    assert run(["discord", "unblock", USER], tmp_path).returncode != 0  # no longer blocked


def test_block_refuses_a_user_id_that_is_not_one(tmp_path: Path) -> None:
    result = run(["discord", "block", "alice"], tmp_path)
    assert result.returncode != 0 and "Discord user id" in result.stderr
