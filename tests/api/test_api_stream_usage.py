"""A stream is asked for its usage, and the client still sees exactly what it asked for."""

from __future__ import annotations

import orjson

from fake_openai import FakeOpenAI
from harness import Proxy


def test_the_usage_request_is_one_member_prepended(proxy: Proxy, fake: FakeOpenAI) -> None:
    sent = (
        b'{ "model" : "gpt-4o-mini", "stream": true,\n'
        b' "messages": [{"role": "user", "content": "hi"}], "x_extra": [1, 2.50]}'
    )
    body = proxy.post_json("/v1/chat/completions", sent).content
    received = fake.last("/v1/chat/completions").body
    assert received == b'{"stream_options":{"include_usage":true},' + sent[1:]
    assert b'"usage"' not in body  # neither the usage chunk nor "usage":null
    assert body.endswith(b"data: [DONE]\n\n")


def test_existing_stream_options_are_kept(proxy: Proxy, fake: FakeOpenAI) -> None:
    document = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = proxy.post_json("/v1/chat/completions", orjson.dumps(document)).content
    received = orjson.loads(fake.last("/v1/chat/completions").body)
    assert received["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert b'"usage"' not in body


def test_usage_is_metered_from_the_hidden_chunk(proxy: Proxy, fake: FakeOpenAI) -> None:
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks)
    proxy.loop.run(proxy.state.meter.flush())
    used, _ = proxy.loop.run(proxy.state.store.usage.totals(proxy.key_id))
    prompt_words, reply_words = 3, 4  # the fake counts words: "Hello from fake upstream!"
    assert used == prompt_words + reply_words
