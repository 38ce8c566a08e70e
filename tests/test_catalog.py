"""The model catalog: the upstreams' lists filtered by their globs, cached, degraded not failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatgpt_proxy.catalog import ModelCatalog
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _catalog(proxy: Proxy, clock: Clock, ttl: float = 300.0) -> ModelCatalog:
    return ModelCatalog(proxy.state.client, proxy.state.router, ttl=ttl, clock=clock)


def _ids(proxy: Proxy, catalog: ModelCatalog) -> list[str]:
    models: list[dict[str, Any]] = proxy.loop.run(catalog.models())
    return [m["id"] for m in models]


def test_lists_are_cached_for_their_ttl(proxy: Proxy, fake: FakeOpenAI) -> None:
    clock = Clock()
    catalog = _catalog(proxy, clock, ttl=60)
    first = _ids(proxy, catalog)
    assert "gpt-4o-mini" in first
    clock.now += 59
    assert _ids(proxy, catalog) == first
    assert fake.count("/v1/models") == 1
    clock.now += 2
    assert _ids(proxy, catalog) == first
    assert fake.count("/v1/models") == 2


def test_each_upstream_contributes_what_its_globs_allow_once(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    keys = list(FAKE_KEYS[:2])
    proxy = make_proxy(
        upstreams=[
            {"name": "mini", "base_url": fake.base_url, "keys": keys, "models": ["gpt-4o-mini"]},
            {"name": "rest", "base_url": fake.base_url, "keys": keys, "models": ["gpt-4o*"]},
        ]
    )
    assert _ids(proxy, _catalog(proxy, Clock())) == ["gpt-4o-mini", "gpt-4o"]


def test_an_upstream_that_cannot_be_asked_lists_its_literal_models_briefly(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    key = FAKE_KEYS[2]
    proxy = make_proxy(
        upstreams=[
            {
                "name": "flaky",
                "base_url": fake.base_url,
                "keys": [key],
                "models": ["gpt-4o-mini", "gpt-4o*"],
            },
        ]
    )
    fake.script_key(key, "garbage", times=1)  # a 200 that is not JSON
    clock = Clock()
    catalog = _catalog(proxy, clock)
    models: list[dict[str, Any]] = proxy.loop.run(catalog.models())
    assert models == [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "flaky"}]
    clock.now += 9
    assert _ids(proxy, catalog) == ["gpt-4o-mini"]
    assert fake.count("/v1/models") == 1
    clock.now += 2  # a degraded list is kept for at most 10 s, not the whole ttl
    assert _ids(proxy, catalog) == ["gpt-4o-mini", "gpt-4o"]
    assert fake.count("/v1/models") == 2
