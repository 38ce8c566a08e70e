"""The fake OpenAI upstream, driven directly by the official SDK (no proxy in between)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest
from aiohttp import web
from openai import Stream
from openai.types import ModerationMultiModalInputParam
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from fake_openai import (
    AZURE_API_VERSION,
    DEFAULT_REPLY,
    DEPLOYMENTS,
    FAKE_KEYS,
    ORGANIZATION,
    REALTIME_REPLY,
    REDIRECT_TARGET,
    TRANSCRIPT,
    FakeOpenAI,
    KeyFault,
    mask_key,
)
from servers import BackgroundLoop

KEY = FAKE_KEYS[0]
OTHER_KEY = FAKE_KEYS[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def chat(client: openai.OpenAI, text: str) -> ChatCompletion:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )


def chat_stream(
    client: openai.OpenAI, text: str, *, include_usage: bool = False
) -> Stream[ChatCompletionChunk]:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True} if include_usage else openai.omit,
    )


def reply_of(client: openai.OpenAI, text: str = "hi") -> str | None:
    return chat(client, text).choices[0].message.content


# ---------------------------------------------------------------- chat completions


def test_chat_completion_and_openai_headers(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "say hello please"}]},
        ],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert completion.usage.total_tokens == 9
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["openai-organization"] == ORGANIZATION
    assert raw.headers["openai-project"] == "proj_FAKEPROJ"
    assert raw.headers["openai-version"] == "2020-10-01"
    assert int(raw.headers["openai-processing-ms"]) >= 1
    assert raw.headers["x-ratelimit-reset-requests"] == "1s"
    assert "x-ratelimit-remaining-requests" in raw.headers

    received = fake.last("/v1/chat/completions")
    assert received.method == "POST"
    assert received.key == KEY
    assert received.headers["authorization"] == f"Bearer {KEY}"
    assert received.json()["model"] == "gpt-4o-mini"


def test_chat_stream(client: openai.OpenAI) -> None:
    chunks = list(chat_stream(client, "hi"))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(chat_stream(client, "one two three", include_usage=True))
    *content, last = chunks
    assert all(c.usage is None and len(c.choices) == 1 for c in content)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert "".join(c.choices[0].delta.content or "" for c in content) == DEFAULT_REPLY


def test_reply_text_is_configurable(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.reply_text = "Custom words here"
    assert reply_of(client, "x") == "Custom words here"


# ---------------------------------------------------------------- legacy completions


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert completion.choices[0].text == DEFAULT_REPLY
    assert completion.usage is not None and completion.usage.prompt_tokens == 2

    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="say hi",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


# ---------------------------------------------------------------- embeddings


def test_embeddings_base64_by_default_and_float(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    decoded = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert fake.last("/v1/embeddings").json()["encoding_format"] == "base64"
    assert [len(d.embedding) for d in decoded.data] == [8, 8]
    assert all(isinstance(x, float) for x in decoded.data[0].embedding)
    assert decoded.usage.prompt_tokens == 3

    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b c"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [d.embedding for d in decoded.data]
    assert decoded.data[0].embedding != decoded.data[1].embedding


# ---------------------------------------------------------------- images


def test_image_generation(client: openai.OpenAI) -> None:
    b64 = client.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert b64.data and b64.data[0].b64_json
    url = client.images.generate(model="dall-e-2", prompt="a cat", n=2, response_format="url")
    assert url.data and len(url.data) == 2 and url.data[0].url


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_variation (dall-e-2 only)
def test_image_edit_and_variation_are_multipart(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    edited = client.images.edit(
        image=("a.png", PNG, "image/png"), prompt="add a hat", model="dall-e-2", n=1
    )
    assert edited.data and edited.data[0].url
    received = fake.last("/v1/images/edits")
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    image = next(part for part in received.parts if part.name == "image")
    assert (image.filename, image.size, image.content_type) == ("a.png", len(PNG), "image/png")
    assert received.form()["prompt"] == "add a hat"

    varied = client.images.create_variation(image=("b.png", PNG, "image/png"), n=2)
    assert varied.data and len(varied.data) == 2
    assert [p.filename for p in fake.last("/v1/images/variations").parts if p.filename] == ["b.png"]


# ---------------------------------------------------------------- moderations


def test_moderation_flags_markers(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    single = client.moderations.create(input="I will FLAG:violence you")
    result = single.results[0]
    assert result.flagged
    assert result.categories.violence and not result.categories.hate
    assert result.category_scores.violence == 0.9 and result.category_scores.hate == 0.01
    assert result.category_applied_input_types.violence == ["text"]

    many = client.moderations.create(input=["fine", "FLAG:hate and FLAG:self-harm"])
    assert [r.flagged for r in many.results] == [False, True]
    assert many.results[1].categories.self_harm and many.results[1].categories.hate

    parts: list[ModerationMultiModalInputParam] = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x.invalid/FLAG:sexual.png"}},
    ]
    multimodal = client.moderations.create(model="omni-moderation-latest", input=parts)
    assert len(multimodal.results) == 1 and multimodal.results[0].categories.sexual
    assert multimodal.results[0].category_applied_input_types.sexual == ["text", "image"]

    assert fake.moderation_calls == [
        ["I will FLAG:violence you"],
        ["fine", "FLAG:hate and FLAG:self-harm"],
        [parts],
    ]


def test_moderation_down_and_slow(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.moderation_down = True
    with pytest.raises(openai.InternalServerError):
        client.moderations.create(input="hello")
    fake.moderation_down = False
    fake.moderation_delay = 0.3
    started = time.monotonic()
    assert not client.moderations.create(input="hello").results[0].flagged
    assert time.monotonic() - started >= 0.3


def test_moderation_ignores_fault_markers(client: openai.OpenAI) -> None:
    assert not client.moderations.create(input="[[fault:500]]").results[0].flagged


# ---------------------------------------------------------------- models


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "dall-e-3"} <= set(ids)
    assert {"omni-moderation-latest", "whisper-1", "tts-1", "ft:gpt-4o:org::abc123"} <= set(ids)
    assert client.models.retrieve("ft:gpt-4o:org::abc123").id == "ft:gpt-4o:org::abc123"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


# ---------------------------------------------------------------- responses


def test_responses_create_and_sub_routes(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="tell me something")
    assert response.output_text == DEFAULT_REPLY
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 4)
    assert response.usage.total_tokens == 7

    assert client.responses.retrieve(response.id).output_text == DEFAULT_REPLY
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    assert client.responses.cancel(response.id).status == "cancelled"
    follow_up = client.responses.create(
        model="gpt-4o-mini", input="more", previous_response_id=response.id
    )
    assert follow_up.previous_response_id == response.id
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:  # as OpenAI says it, in a body
        client.responses.create(model="gpt-4o-mini", input="x", previous_response_id=response.id)
    assert caught.value.code == "previous_response_not_found"


def test_responses_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o-mini", input="hi there", stream=True))
    assert [event.type for event in events] == [
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
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_REPLY and len(deltas) == 4
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 4
    assert completed.response.output_text == DEFAULT_REPLY


# ---------------------------------------------------------------- audio


def test_speech(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="read this aloud"
    )
    assert raw.headers["content-type"] == "audio/mpeg"
    audio = raw.content
    assert audio.startswith(b"ID3") and len(audio) > 1000
    assert fake.speech_inputs == ["read this aloud"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audio.translations
def test_transcription_and_translation(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    audio = ("speech.mp3", b"ID3" + b"\x00" * 500, "audio/mpeg")
    as_json = client.audio.transcriptions.create(file=audio, model="whisper-1")
    assert as_json.text == TRANSCRIPT
    as_text = client.audio.transcriptions.create(
        file=audio, model="whisper-1", response_format="text"
    )
    assert as_text.strip() == TRANSCRIPT
    parts = fake.last("/v1/audio/transcriptions").parts
    assert [(p.name, p.filename, p.size) for p in parts if p.filename] == [
        ("file", "speech.mp3", 503)
    ]
    assert client.audio.translations.create(file=audio, model="whisper-1").text == TRANSCRIPT


# ---------------------------------------------------------------- auth


def test_unknown_key_is_rejected_with_a_masked_echo(fake: FakeOpenAI) -> None:
    wrong = "sk-abcdefghijklmnopqrstuvwxyz"
    with (
        openai.OpenAI(base_url=fake.base_url, api_key=wrong, max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        chat(bad, "hi")
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"
    assert mask_key(wrong) in caught.value.message and wrong not in caught.value.message
    assert fake.keys_used() == [wrong]


def test_revoked_key(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.revoke_key(KEY)
    with pytest.raises(openai.AuthenticationError):
        chat(client, "hi")
    fake.reset()
    assert reply_of(client) == DEFAULT_REPLY


# ---------------------------------------------------------------- per-key faults


def test_key_rate_limit_for_n_requests(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script_key(KEY, "rate_limit", times=2, retry_after=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client, "hi")
        assert caught.value.code == "rate_limit_exceeded"
        assert ORGANIZATION in caught.value.message
        assert caught.value.response.headers["retry-after"] == "2"
        assert caught.value.response.headers["x-ratelimit-reset-requests"] == "2s"
    assert reply_of(client) == DEFAULT_REPLY


def test_key_limits_are_told_and_enforced(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.limit_key(KEY, requests=2, tokens=10_000, window=60)
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100
    )
    told = first.headers
    assert (told["x-ratelimit-limit-requests"], told["x-ratelimit-remaining-requests"]) == (
        "2",
        "1",
    )
    assert told["x-ratelimit-reset-requests"].endswith("s")  # a Go duration: "29.999s"
    assert told["x-ratelimit-limit-tokens"] == "10000"
    assert 9_800 < int(told["x-ratelimit-remaining-tokens"]) <= 9_900  # the body / 4 + max_tokens
    assert reply_of(client) == DEFAULT_REPLY
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, "hi")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1." in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 29_000 < int(caught.value.response.headers["retry-after-ms"]) <= 30_000
    assert fake.limited(KEY) == 1 and fake.limited() == 1 and fake.limited(OTHER_KEY) == 0
    fake.reset()
    assert reply_of(client) == DEFAULT_REPLY


def test_a_token_limit_refuses_a_request_too_large(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.limit_key(KEY, requests=100, tokens=50, window=60)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=64
        )
    assert caught.value.type == "tokens"
    assert "on tokens per min (TPM): Limit 50, Used 0, Requested" in caught.value.message


def test_key_faults_only_touch_their_key(fake: FakeOpenAI) -> None:
    fake.script_key(KEY, "no_quota")
    with openai.OpenAI(base_url=fake.base_url, api_key=OTHER_KEY, max_retries=0) as other:
        assert reply_of(other) == DEFAULT_REPLY
    with openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0) as scripted:
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as caught:
                chat(scripted, "hi")
            assert caught.value.code == "insufficient_quota"
            assert caught.value.type == "insufficient_quota"
    assert fake.keys_used() == [OTHER_KEY, KEY, KEY, KEY]


@pytest.mark.parametrize(
    ("fault", "error"),
    [("invalid", openai.AuthenticationError), ("server_error", openai.InternalServerError)],
)
def test_key_error_faults(
    client: openai.OpenAI, fake: FakeOpenAI, fault: KeyFault, error: type[Exception]
) -> None:
    fake.script_key(KEY, fault, times=1)
    with pytest.raises(error):
        chat(client, "hi")
    assert reply_of(client) == DEFAULT_REPLY


def test_key_hang_and_disconnect_detection(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script_key(KEY, "hang", times=1)
    with pytest.raises(openai.APITimeoutError):
        chat(client.with_options(timeout=0.3), "hi")
    # A hang never ends by itself: any disconnect seen is the client's leaving.
    assert fake.wait_for_disconnect(timeout=10) is not None
    assert fake.disconnects[0][0] == "/v1/chat/completions"


def test_key_html_and_redirect(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script_key(KEY, "html", times=1)
    page: object = chat(client, "hi")  # the SDK hands back non-JSON bodies as text
    assert isinstance(page, str) and "<html>" in page and KEY in page

    fake.script_key(KEY, "redirect", times=1)
    answer = httpx2.post(
        fake.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "gpt-4o-mini", "messages": []},
        follow_redirects=False,
    )
    assert answer.status_code == 302
    assert answer.headers["location"] == REDIRECT_TARGET


def test_unknown_key_fault_is_refused(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError):
        fake.script_key(KEY, "explode")  # type: ignore[arg-type]


# ---------------------------------------------------------------- prompt markers


@pytest.mark.parametrize(
    ("marker", "error", "code"),
    [
        ("500", openai.InternalServerError, None),
        ("429", openai.RateLimitError, "rate_limit_exceeded"),
        ("400", openai.BadRequestError, "invalid_value"),
    ],
)
def test_prompt_error_markers(
    client: openai.OpenAI, marker: str, error: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(error) as caught:
        chat(client, f"hello [[fault:{marker}]]")
    assert caught.value.code == code
    if marker == "400":
        assert caught.value.param == "temperature"


def test_prompt_markers_apply_to_every_endpoint(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-4o-mini", input="x [[fault:500]]")
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="text-embedding-3-small", input="x [[fault:500]]")
    with pytest.raises(openai.RateLimitError):
        client.images.edit(image=("a.png", PNG, "image/png"), prompt="[[fault:429]]")


def test_prompt_hang(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        chat_stream(client.with_options(timeout=0.3), "[[fault:hang]]")
    assert fake.wait_for_disconnect(timeout=10) is not None


def test_prompt_html_and_redirect(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    assert "<html>" in str(client.completions.create(model="m", prompt="[[fault:html]]"))
    answer = httpx2.post(
        fake.base_url + "/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "m", "prompt": "[[fault:redirect]]"},
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (302, REDIRECT_TARGET)


def test_slow_stream_and_slow_answer(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stamps = []
    for _chunk in chat_stream(client, "[[fault:slow:0.1]]"):
        stamps.append(time.monotonic() - started)
    assert len(stamps) == 6 and stamps[-1] >= 0.6
    assert stamps[1] - stamps[0] >= 0.08

    started = time.monotonic()
    chat(client, "[[fault:slow:0.3]]")
    assert time.monotonic() - started >= 0.3


def test_cut_stream_breaks_mid_iteration(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    received: list[str | None] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat_stream(client, "go [[fault:cut:3]]"):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", " from"]
    assert fake.disconnects == []  # the fake cut it: not a client disconnect


def test_cut_responses_stream_and_non_stream(client: openai.OpenAI) -> None:
    kinds: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(model="m", input="[[fault:cut:2]]", stream=True):
            kinds.append(event.type)
    assert kinds == ["response.created", "response.in_progress"]
    with pytest.raises(openai.APIConnectionError):
        chat(client, "[[fault:cut:10]]")


def test_long_reply(client: openai.OpenAI) -> None:
    completion = chat(client, "[[fault:long:50]]")
    assert len((completion.choices[0].message.content or "").split()) == 50
    assert completion.usage is not None and completion.usage.completion_tokens == 50
    chunks = list(chat_stream(client, "[[fault:long:20]]"))
    assert len(chunks) == 22


def test_markers_combine_and_bad_markers_are_400(client: openai.OpenAI) -> None:
    chunks = list(chat_stream(client, "[[fault:long:3]] [[fault:slow:0.01]]"))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "word0 word1 word2"
    with pytest.raises(openai.BadRequestError):
        chat(client, "[[fault:explode]]")
    with pytest.raises(openai.BadRequestError):
        chat(client, "[[fault:slow:soon]]")


# ---------------------------------------------------------------- disconnects while streaming


def test_client_leaving_a_stream_is_recorded(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    stream = chat_stream(client, "[[fault:slow:0.2]] [[fault:long:100]]")
    next(stream)
    stream.close()
    # The stream would run 20 s and end whole: a disconnect within 10 s is the client leaving.
    assert fake.wait_for_disconnect(timeout=10, path="/v1/chat/completions") is not None


def test_wait_for_disconnect_times_out(fake: FakeOpenAI) -> None:
    started = time.monotonic()
    assert fake.wait_for_disconnect(timeout=0.2) is None
    assert time.monotonic() - started >= 0.2


def test_wait_for_requests_across_threads(fake: FakeOpenAI) -> None:
    def later() -> None:
        time.sleep(0.1)  # the point: the request arrives while the test is already waiting
        with openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0) as c:
            chat(c, "hi")

    thread = threading.Thread(target=later)
    thread.start()
    assert fake.wait_for_requests(1, path="/chat/completions", timeout=5)
    thread.join()


# ---------------------------------------------------------------- recording and routes


def test_recording_and_reset(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    chat(client, "hi")
    client.models.list()
    assert fake.count("/v1/chat/completions") == 1
    assert fake.count("/chat/completions") == 1
    assert fake.count("/v1/models") == 1
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
    assert fake.requests[1].method == "GET" and fake.requests[1].body == b""
    fake.script_key(KEY, "server_error")
    fake.reset()
    assert fake.requests == [] and fake.keys_used() == []
    assert reply_of(client) == DEFAULT_REPLY


def test_unknown_route_is_an_openai_404(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    answer = httpx2.get(fake.base_url + "/nope", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "Invalid URL (GET /v1/nope)"


# ---------------------------------------------------------------- BackgroundLoop


def test_background_loop_serves_and_stops_apps(background_loop: BackgroundLoop) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    url = background_loop.start_app(app)
    assert httpx2.get(url).text == "hi"

    async def add(a: int, b: int) -> int:
        return a + b

    assert background_loop.run(add(1, 2)) == 3
    background_loop.stop_app(url)
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url)


def test_echo_key_marker_is_a_401_holding_the_whole_key(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client, "[[fault:echo_key]]")
    assert KEY in caught.value.message
    assert caught.value.code == "invalid_api_key"


def test_open_requests_counts_streams_until_they_end(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    assert fake.open_requests == 0
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[fault:slow:0.2]]"}],
        stream=True,
    )
    next(iter(stream))
    assert fake.open_requests == 1
    for _ in stream:
        pass
    assert fake.wait_for_open_requests(0)
    assert fake.open_requests == 0


def test_azure_shape_as_the_sdks_azure_client_speaks_it(fake: FakeOpenAI) -> None:
    """The SDK's own Azure client is the reference for the fake's Azure shape."""
    deployment = next(name for name, model in DEPLOYMENTS.items() if model == "gpt-4o")
    with openai.AzureOpenAI(
        azure_endpoint=fake.url or "",
        api_key=KEY,
        api_version=AZURE_API_VERSION,
        max_retries=0,
    ) as azure:
        reply = azure.chat.completions.create(
            model=deployment, messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.model == "gpt-4o"
    sent = fake.last()
    assert sent.path == f"/openai/deployments/{deployment}/chat/completions"
    assert sent.headers["api-key"] == KEY and sent.query["api-version"] == AZURE_API_VERSION


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("", {"api-key": KEY}, 400),  # no api-version
        (f"?api-version={AZURE_API_VERSION}", {"Authorization": f"Bearer {KEY}"}, 401),
    ],
)
def test_azure_shape_needs_its_api_version_and_api_key(
    fake: FakeOpenAI, query: str, headers: dict[str, str], status: int
) -> None:
    url = f"{fake.url}/openai/deployments/gpt4o-deployment/chat/completions{query}"
    answer = httpx2.post(url, json={"messages": []}, headers=headers)
    assert answer.status_code == status


@pytest.fixture
def quiet_websockets() -> Iterator[None]:
    """The websockets client logs its handshake's headers at DEBUG: here that is the upstream
    key this test sends the fake itself, which the session's leak scan must not mistake for
    the proxy's."""
    logger = logging.getLogger("websockets")
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(previous)


@pytest.mark.usefixtures("quiet_websockets")
def test_realtime_session_echoes_text_with_usage(fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "yo"}],
            }
        )
        connection.response.create()
        events = []
        while not events or events[-1].type != "response.done":
            events.append(connection.recv())
    done = events[-1]
    assert done.type == "response.done" and done.response.usage is not None
    assert done.response.usage.total_tokens == 1 + len((REALTIME_REPLY + "yo").split())
    (session,) = fake.realtime_sessions
    assert session.key == KEY and session.texts() == ["yo"]
