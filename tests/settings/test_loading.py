"""Loading settings: YAML, ``${ENV}`` interpolation, env-only mode, errors naming field and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.settings import (
    DEFAULT_BASE_URL,
    ServerSettings,
    TimeoutSettings,
    load_settings,
    parse_settings,
)

FULL = """\
server:
  host: 0.0.0.0
  port: 8080
  max_body_bytes: 1048576
upstreams:
  - name: openai
    base_url: https://api.openai.com/v1/
    keys: ["${KEY_ONE}", "sk-literal-two"]
    models: ["gpt-*", "o3*"]
    strategy: least_busy
    organization: org-ABC
  - name: local
    base_url: http://127.0.0.1:8000/v1
    keys: [sk-local]
    models: ["llama*"]
timeouts: {connect: 2.5, request: 30}
retries: {max_attempts: 2}
moderation:
  enabled: false
  rules:
    - name: no-secrets
      words: [password]
      patterns: ['\\bsk-[a-z0-9]+']
auth:
  admin_key: "${ADMIN}"
  cache_refresh_seconds: 2
database_url: "sqlite:///${DATA_DIR}/proxy.db"
redis_url: null
"""
FULL_ENV = {"KEY_ONE": "sk-from-env-one", "ADMIN": "admin-secret", "DATA_DIR": "/var/lib/proxy"}


def _error(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, environ or {}, source="test.yaml")
    return str(caught.value)


# ---------------------------------------------------------------- YAML and interpolation


def test_full_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FULL, encoding="utf-8")
    settings = load_settings(path, environ=FULL_ENV)
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    assert settings.server.max_body_bytes == 1048576
    assert settings.server.workers == 1  # defaults fill what is not given
    first, second = settings.upstreams
    assert first.name == "openai" and second.name == "local"
    assert first.base_url == "https://api.openai.com/v1"  # trailing slash dropped
    assert [key.get_secret_value() for key in first.keys] == ["sk-from-env-one", "sk-literal-two"]
    assert first.models == ("gpt-*", "o3*") and first.strategy == "least_busy"
    assert first.organization == "org-ABC"
    assert second.models == ("llama*",) and second.strategy == "round_robin"
    assert settings.timeouts.connect == 2.5 and settings.timeouts.request == 30
    assert settings.timeouts.first_byte == TimeoutSettings().first_byte
    assert settings.retries.max_attempts == 2
    assert settings.moderation.enabled is False
    assert settings.moderation.rules[0].words == ("password",)
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == "admin-secret"
    assert settings.auth.cache_refresh_seconds == 2
    assert settings.database_url == "sqlite:////var/lib/proxy/proxy.db"
    assert settings.redis_url is None


def test_secrets_are_hidden_in_repr() -> None:
    settings = parse_settings(FULL, FULL_ENV)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "sk-from-env-one" not in text and "sk-literal-two" not in text
        assert "admin-secret" not in text


def test_settings_are_immutable() -> None:
    settings = parse_settings(FULL, FULL_ENV)
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.database_url = "sqlite:///elsewhere"  # type: ignore[misc]


def test_interpolation_in_any_scalar() -> None:
    text = (
        "server: {port: '${PORT}', access_log: '${ACCESS}'}\n"
        "upstreams:\n"
        "  - name: ${NAME}\n"
        "    base_url: https://${HOST}/v1\n"
        "    keys: ['${A}${B}', 'plain-$notavariable', 'dollar-$${X']\n"
    )
    env = {"PORT": "9000", "ACCESS": "false", "NAME": "azure", "HOST": "example.com", "A": "sk-"}
    env |= {"B": "joined"}
    settings = parse_settings(text, env)
    assert settings.server.port == 9000 and settings.server.access_log is False
    upstream = settings.upstreams[0]
    assert upstream.name == "azure" and upstream.base_url == "https://example.com/v1"
    assert [key.get_secret_value() for key in upstream.keys][:2] == [
        "sk-joined",
        "plain-$notavariable",
    ]


def test_interpolated_values_are_not_reparsed_as_yaml() -> None:
    text = "upstreams:\n  - name: openai\n    keys: ['${KEY}']\n"
    settings = parse_settings(text, {"KEY": "sk-a, [b]: {c}"})
    assert settings.upstreams[0].keys[0].get_secret_value() == "sk-a, [b]: {c}"


def test_unset_variable_is_named_with_its_field_and_line() -> None:
    text = "upstreams:\n  - name: openai\n    keys:\n      - sk-ok\n      - '${NOT_SET_ANYWHERE}'\n"
    message = _error(text)
    assert "NOT_SET_ANYWHERE" in message
    assert "upstreams[0].keys[1]" in message
    assert "line 5" in message
    assert "test.yaml" in message


def test_empty_variable_counts_as_set_but_an_empty_key_is_refused() -> None:
    message = _error("upstreams:\n  - name: openai\n    keys: ['${EMPTY}']\n", {"EMPTY": ""})
    assert "upstreams[0].keys" in message and "empty" in message


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("upstreams:\n  - name: a\n    keys: [k]\nserver:\n  port: 70000\n", "server.port", 5),
        ("upstreams:\n  - name: a\n    keys: [k]\nserver:\n  port: lots\n", "server.port", 5),
        (
            "upstreams:\n  - name: a\n    keys: [k]\n    strategy: best\n",
            "upstreams[0].strategy",
            4,
        ),
        ("upstreams:\n  - name: a\n    keys: []\n", "upstreams[0].keys", 3),
        ("upstreams:\n  - name: a\n", "upstreams[0].keys", 2),
        ("upstreams:\n  - name: 'a b'\n    keys: [k]\n", "upstreams[0].name", 2),
        ("upstreams:\n  - name: a\n    keys: [k]\n    base_url: api.openai.com\n", "base_url", 4),
        ("upstreams:\n  - name: a\n    keys: [k]\n    typo: 1\n", "upstreams[0].typo", 4),
        ("upstreams:\n  - name: a\n    keys: [k]\nsevrer: {}\n", "sevrer", 4),
        (
            "upstreams:\n  - {name: a, keys: [k]}\n  - {name: a, keys: [j]}\n",
            "upstreams",
            2,
        ),
        (
            "upstreams:\n  - {name: a, keys: [k]}\nmoderation:\n  rules:\n    - name: r\n",
            "moderation.rules[0]",
            5,
        ),
        (
            "upstreams:\n  - {name: a, keys: [k]}\nmoderation:\n  engines: [rules, magic]\n",
            "moderation.engines",
            4,
        ),
        (
            "upstreams:\n  - {name: a, keys: [k]}\nmoderation:\n  thresholds: {violence: 2}\n",
            "moderation.thresholds",
            4,
        ),
        ("upstreams:\n  - {name: a, keys: [k]}\nauth: {cache_refresh_seconds: 0}\n", "auth", 3),
        ("upstreams: []\n", "upstreams", 1),
        ("server: {port: 1}\n", "upstreams", None),
    ],
)
def test_errors_name_the_field_and_line(text: str, field: str, line: int | None) -> None:
    message = _error(text)
    assert field in message, message
    if line is not None:
        assert re.search(rf"{re.escape(field)}[^\n]*\(line {line}\)", message), message
    assert "Traceback" not in message


def test_every_problem_is_reported_at_once() -> None:
    message = _error(
        "server:\n  port: -1\n  workers: 0\nupstreams:\n  - name: a\n    keys: [k]\n"
        "    strategy: x\n"
    )
    assert "server.port (line 2)" in message
    assert "server.workers (line 3)" in message
    assert "upstreams[0].strategy (line 7)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "mapping"),
        ("upstreams: [\n", "not valid YAML"),
        ("a: b: c\n", "not valid YAML"),
    ],
)
def test_malformed_files(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_secret_values_are_not_echoed_in_errors() -> None:
    text = "upstreams:\n  - name: a\n    keys: [sk-very-secret-value]\n    strategy: 5\n"
    assert "sk-very-secret-value" not in _error(text)


# ---------------------------------------------------------------- env-only mode


def test_env_only_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    settings = load_settings(environ={"OPENAI_API_KEYS": " sk-one , sk-two,,"})
    [upstream] = settings.upstreams
    assert upstream.name == "openai"
    assert upstream.base_url == DEFAULT_BASE_URL == "https://api.openai.com/v1"
    assert [key.get_secret_value() for key in upstream.keys] == ["sk-one", "sk-two"]
    assert upstream.models == ("*",)
    assert settings.auth.admin_key is None
    assert settings.database_url == "sqlite:///./chatgpt-proxy.db"
    assert settings.redis_url is None
    assert settings.server == ServerSettings()
    assert settings.server.host == "127.0.0.1" and settings.server.port == 3000


def test_env_only_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        environ={
            "OPENAI_API_KEYS": "sk-one",
            "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1/",
            "CHATGPT_PROXY_ADMIN_KEY": "admin-from-env",
            "CHATGPT_PROXY_DATABASE_URL": "postgresql://u@db/keys",
            "CHATGPT_PROXY_REDIS_URL": "redis://cache:6379/0",
        }
    )
    assert settings.upstreams[0].base_url == "http://127.0.0.1:9999/v1"
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == "admin-from-env"
    assert settings.database_url == "postgresql://u@db/keys"
    assert settings.redis_url == "redis://cache:6379/0"


@pytest.mark.parametrize("keys", [None, "", " , ,"])
def test_env_only_without_keys_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {} if keys is None else {"OPENAI_API_KEYS": keys}
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert "OPENAI_API_KEYS" in str(caught.value) and "config.yaml" in str(caught.value)


def test_env_only_bad_base_url_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="base_url"):
        load_settings(environ={"OPENAI_API_KEYS": "sk-a", "OPENAI_BASE_URL": "not a url"})


def test_config_yaml_in_the_working_directory_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("upstreams:\n  - name: fromfile\n    keys: [sk-f]\n")
    settings = load_settings(environ={"OPENAI_API_KEYS": "sk-env"})
    assert settings.upstreams[0].name == "fromfile"
