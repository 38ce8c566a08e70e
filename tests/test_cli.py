"""The ``chatgpt-proxy`` command, run in-process with click's runner: key commands share the
admin API's parsing and store, and configuration errors end with a message, not a traceback.
(``tests/cli/`` runs the installed command as a subprocess.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from chatgpt_proxy.cli import main


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: [{name: openai, keys: [sk-cli-test]}]\n"
        f"database_url: sqlite:///{tmp_path / 'keys.db'}\n"
    )
    return str(path)


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_the_command_lists_its_subcommands() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    for command in ("serve", "keys", "check", "migrate"):
        assert command in result.output


def test_the_config_file_may_come_from_the_environment(config: str) -> None:
    result = CliRunner().invoke(main, ["migrate"], env={"CHATGPT_PROXY_CONFIG": config})
    assert result.exit_code == 0 and result.output.strip() == "database is up to date"


def test_serve_names_the_environment_variables_of_its_options() -> None:
    shown = " ".join(_run("serve", "--help").output.split())
    for name in ("CONFIG", "HOST", "PORT", "WORKERS"):
        assert f"env var: CHATGPT_PROXY_{name}" in shown


def test_keys_are_created_changed_listed_and_revoked(config: str) -> None:
    assert _run("migrate", "--config", config).output.strip() == "database is up to date"
    created = _run("keys", "create", "--name", "team", "--rpm", "5", "--json", "--config", config)
    assert created.exit_code == 0, created.output
    key = orjson.loads(created.output)
    assert key["name"] == "team" and key["rpm"] == 5 and key["key"].startswith(key["prefix"])

    updated = _run(
        "keys", "update", key["id"], "--models", "gpt-4o*,o3", "--json", "--config", config
    )
    assert orjson.loads(updated.output)["models"] == ["gpt-4o*", "o3"]

    listed = orjson.loads(_run("keys", "list", "--json", "--config", config).output)
    assert [(k["id"], k["state"]) for k in listed] == [(key["id"], "active")]
    assert "key" not in listed[0]  # the secret is shown once, at creation

    revoked = _run("keys", "revoke", key["id"], "--config", config)
    assert revoked.output.strip() == f"revoked {key['id']} (team)"
    listed = orjson.loads(_run("keys", "list", "--json", "--config", config).output)
    assert listed[0]["state"] == "revoked"


def test_bad_input_ends_with_its_message_and_no_traceback(config: str, tmp_path: Path) -> None:
    _run("migrate", "--config", config)
    bad_expiry = _run("keys", "create", "--name", "x", "--expires", "soon", "--config", config)
    assert bad_expiry.exit_code == 1
    assert "expires_at" in bad_expiry.output and "Traceback" not in bad_expiry.output
    missing = _run("keys", "list", "--config", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 1 and "cannot read config file" in missing.output
    unknown = _run("keys", "revoke", "key_0123456789abcdef", "--config", config)
    assert unknown.exit_code != 0
