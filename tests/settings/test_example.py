"""The example configuration, generated from the settings' own descriptions so it cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.settings import (
    DEFAULT_BASE_URL,
    AuthSettings,
    ModerationSettings,
    PoolSettings,
    RetrySettings,
    ServerSettings,
    Settings,
    TimeoutSettings,
    example_yaml,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "config.example.yaml"
EXAMPLE_ENV = {"OPENAI_API_KEY": "sk-example-key-0001", "CHATGPT_PROXY_ADMIN_KEY": "admin-0001"}


def test_config_example_is_generated_from_the_settings() -> None:
    assert EXAMPLE.is_file(), "config.example.yaml is missing at the repository root"
    assert EXAMPLE.read_text(encoding="utf-8") == example_yaml(), (
        "config.example.yaml is stale: regenerate it with\n"
        "  python -c 'from chatgpt_proxy.settings import example_yaml; "
        'open("config.example.yaml", "w").write(example_yaml())\''
    )


def test_config_example_parses_with_its_variables_set() -> None:
    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    [upstream] = settings.upstreams
    assert upstream.name == "openai" and upstream.base_url == DEFAULT_BASE_URL
    assert upstream.keys[0].get_secret_value() == "sk-example-key-0001"
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == "admin-0001"
    # The example shows the defaults: parsing it changes nothing else.
    assert settings.server == ServerSettings()
    assert settings.timeouts == TimeoutSettings()
    assert settings.retries == RetrySettings()
    assert settings.pool == PoolSettings()
    assert settings.moderation == ModerationSettings()
    assert settings.auth.cache_refresh_seconds == AuthSettings().cache_refresh_seconds
    defaults = Settings.model_validate({"upstreams": [{"name": "openai", "keys": ["sk-x"]}]})
    for name in Settings.model_fields:
        if name not in ("upstreams", "auth"):
            assert getattr(settings, name) == getattr(defaults, name), name


def test_config_example_names_its_variables_when_unset() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE, environ={})
    assert "OPENAI_API_KEY" in str(caught.value) or "CHATGPT_PROXY_ADMIN_KEY" in str(caught.value)


def test_the_example_is_yaml_with_every_section_and_no_secret_written_out() -> None:
    text = example_yaml()
    document = yaml.safe_load(text)
    assert set(document) == set(Settings.model_fields)
    assert document["upstreams"][0]["keys"] == ["${OPENAI_API_KEY}"]
    assert document["auth"]["admin_key"] == "${CHATGPT_PROXY_ADMIN_KEY}"
    assert text.startswith("# chatgpt-proxy configuration.")
    assert example_yaml() == text  # the same every time: the file can be compared with it
