"""The core sections and the root settings: servers, upstreams, retries, limits, defaults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from chatgpt_proxy.settings import (
    DEFAULT_BASE_URL,
    LimitSettings,
    RetrySettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)


def _settings(**data: Any) -> Settings:
    return Settings.model_validate({"upstreams": [{"name": "openai", "keys": ["sk-x"]}], **data})


def test_an_upstream_needs_only_a_name_and_keys() -> None:
    upstream = UpstreamSettings.model_validate({"name": "openai", "keys": ["sk-x"]})
    assert upstream.base_url == DEFAULT_BASE_URL
    assert upstream.models == ("*",) and upstream.strategy == "round_robin"
    assert upstream.organization is None and upstream.project is None
    assert "sk-x" not in repr(upstream)  # keys are secrets


def test_an_upstreams_base_url_is_an_http_url_without_its_trailing_slash() -> None:
    made = UpstreamSettings.model_validate(
        {"name": "local", "keys": ["k"], "base_url": "http://127.0.0.1:8080/v1/"}
    )
    assert made.base_url == "http://127.0.0.1:8080/v1"
    for bad in ("api.openai.com/v1", "ftp://host/v1", "https://host/v1?x=1", "https://a b/"):
        with pytest.raises(ValidationError, match="http"):
            UpstreamSettings.model_validate({"name": "x", "keys": ["k"], "base_url": bad})


@pytest.mark.parametrize(
    "upstream",
    [
        {"name": "openai", "keys": []},
        {"name": "openai", "keys": ["  "]},
        {"name": "has space", "keys": ["k"]},
        {"name": "openai", "keys": ["k"], "strategy": "fastest"},
        {"name": "openai", "keys": ["k"], "auth": "basic"},
        {"name": "openai", "keys": ["k"], "query": {"a&b": "1"}},
        {"name": "openai", "keys": ["k"], "deployments": {"gpt-4o": "../admin"}},
        {"name": "openai", "keys": ["k"], "deployments": {"gpt-4o": "a/b"}},
    ],
    ids=[
        "no-keys",
        "blank-key",
        "bad-name",
        "bad-strategy",
        "bad-auth",
        "bad-query-name",
        "deployment-climbs",
        "deployment-two-segments",
    ],
)
def test_bad_upstreams_are_refused(upstream: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        UpstreamSettings.model_validate(upstream)


def test_upstream_names_are_unique() -> None:
    twice = [{"name": "a", "keys": ["k"]}, {"name": "a", "keys": ["j"]}]
    with pytest.raises(ValidationError, match="unique"):
        Settings.model_validate({"upstreams": twice})


def test_numbers_are_kept_in_their_ranges() -> None:
    assert ServerSettings(port=0).port == 0  # any free port
    for bad in ({"port": 65536}, {"workers": 0}, {"workers": 65}, {"max_body_bytes": 10}):
        with pytest.raises(ValidationError):
            ServerSettings.model_validate(bad)
    with pytest.raises(ValidationError):
        RetrySettings(max_attempts=11)
    with pytest.raises(ValidationError):
        LimitSettings(redis_prefix="has space")


def test_the_defaults_need_no_other_service() -> None:
    settings = _settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.redis_url is None
    assert settings.auth.admin_key is None
    assert settings.pricing == {}
