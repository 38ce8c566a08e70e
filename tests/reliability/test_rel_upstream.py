"""The checklist rows about the upstream and its keys (RELIABILITY.md rows 1-8, 11, 31).

Every test drives a real proxy over real sockets in front of the fake upstream, whose keys are
scripted to fail (`fake.script_key`) or whose answers are faulted by prompt markers.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from chatgpt_proxy.upstream.pool import KeyState, KeyStatus
from fake_openai import DEFAULT_REPLY, FAKE_KEYS, ORGANIZATION, PROJECT, REDIRECT_TARGET, FakeOpenAI
from harness import Proxy

KEY1, KEY2 = FAKE_KEYS[0], FAKE_KEYS[1]
MODEL = "gpt-4o-mini"


def _body(text: str = "hi", *, model: str = MODEL, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def _post(proxy: Proxy, text: str = "hi", *, model: str = MODEL) -> httpx2.Response:
    return proxy.http(follow_redirects=False).post(
        "/v1/chat/completions",
        json=_body(text, model=model),
        headers={"Authorization": f"Bearer {proxy.key}"},
    )


def _chat(client: openai.OpenAI, text: str = "hi", *, model: str = MODEL) -> str | None:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content


def _states(proxy: Proxy) -> dict[str, KeyStatus]:
    return {s.alias: s for s in proxy.state.router.upstreams[0].pool.snapshot()}


def _error(answer: httpx2.Response) -> dict[str, Any]:
    assert answer.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _upstreams(fake: FakeOpenAI, keys: int = 2, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:keys]), **extra}]


# ---------------------------------------------------------------- row 1


@pytest.mark.parametrize(
    ("headers", "cooling"),
    [
        ({"retry-after": "30", "x-ratelimit-reset-requests": "x"}, 30.0),
        ({"retry-after": "soon", "x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({"retry-after": "date", "x-ratelimit-reset-requests": "x"}, 60.0),
    ],
    ids=["retry-after", "x-ratelimit-reset", "http-date"],
)
def test_row_1_a_rate_limited_key_cools_and_another_answers(
    proxy: Proxy, fake: FakeOpenAI, headers: dict[str, str], cooling: float
) -> None:
    """Row 1: a 429 cools the key until its reset; the request succeeds on another key."""
    if headers["retry-after"] == "date":
        headers = {**headers, "retry-after": email.utils.formatdate(time.time() + 60, usegmt=True)}
    fake.script_key(KEY1, "rate_limit", headers=headers)
    assert _chat(proxy.client()) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]
    status = _states(proxy)["openai#1"]
    assert status.state is KeyState.COOLING
    assert status.until is not None and cooling - 5 < status.until <= cooling
    assert _chat(proxy.client()) == DEFAULT_REPLY
    assert fake.keys_used()[2:] == [KEY2]


# ---------------------------------------------------------------- row 2


def test_row_2_every_key_cooling_is_429_with_the_earliest_reset(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 2: every key cooling: a 429 whose retry-after(-ms) is the earliest key reset."""
    fake.script_key(KEY1, "rate_limit", retry_after=45)
    fake.script_key(KEY2, "rate_limit", retry_after=30)
    answer = _post(proxy)
    assert answer.status_code == 429
    assert _error(answer)["code"] == "upstream_rate_limited"
    assert 29_000 < int(answer.headers["retry-after-ms"]) <= 30_000
    assert answer.headers["retry-after"] == "30"
    assert answer.headers["x-should-retry"] == "true"
    assert ORGANIZATION not in answer.text and "Rate limit reached" not in answer.text

    fake.reset()
    fake.script_key(KEY1, "rate_limit", retry_after=900)
    fake.script_key(KEY2, "rate_limit", retry_after=600)
    capped = _post(proxy)  # the keys of the first round are still cooling: no upstream call
    assert fake.count("/v1/chat/completions") == 0
    assert int(capped.headers["retry-after-ms"]) <= 30_000


def test_row_2_the_reset_told_is_capped_at_120_seconds(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 2: a reset beyond 120 s is told as 120 s, so the SDKs still retry."""
    fake.script_key(KEY1, "rate_limit", retry_after=900)
    fake.script_key(KEY2, "rate_limit", retry_after=600)
    answer = _post(proxy)
    assert answer.status_code == 429
    assert (answer.headers["retry-after"], answer.headers["retry-after-ms"]) == ("120", "120000")


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "nan"},
        {"retry-after": "inf"},
        {"retry-after": "-5"},
        {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"},
        {"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"},
        {"retry-after": "\u00e9t\u00e9 prochain"},
        {"retry-after-ms": "nan", "retry-after": "inf"},
        {"retry-after-ms": "-1", "retry-after": "garbage"},
        {"retry-after-ms": "1e999"},
    ],
    ids=["nan", "inf", "negative", "date", "far-date", "garbage", "ms-nan", "ms-neg", "ms-inf"],
)
def test_row_2_odd_retry_after_values_neither_crash_nor_cool_forever(
    proxy: Proxy, fake: FakeOpenAI, headers: dict[str, str]
) -> None:
    """Row 2: whatever an upstream 429 says, the pool cools a key for a bounded time and the
    client gets a 429 with a sound retry-after."""
    odd = {"x-ratelimit-reset-requests": "later", **headers}
    fake.script_key(KEY1, "rate_limit", headers=odd)
    fake.script_key(KEY2, "rate_limit", headers=odd)
    answer = _post(proxy)
    if answer.status_code == 200:  # a date in the past: the key is back at once
        assert headers.get("retry-after", "").endswith("2026 07:28:00 GMT")
        return
    assert answer.status_code == 429
    assert _error(answer)["code"] == "upstream_rate_limited"
    assert 1 <= int(answer.headers["retry-after"]) <= 120
    assert 1 <= int(answer.headers["retry-after-ms"]) <= 120_000
    for status in _states(proxy).values():
        assert status.until is None or 0 < status.until <= 3600


# ---------------------------------------------------------------- row 3


def test_row_3_a_key_out_of_quota_is_retired_and_the_last_one_is_not_retried(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 3: insufficient_quota retires the key (logged by alias) and another key answers;
    with none left, a 429 with x-should-retry: false, which the SDK does not retry."""
    fake.script_key(KEY1, "no_quota")
    assert _chat(proxy.client()) == DEFAULT_REPLY
    status = _states(proxy)["openai#1"]
    assert (status.state, status.reason) == (KeyState.RETIRED, "no_quota")
    assert any("openai#1 retired: no_quota" in line for line in proxy.recorder.log_lines)

    fake.script_key(KEY2, "no_quota")
    before = fake.count("/v1/chat/completions")
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(proxy.client(max_retries=2))
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "upstream_insufficient_quota"
    assert "exceeded your current quota" not in caught.value.response.text
    assert fake.count("/v1/chat/completions") == before + 1  # KEY2, once: no SDK retry


# ---------------------------------------------------------------- row 4


def test_row_4_a_revoked_key_is_retired_by_alias_and_its_message_never_forwarded(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 4: a 401 retires the key, reported by alias; another key answers; upstream's
    message (which holds part of the key) never reaches the client."""
    fake.script_key(KEY1, "invalid")
    assert _chat(proxy.client()) == DEFAULT_REPLY
    status = _states(proxy)["openai#1"]
    assert (status.state, status.reason) == (KeyState.RETIRED, "invalid")
    assert any("openai#1 retired: invalid" in line for line in proxy.recorder.log_lines)

    fake.script_key(KEY2, "invalid")
    answer = _post(proxy)
    assert answer.status_code == 503
    assert _error(answer)["code"] == "no_upstream_keys"
    assert answer.headers["x-should-retry"] == "false"
    assert "Incorrect API key" not in answer.text and "sk-" not in answer.text


# ---------------------------------------------------------------- row 5


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("forbidden", 403, "permission_denied"), ("model_not_found", 404, "model_not_found")],
)
def test_row_5_a_key_refusing_a_model_is_passed_over_for_it(
    proxy: Proxy, fake: FakeOpenAI, fault: Any, status: int, code: str
) -> None:
    """Row 5: a 403 or model_not_found from one key bars that key from the model and another
    key answers; when every key refuses, a sanitized 403/404 the SDK does not retry."""
    fake.script_key(KEY1, fault)
    client = proxy.client()
    assert _chat(client) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]
    for _ in range(3):
        assert _chat(client) == DEFAULT_REPLY
    assert fake.keys_used()[2:] == [KEY2] * 3  # barred from this model
    fake.clear_script(KEY1)  # the account has this one
    assert _chat(client, model="gpt-4o") == DEFAULT_REPLY
    assert fake.keys_used()[-1] == KEY1  # not from the others
    assert {s.state for s in _states(proxy).values()} == {KeyState.ACTIVE}

    fake.script_key(KEY1, fault)
    fake.script_key(KEY2, fault)
    answer = _post(proxy, model="gpt-4.1")
    assert answer.status_code == status
    error = _error(answer)
    assert (error["code"], error["param"]) == (code, "model")
    assert answer.headers["x-should-retry"] == "false"
    for leak in (ORGANIZATION, PROJECT, "Project", "openai#"):
        assert leak not in answer.text
    before = fake.count("/v1/chat/completions")
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(proxy.client(max_retries=2), model="gpt-4.1")
    assert caught.value.status_code == status
    assert fake.count("/v1/chat/completions") == before  # known now: no upstream call at all


def test_row_5_a_model_lookup_that_finds_nothing_is_answered_as_is(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 5: GET /v1/models/{id} asks whether the model exists: its 404 is the answer."""
    with pytest.raises(openai.NotFoundError):
        proxy.client().models.retrieve("gpt-9")
    assert fake.count("/v1/models/gpt-9") == 1


# ---------------------------------------------------------------- row 6


@pytest.mark.parametrize("marker", ["400", "422"])
def test_row_6_the_clients_mistake_is_passed_through_scrubbed(
    proxy: Proxy, fake: FakeOpenAI, marker: str
) -> None:
    """Row 6: an upstream 400 or 422 is passed through (org ids scrubbed), not retried, and
    no fault of the key's."""
    for _ in range(6):  # more than eject_after
        answer = _post(proxy, f"[[fault:{marker}]]")
        assert answer.status_code == int(marker)
        assert _error(answer)["type"] == "invalid_request_error"
        assert ORGANIZATION not in answer.text
    assert fake.count("/v1/chat/completions") == 6
    for status in _states(proxy).values():
        assert status.state is KeyState.ACTIVE and status.failures == 0


# ---------------------------------------------------------------- row 7


def test_row_7_a_failing_key_is_retried_elsewhere_and_ejected_after_five(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 7: a 5xx is retried on another key; 5 failures in a row eject the key for 30 s."""
    proxy = make_proxy(retries={"client_retry_after": 0.01})
    fake.script_key(KEY1, "unavailable")
    client = proxy.client(max_retries=2)
    for _ in range(6):
        assert _chat(client) == DEFAULT_REPLY
    key1 = [r for r in fake.requests if r.key == KEY1]
    assert len(key1) == 5
    status = _states(proxy)["openai#1"]
    assert status.state is KeyState.EJECTED
    assert status.until is not None and 25 < status.until <= 30
    assert fake.keys_used()[-1] == KEY2


def test_row_7_ejection_never_takes_the_whole_pool_out(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 7: every key failing: at most max_ejected_share of them is ejected; every request
    still reaches the upstream and ends in a 502 that asks for a spaced retry."""
    proxy = make_proxy(upstreams=_upstreams(fake, keys=4), pool={"eject_after": 2})
    for n in range(1, 13):
        answer = _post(proxy, "[[fault:500]]")
        assert answer.status_code == 502
        assert _error(answer)["code"] == "upstream_error"
        assert answer.headers["x-should-retry"] == "true"
        assert answer.headers["retry-after"] == "1"
        assert fake.count("/v1/chat/completions") >= n
    states = [s.state for s in _states(proxy).values()]
    assert states.count(KeyState.EJECTED) == 2  # half of four
    assert "Sorry about that" not in answer.text


@pytest.mark.parametrize("failure", ["refused", "tls"])
def test_row_7_an_unreachable_upstream_is_502_after_bounded_tries(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, failure: str
) -> None:
    """Row 7: a connect or TLS failure is retried within the budget, then a 502."""
    if failure == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        base_url = f"http://127.0.0.1:{port}/v1"
    else:
        base_url = fake.base_url.replace("http://", "https://")
    upstream = {"name": "openai", "base_url": base_url, "keys": list(FAKE_KEYS[:3])}
    proxy = make_proxy(upstreams=[upstream])
    answer = _post(proxy)
    assert answer.status_code == 502
    assert _error(answer)["code"] == "upstream_error"
    assert answer.headers["x-should-retry"] == "true"
    assert int(answer.headers["retry-after-ms"]) >= 1


# ---------------------------------------------------------------- row 8


def test_row_8_a_non_streamed_call_times_out_before_the_sdk_gives_up(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    """Row 8: the first-byte deadline honours x-stainless-read-timeout minus a margin: the SDK
    gets a 504 instead of timing out blind."""
    client = proxy.client(timeout=2.5)
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, "[[fault:hang]]")
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert proxy.state.settings.timeouts.first_byte == 600  # the client's limit was shorter


def test_row_8_the_configured_limit_bounds_a_patient_client(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 8: a client that would wait 600 s waits no longer than timeouts.first_byte."""
    proxy = make_proxy(timeouts={"first_byte": 0.4})
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(proxy.client(timeout=600), "[[fault:hang]]")
    assert caught.value.status_code == 504


def test_row_8_a_stream_has_its_own_shorter_first_byte_timeout(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 8: a streamed call waits stream_first_byte for its headers, not first_byte."""
    proxy = make_proxy(timeouts={"stream_first_byte": 0.3})
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[[fault:hang]]"}], stream=True
        )
    assert caught.value.status_code == 504
    assert fake.count("/v1/chat/completions") == 2  # each key once


def test_row_8_a_client_slow_to_read_a_stream_is_not_blamed_on_the_key(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    """Row 8: while the proxy is held up writing to a slow reader it does not read its
    upstream; that time is not the upstream's silence: the stream ends whole, no key fails."""
    idle = 0.3
    proxy = make_proxy(timeouts={"stream_idle": idle})
    body = httpx2.Request(
        "POST", "http://x/", json=_body("[[fault:long:40000]]", stream=True)
    ).content
    host, port = proxy.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {proxy.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request)
        received = [sock.recv(1024)]
        assert fake.wait_for_requests(1, path="/v1/chat/completions")
        # The slow reader itself: many idle periods without reading while the answer
        # (megabytes) waits in full buffers.
        time.sleep(idle * 6)
        sock.settimeout(30)
        while chunk := sock.recv(65536):
            received.append(chunk)
    answer = b"".join(received)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in answer
    assert b'"error"' not in answer
    assert _states(proxy)["openai#1"].failures == 0


# ---------------------------------------------------------------- row 11


@pytest.mark.parametrize("fault", ["html", "plain", "garbage", "redirect"])
def test_row_11_a_2xx_that_is_not_json_or_a_redirect_is_502_and_never_relayed(
    proxy: Proxy, fake: FakeOpenAI, fault: str
) -> None:
    """Row 11: a 2xx HTML, text or garbage where JSON belongs, or a 3xx: 502, nothing of that
    body forwarded, no redirect followed."""
    answer = _post(proxy, f"[[fault:{fault}]]")
    assert answer.status_code == 502
    assert _error(answer)["code"] == "upstream_error"
    assert "location" not in answer.headers
    for fragment in ("<html", "upstream says", "not json", "evil", REDIRECT_TARGET, "169.254"):
        assert fragment not in answer.text
    assert all(r.path == "/v1/chat/completions" for r in fake.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(proxy.client(), f"[[fault:{fault}]]")
    assert caught.value.status_code == 502


@pytest.mark.parametrize("fault", ["plain", "garbage"])
def test_row_11_one_key_answering_garbage_is_retried_on_another(
    proxy: Proxy, fake: FakeOpenAI, fault: Any
) -> None:
    """Row 11: such an answer is the key's upstream failing: another key answers."""
    fake.script_key(KEY1, fault, times=1)
    assert _chat(proxy.client()) == DEFAULT_REPLY
    assert fake.keys_used() == [KEY1, KEY2]


def test_row_11_audio_answers_keep_their_own_types(proxy: Proxy, fake: FakeOpenAI) -> None:
    """Row 11: endpoints that answer text or audio are not held to JSON."""
    client = proxy.client()
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert speech.content
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", b"ID3fake"), response_format="text"
    )
    assert "Hello from fake audio." in str(text)


# ---------------------------------------------------------------- row 31


@pytest.mark.parametrize("keys", [2, 4], ids=["defaults", "four-keys-never-ejected"])
def test_row_31_an_upstream_down_for_good_gets_bounded_attempts(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, keys: int
) -> None:
    """Row 31: every request 503: upstream attempts stay within (1 + budget) x the requests
    the proxy receives (the SDK's own 3 attempts each counted), plus the budget's floor of 3;
    every final error carries x-should-retry and retry-after. With four keys never ejected,
    only the retry budget holds the attempts back (4 per request without it)."""
    overrides: dict[str, Any] = {"retries": {"client_retry_after": 0.01, "max_attempts": keys}}
    if keys == 4:
        overrides |= {"upstreams": _upstreams(fake, keys=4), "pool": {"eject_after": 1000}}
    proxy = make_proxy(**overrides)
    received: list[httpx2.Request] = []
    http = proxy.http(event_hooks={"request": [received.append]})
    client = openai.OpenAI(
        base_url=proxy.url + "/v1", api_key=proxy.key, http_client=http, max_retries=2
    )
    calls = 20
    for _ in range(calls):
        with pytest.raises(openai.InternalServerError) as caught:
            _chat(client, "[[fault:503]]")
        headers = caught.value.response.headers
        assert headers["x-should-retry"] == "true"
        assert headers["retry-after-ms"] == "10"
    requests = len(received)
    assert requests == 3 * calls  # the SDK retried, as told
    attempts = fake.count("/v1/chat/completions")
    settings = proxy.state.settings.retries
    assert attempts <= (1 + settings.budget_ratio) * requests + settings.budget_min
    assert attempts >= requests  # every request went upstream: the pool stayed in play
