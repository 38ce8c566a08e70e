"""``chatgpt-proxy keys ...`` and ``migrate``: the same key store as the admin API."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_helpers import clean_env, output, run_cli
from click.testing import CliRunner

from chatgpt_proxy.cli import main
from chatgpt_proxy.keystore import KeyStore, UsageEvent
from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import free_port, wait_until_serving

KEY_LINE = re.compile(r"^pk-[A-Za-z0-9_-]{22,}$")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Env-only configuration: one upstream key, a SQLite file in the test's directory."""
    return {
        "OPENAI_API_KEYS": "sk-cli-upstream-key-0000000000000001",
        "CHATGPT_PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
    }


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    result = run_cli(list(args), cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stderr
    assert env["OPENAI_API_KEYS"] not in output(result)
    return result.stdout


def _create(tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    stdout = _cli(tmp_path, env, "keys", "create", "--json", *args)
    return dict(orjson.loads(stdout.strip().splitlines()[-1]))


def test_create_prints_the_key_as_the_last_line(tmp_path: Path, env: dict[str, str]) -> None:
    stdout = _cli(
        tmp_path, env, "keys", "create", "--name", "x", "--rpm", "10", "--models", "gpt-4o*"
    )
    secret = stdout.strip().splitlines()[-1]
    assert KEY_LINE.match(secret), stdout
    listed = orjson.loads(_cli(tmp_path, env, "keys", "list", "--json"))
    [key] = listed
    assert key["name"] == "x" and key["rpm"] == 10 and key["models"] == ["gpt-4o*"]
    assert secret.startswith(key["prefix"])
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        [(stored,)] = conn.execute("SELECT key_hash FROM client_keys").fetchall()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


def test_create_json(tmp_path: Path, env: dict[str, str]) -> None:
    created = _create(
        tmp_path, env, "--name", "j", "--tpm", "500", "--models", "gpt-4o,o3", "--expires",
        "2099-01-31",
    )  # fmt: skip
    assert KEY_LINE.match(created["key"])
    assert created["name"] == "j" and created["tpm"] == 500
    assert created["models"] == ["gpt-4o", "o3"]
    assert created["expires_at"].startswith("2099-01-31")
    assert created["state"] == "active"
    assert created["id"].startswith("key_")


def test_list_shows_the_prefix_never_the_key(tmp_path: Path, env: dict[str, str]) -> None:
    made = [_create(tmp_path, env, "--name", f"k{n}") for n in range(2)]
    table = _cli(tmp_path, env, "keys", "list")
    as_json = _cli(tmp_path, env, "keys", "list", "--json")
    for created in made:
        assert created["id"] in table and created["prefix"] in table
        assert created["key"] not in table and created["key"] not in as_json
        digest = hashlib.sha256(created["key"].encode()).hexdigest()
        assert digest not in table and digest not in as_json
    assert "key_hash" not in as_json


def test_update_changes_the_policy(tmp_path: Path, env: dict[str, str]) -> None:
    created = _create(tmp_path, env, "--name", "u", "--rpm", "10")
    shown = _cli(tmp_path, env, "keys", "update", created["id"], "--rpm", "5", "--json")
    updated = orjson.loads(shown)
    assert updated["rpm"] == 5 and updated["id"] == created["id"]
    assert created["key"] not in shown
    text = _cli(tmp_path, env, "keys", "update", created["id"], "--models", "gpt-4o-mini")
    assert "rpm: 5" in text and "gpt-4o-mini" in text
    [listed] = orjson.loads(_cli(tmp_path, env, "keys", "list", "--json"))
    assert listed["rpm"] == 5 and listed["models"] == ["gpt-4o-mini"]


def test_update_rejects_bad_values_naming_them(tmp_path: Path, env: dict[str, str]) -> None:
    created = _create(tmp_path, env, "--name", "u")
    result = run_cli(["keys", "update", created["id"], "--rpm", "-1"], cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "rpm" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["keys", "create", "--name", "v", "--rpm", "x"], cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "rpm" in result.stderr and "Traceback" not in result.stderr


def test_revoke(tmp_path: Path, env: dict[str, str]) -> None:
    created = _create(tmp_path, env, "--name", "r")
    stdout = _cli(tmp_path, env, "keys", "revoke", created["id"])
    assert created["id"] in stdout
    [listed] = orjson.loads(_cli(tmp_path, env, "keys", "list", "--json"))
    assert listed["state"] == "revoked" and listed["revoked_at"] is not None
    assert "revoked" in _cli(tmp_path, env, "keys", "list")


@pytest.mark.parametrize("command", ["revoke", "update", "usage"])
def test_unknown_id_is_an_error_without_traceback(
    tmp_path: Path, env: dict[str, str], command: str
) -> None:
    args = ["keys", command, "key_0123456789abcdef"]
    if command == "update":
        args += ["--rpm", "5"]
    result = run_cli(args, cwd=tmp_path, env=env)
    assert "Traceback" not in result.stderr
    if command != "usage":  # usage of an unknown key is simply empty
        assert result.returncode != 0
        assert "key_0123456789abcdef" in result.stderr


def test_usage_by_day_and_model(tmp_path: Path, env: dict[str, str]) -> None:
    created = _create(tmp_path, env, "--name", "metered")
    empty = _cli(tmp_path, env, "keys", "usage", created["id"], "--json")
    assert orjson.loads(empty) == []

    async def record() -> None:
        store = await KeyStore.open(env["CHATGPT_PROXY_DATABASE_URL"])
        try:
            events = [
                UsageEvent(created["id"], model, "openai#1", "chat.completions", 200, 3, 4, 7, 12)
                for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o")
            ]
            await store.usage.record(events)
        finally:
            await store.close()

    asyncio.run(record())
    rows = orjson.loads(_cli(tmp_path, env, "keys", "usage", created["id"], "--json"))
    by_model = {row["model"]: row for row in rows}
    assert by_model["gpt-4o-mini"]["requests"] == 2
    assert by_model["gpt-4o-mini"]["total_tokens"] == 14
    assert by_model["gpt-4o"]["requests"] == 1
    table = _cli(tmp_path, env, "keys", "usage", created["id"])
    assert "gpt-4o-mini" in table and "14" in table


def test_migrate_creates_the_schema(tmp_path: Path, env: dict[str, str]) -> None:
    assert "up to date" in _cli(tmp_path, env, "migrate")
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"client_keys", "usage_events"} <= tables
    assert "up to date" in _cli(tmp_path, env, "migrate")  # and again: idempotent


def test_keys_commands_read_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: openai\n"
        '    keys: ["${UPSTREAM_KEY}"]\n'
        f"database_url: sqlite:///{tmp_path / 'from-config.db'}\n"
    )
    env = {"UPSTREAM_KEY": "sk-from-env-0000000000000000000001"}
    result = run_cli(
        ["keys", "create", "--name", "c", "--config", str(config)], cwd=tmp_path, env=env
    )
    assert result.returncode == 0, output(result)
    assert (tmp_path / "from-config.db").exists()
    # ./config.yaml is the default when present.
    (tmp_path / "config.yaml").write_text(config.read_text())
    result = run_cli(["keys", "list", "--json"], cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert [key["name"] for key in orjson.loads(result.stdout)] == ["c"]


def test_help_through_python_m(tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, output(result)
    for command in ("serve", "keys", "check", "migrate"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["keys"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
        ["keys", "update"],
        ["keys", "usage"],
        ["migrate"],
        ["check"],
    ],
)
def test_help(args: list[str]) -> None:
    # In process (the subprocess path is covered above): --help must not touch config or store.
    result = CliRunner().invoke(main, [*args, "--help"], env={"OPENAI_API_KEYS": ""})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and args[-1] in result.output
    if args[0] != "keys" or len(args) == 2:
        assert "--config" in result.output


def test_keys_create_help_lists_the_policy_options() -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--help"])
    for option in ("--name", "--rpm", "--tpm", "--models", "--expires", "--json"):
        assert option in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--name", "a\udcffb"],  # argv bytes that are not UTF-8
        ["keys", "update", "key_\udcff", "--rpm", "5"],
        ["keys", "revoke", "key_\udcff"],
        ["keys", "revoke", "key_" + "a" * 5000],
        ["keys", "usage", "key_\udcff"],
    ],
    ids=["create-name", "update-id", "revoke-id", "revoke-huge-id", "usage-id"],
)
def test_junk_names_and_ids_are_errors_without_traceback(
    tmp_path: Path, env: dict[str, str], database_url: str, args: list[str]
) -> None:
    env = {**env, "CHATGPT_PROXY_DATABASE_URL": database_url}
    result = run_cli(args, cwd=tmp_path, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert "unavailable" not in result.stderr
    if args[1] != "usage":  # the usage of a key that cannot exist is simply empty
        assert result.returncode != 0
        assert "name" in result.stderr or "no client key" in result.stderr, result.stderr


def test_replicas_starting_together_create_one_default_key(
    tmp_path: Path, fake: FakeOpenAI, database_url: str
) -> None:
    replicas = 3
    env = clean_env(
        {
            "OPENAI_API_KEYS": FAKE_KEYS[0],
            "OPENAI_BASE_URL": fake.base_url,
            "CHATGPT_PROXY_DATABASE_URL": database_url,
        }
    )
    ports = [free_port() for _ in range(replicas)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "chatgpt_proxy", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_serving(f"http://127.0.0.1:{port}", process, timeout=60)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        printed = [process.communicate(timeout=60)[0] for process in processes]
    announced = [out for out in printed if "created one named 'default'" in out]
    assert len(announced) == 1, printed

    async def keys() -> list[str]:
        async with await KeyStore.open(database_url) as store:
            return [key.name for key in await store.list()]

    assert asyncio.run(keys()) == ["default"]
