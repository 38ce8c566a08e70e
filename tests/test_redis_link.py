"""The Redis link: configuration errors, and the one boundary where Redis errors are translated."""

from __future__ import annotations

import sys

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable, connect, redis_errors
from chatgpt_proxy.settings import Settings


def _settings(redis_url: str) -> Settings:
    return Settings.model_validate(
        {"upstreams": [{"name": "openai", "keys": ["sk-x"]}], "redis_url": redis_url}
    )


def test_without_the_redis_package_the_hint_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'chatgpt-proxy\[redis\]'"):
        connect(_settings("redis://127.0.0.1:6379"))


def test_a_bad_url_is_a_config_error_that_does_not_repeat_it() -> None:
    with pytest.raises(ConfigError) as caught:
        connect(_settings("http://user:hunter2@example.com"))
    assert "hunter2" not in str(caught.value)


def test_redis_errors_become_redis_unavailable_with_the_cause_chained() -> None:
    expected = pytest.raises(RedisUnavailable, match=r"admit: ConnectionError")
    with expected as caught, redis_errors("admit"):
        raise RedisConnectionError("Connection refused")
    assert isinstance(caught.value.__cause__, RedisConnectionError)
    with pytest.raises(KeyError), redis_errors("admit"):
        raise KeyError("a bug is not an outage")


def test_the_link_uses_the_configured_prefix() -> None:
    settings = Settings.model_validate(
        {
            "upstreams": [{"name": "openai", "keys": ["sk-x"]}],
            "redis_url": "redis://127.0.0.1:1",
            "limits": {"redis_prefix": "team-a:", "redis_recheck_seconds": 0.25},
        }
    )
    link = RedisLink.open(settings)
    assert link.prefix == "team-a:" and link.up
