"""Every OpenAI route the proxy serves, streamed and not, driven by the official SDK."""

from __future__ import annotations

from collections.abc import Callable

import openai
import orjson
import pytest

from fake_openai import DEFAULT_REPLY, EMBEDDING_DIMENSIONS, FAKE_KEYS, TRANSCRIPT, FakeOpenAI
from fake_openai.payloads import embedding_vector, fake_mp3
from harness import Proxy

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
AUDIO = ("speech.mp3", b"ID3" + bytes(range(256)) * 4, "audio/mpeg")
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "hi there"}]


def _sse_events(raw: bytes) -> list[bytes]:
    return [event for event in raw.split(b"\n\n") if event.strip()]


# ---------------------------------------------------------------- chat completions


def test_chat_completion(proxy: Proxy, fake: FakeOpenAI) -> None:
    completion = proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 6
    assert fake.last("/v1/chat/completions").json()["messages"] == MESSAGES


def test_chat_stream_without_usage_request(proxy: Proxy, fake: FakeOpenAI) -> None:
    chunks = list(
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1 and chunks[0].created > 0
    assert all(c.choices for c in chunks)  # no usage-only chunk
    assert all(c.usage is None for c in chunks)
    # The client did not ask for usage: nothing of it appears, not even "usage": null.
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)


def test_chat_stream_raw_has_no_usage_key(proxy: Proxy, fake: FakeOpenAI) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with proxy.http().stream(
        "POST",
        "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {proxy.key}"},
    ) as response:
        raw = response.read()
    assert response.status_code == 200
    events = _sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    assert b'"usage"' not in raw
    documents = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert documents[0]["choices"][0]["delta"]["role"] == "assistant"
    assert documents[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(documents) == 2 + len(DEFAULT_REPLY.split())
    assert len({(d["id"], d["created"]) for d in documents}) == 1
    # The proxy asked for usage itself (to meter the stream) and hid it again.
    assert fake.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}


def test_completions_stream_raw_has_no_usage_key(proxy: Proxy) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True}
    with proxy.http().stream(
        "POST", "/v1/completions", json=body, headers={"Authorization": f"Bearer {proxy.key}"}
    ) as response:
        raw = response.read()
    events = _sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    assert b'"usage"' not in raw
    documents = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert "".join(d["choices"][0]["text"] for d in documents) == DEFAULT_REPLY


def test_chat_stream_with_usage_request(proxy: Proxy, fake: FakeOpenAI) -> None:
    chunks = list(
        proxy.client().chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 4)
    assert "".join(c.choices[0].delta.content or "" for c in content) == DEFAULT_REPLY
    assert fake.last("/v1/chat/completions").json()["stream_options"] == {"include_usage": True}


def test_unknown_fields_reach_upstream_byte_for_byte(proxy: Proxy, fake: FakeOpenAI) -> None:
    sent = (
        b'{ "model":"gpt-4o-mini",  "messages":[{"role":"user","content":"hi \\u00e9"}],\n'
        b'  "x_unknown_field": {"nested": [1, 2.50, null, true]}, "zzz": "keep me" }'
    )
    answer = proxy.http().post(
        "/v1/chat/completions",
        content=sent,
        headers={"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    assert fake.last("/v1/chat/completions").body == sent


def test_stream_body_asking_for_usage_is_forwarded_byte_for_byte(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    sent = (
        b'{"model": "gpt-4o-mini", "stream": true, "vendor_x": [1, {"y": null}],'
        b' "stream_options": {"include_usage": true},'
        b' "messages": [{"role": "user", "content": "hi"}]}'
    )
    raw = proxy.post_json("/v1/chat/completions", sent).content
    assert fake.last("/v1/chat/completions").body == sent
    assert b'"usage":{' in raw and raw.endswith(b"data: [DONE]\n\n")


def test_upstream_400_on_a_stream_request(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "[[fault:400]]"}],
            stream=True,
        )
    assert caught.value.code == "invalid_value" and caught.value.param == "temperature"


def test_unknown_sdk_extra_body_fields_pass(proxy: Proxy, fake: FakeOpenAI) -> None:
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_body={"my_vendor_option": {"a": 1}}
    )
    assert fake.last("/v1/chat/completions").json()["my_vendor_option"] == {"a": 1}


# ---------------------------------------------------------------- completions


def test_completions(proxy: Proxy) -> None:
    completion = proxy.client().completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    assert completion.choices[0].text == DEFAULT_REPLY
    assert completion.usage is not None and completion.usage.prompt_tokens == 1


def test_completions_stream(proxy: Proxy) -> None:
    client = proxy.client()
    chunks = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    with_usage = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="hi",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4


# ---------------------------------------------------------------- embeddings


def test_embeddings_float(proxy: Proxy, fake: FakeOpenAI) -> None:
    result = proxy.client().embeddings.create(
        model="text-embedding-3-small", input=["a", "b c"], encoding_format="float"
    )
    assert [d.embedding for d in result.data] == [
        embedding_vector("a", EMBEDDING_DIMENSIONS),
        embedding_vector("b c", EMBEDDING_DIMENSIONS),
    ]
    assert fake.last("/v1/embeddings").json()["encoding_format"] == "float"
    assert result.usage.prompt_tokens == 3


def test_embeddings_base64_default(proxy: Proxy, fake: FakeOpenAI) -> None:
    result = proxy.client().embeddings.create(model="text-embedding-3-small", input="a")
    assert fake.last("/v1/embeddings").json()["encoding_format"] == "base64"
    assert result.data[0].embedding == embedding_vector("a", EMBEDDING_DIMENSIONS)


# ---------------------------------------------------------------- images


def test_images_generations(proxy: Proxy) -> None:
    client = proxy.client()
    b64 = client.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert b64.data and b64.data[0].b64_json and b64.data[0].revised_prompt == "a cat"
    urls = client.images.generate(model="dall-e-2", prompt="a cat", n=2, response_format="url")
    assert urls.data and len(urls.data) == 2 and all(d.url for d in urls.data)


def test_images_edits_multipart_intact(proxy: Proxy, fake: FakeOpenAI) -> None:
    edited = proxy.client().images.edit(
        image=("a.png", PNG, "image/png"), prompt="add a hat", model="dall-e-2", n=1
    )
    assert edited.data and edited.data[0].url
    received = fake.last("/v1/images/edits")
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    image = next(part for part in received.parts if part.name == "image")
    assert (image.filename, image.size, image.content_type) == ("a.png", len(PNG), "image/png")
    assert received.form() == {"prompt": "add a hat", "model": "dall-e-2", "n": "1"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_images_variations_multipart_intact(proxy: Proxy, fake: FakeOpenAI) -> None:
    varied = proxy.client().images.create_variation(image=("b.png", PNG, "image/png"), n=2)
    assert varied.data and len(varied.data) == 2
    received = fake.last("/v1/images/variations")
    files = [(p.name, p.filename, p.size) for p in received.parts if p.filename]
    assert files == [("image", "b.png", len(PNG))]
    assert received.form()["n"] == "2"


# ---------------------------------------------------------------- audio


def test_audio_speech_bytes(proxy: Proxy, fake: FakeOpenAI) -> None:
    raw = proxy.client().audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="read this aloud"
    )
    assert raw.headers["content-type"] == "audio/mpeg"
    assert raw.content == fake_mp3("read this aloud")
    assert fake.speech_inputs == ["read this aloud"]


def test_audio_transcriptions_json_and_text(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    assert client.audio.transcriptions.create(file=AUDIO, model="whisper-1").text == TRANSCRIPT
    parts = fake.last("/v1/audio/transcriptions").parts
    assert [(p.name, p.filename, p.size) for p in parts if p.filename] == [
        ("file", "speech.mp3", len(AUDIO[1]))
    ]
    as_text = client.audio.transcriptions.create(
        file=AUDIO, model="whisper-1", response_format="text"
    )
    assert as_text.strip() == TRANSCRIPT
    assert fake.last("/v1/audio/transcriptions").form()["response_format"] == "text"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_audio_translations_json_and_text(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    assert client.audio.translations.create(file=AUDIO, model="whisper-1").text == TRANSCRIPT
    as_text = client.audio.translations.create(
        file=AUDIO, model="whisper-1", response_format="text"
    )
    assert as_text.strip() == TRANSCRIPT
    parts = fake.last("/v1/audio/translations").parts
    assert [(p.name, p.size) for p in parts if p.filename] == [("file", len(AUDIO[1]))]


# ---------------------------------------------------------------- moderations


def test_moderations(proxy: Proxy, fake: FakeOpenAI) -> None:
    result = proxy.client().moderations.create(input=["fine", "I will FLAG:violence you"])
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence
    assert fake.moderation_calls == [["fine", "I will FLAG:violence you"]]


# ---------------------------------------------------------------- models


def test_models_list_comes_from_upstream(proxy: Proxy, fake: FakeOpenAI) -> None:
    ids = [m.id for m in proxy.client().models.list()]
    assert ids == [
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
        "dall-e-2",
        "dall-e-3",
        "omni-moderation-latest",
        "whisper-1",
        "tts-1",
        "ft:gpt-4o:org::abc123",
    ]
    assert fake.count("/v1/models") == 1


def test_models_list_filtered_by_upstream_globs(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(
        upstreams=[
            {
                "name": "openai",
                "base_url": fake.base_url,
                "keys": list(FAKE_KEYS[:2]),
                "models": ["gpt-4o*"],
            }
        ]
    )
    ids = sorted(m.id for m in proxy.client().models.list())
    assert ids == ["gpt-4o", "gpt-4o-mini"]


def test_models_retrieve_outside_the_globs_is_404(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    upstream = {"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:2])}
    proxy = make_proxy(upstreams=[{**upstream, "models": ["gpt-4o*"]}])
    client = proxy.client()
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("whisper-1")
    assert caught.value.code == "model_not_found"
    assert fake.count("/v1/models/whisper-1") == 0


def test_models_retrieve(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    fine_tuned = client.models.retrieve("ft:gpt-4o:org::abc123")
    assert fine_tuned.id == "ft:gpt-4o:org::abc123"
    assert fake.last("/v1/models/ft:gpt-4o:org::abc123").method == "GET"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


# ---------------------------------------------------------------- responses


def test_responses_create(proxy: Proxy, fake: FakeOpenAI) -> None:
    response = proxy.client().responses.create(model="gpt-4o-mini", input="tell me something")
    assert response.output_text == DEFAULT_REPLY
    assert response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == 7
    assert fake.last("/v1/responses").json()["input"] == "tell me something"


def test_responses_stream_events_in_order(proxy: Proxy) -> None:
    events = list(
        proxy.client().responses.create(model="gpt-4o-mini", input="hi there", stream=True)
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == DEFAULT_REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.output_text == DEFAULT_REPLY


def test_responses_sub_routes(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    response = client.responses.create(model="gpt-4o-mini", input="remember me")
    assert client.responses.retrieve(response.id).output_text == DEFAULT_REPLY
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert fake.last(f"/v1/responses/{response.id}/input_items").method == "GET"
    assert client.responses.cancel(response.id).status == "cancelled"
    assert fake.last(f"/v1/responses/{response.id}/cancel").method == "POST"
    client.responses.delete(response.id)
    assert fake.last(f"/v1/responses/{response.id}").method == "DELETE"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_responses_retrieve_stream(proxy: Proxy) -> None:
    client = proxy.client()
    response = client.responses.create(model="gpt-4o-mini", input="again")
    events = list(client.responses.retrieve(response.id, stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
