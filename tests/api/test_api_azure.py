"""Azure OpenAI accounts beside OpenAI ones: the SDK's calls reach each in its own shape."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fake_openai import AZURE_API_VERSION, DEPLOYMENTS, FAKE_KEYS, FakeOpenAI
from harness import Proxy, Recorder, proxy_settings, start_proxy
from servers import BackgroundLoop

AZURE_KEY = FAKE_KEYS[2]
DEPLOYMENT = next(name for name, model in DEPLOYMENTS.items() if model == "gpt-4o")


@pytest.fixture(scope="module")
def mixed(
    background_loop: BackgroundLoop,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
    recorder: Recorder,
) -> Iterator[Proxy]:
    """gpt-4o on an Azure resource, everything else on an OpenAI account; one proxy for the
    module, in front of the session's fake (which each test resets through ``fake``)."""
    fake = fake_openai
    settings = proxy_settings(
        fake,
        tmp_path_factory.mktemp("azure"),
        upstreams=[
            {
                "name": "azure",
                "base_url": fake.url + "/openai",
                "keys": [AZURE_KEY],
                "models": ["gpt-4o", "text-embedding-*"],
                "auth": "api-key",
                "query": {"api-version": AZURE_API_VERSION},
                "deployments": {"gpt-4o": DEPLOYMENT, "text-embedding-3-small": "embed"},
            },
            {"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])},
        ],
    )
    proxy = start_proxy(background_loop, settings, recorder)
    yield proxy
    proxy.close()


def test_a_chat_call_reaches_each_upstream_in_its_shape(mixed: Proxy, fake: FakeOpenAI) -> None:
    client = mixed.client()
    azure = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    direct = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert azure.model == "gpt-4o" and direct.model == "gpt-4o-mini"
    to_azure, to_openai = fake.requests
    assert to_azure.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert to_azure.query == {"api-version": AZURE_API_VERSION}
    assert to_azure.headers["api-key"] == AZURE_KEY
    assert "authorization" not in to_azure.headers
    assert to_openai.path == "/v1/chat/completions"
    assert to_openai.key in FAKE_KEYS[:2] and "api-key" not in to_openai.headers


def test_a_stream_through_azure_is_relayed_with_its_usage(mixed: Proxy, fake: FakeOpenAI) -> None:
    stream = mixed.client().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply_text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert fake.last().path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"


def test_the_client_cannot_choose_the_api_version(mixed: Proxy, fake: FakeOpenAI) -> None:
    mixed.client().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_query={"api-version": "1999-01-01", "kept": "yes"},
    )
    assert fake.last().query == {"kept": "yes", "api-version": AZURE_API_VERSION}


def test_a_missing_deployment_is_a_model_the_account_lacks(mixed: Proxy, fake: FakeOpenAI) -> None:
    """text-embedding-3-small maps to a deployment the resource does not have: like OpenAI's
    model_not_found, the key is barred from that model alone, and the client gets a 404."""
    client = mixed.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert caught.value.code == "model_not_found"
    assert fake.last().path == "/openai/deployments/embed/embeddings"
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "still here"}]
    )
    assert reply.model == "gpt-4o"
