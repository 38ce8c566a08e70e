"""``GET /v1/models``: what the upstreams serve, narrowed to what the client key may use."""

from __future__ import annotations

import openai
import pytest

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FakeOpenAI
from harness import Proxy


def test_a_key_limited_to_some_models_lists_only_those(proxy: Proxy, fake: FakeOpenAI) -> None:
    secret = proxy.create_key("narrow", KeyPolicy(models=("gpt-4o*", "whisper-1")))
    ids = sorted(m.id for m in proxy.client(secret).models.list())
    assert ids == ["gpt-4o", "gpt-4o-mini", "whisper-1"]


def test_a_key_without_model_limits_lists_everything_served(proxy: Proxy) -> None:
    ids = [m.id for m in proxy.client().models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids


def test_listing_needs_a_valid_client_key(proxy: Proxy, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        proxy.client("sk-not-a-key").models.list()
    assert caught.value.code == "invalid_api_key"
    response = proxy.http().get("/v1/models")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert fake.count("/v1/models") == 0  # refused before any upstream is asked
