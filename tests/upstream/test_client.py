"""The upstream client's decisions, driven through the fake transport: no socket, no upstream.

Retries on another key, cooldowns, ejection, per-model barring, the limits each attempt is
given, and how each transport failure and each upstream answer is mapped. The same behaviour
over real sockets is in ``tests/reliability/test_rel_upstream.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import (
    BrokenBody,
    ConnectFailed,
    NoUpstreamKeys,
    PermissionDenied,
    ProxyError,
    ResourceUnavailable,
    TransportError,
    TransportTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.upstream.client import Outbound, Reply, UpstreamClient
from chatgpt_proxy.upstream.fake_transport import JSON, SSE, Answer, FakeTransport, Step
from chatgpt_proxy.upstream.idle import IdleWatch
from chatgpt_proxy.upstream.pool import KeyState
from chatgpt_proxy.upstream.router import Router, Upstream
from chatgpt_proxy.upstream.transport import Timeouts, TransportRequest

T = TypeVar("T")
SECRETS = ["sk-test-one-0001", "sk-test-two-0002", "sk-test-three-0003"]
BASE_URL = "http://upstream.invalid/v1"
OK = Answer(200, JSON, [b'{"id": "chatcmpl-1", "object": "chat.completion"}'])
BODY = orjson.dumps({"model": "gpt-4o", "messages": []})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    """A client over a fake transport, one upstream of three keys, a clock that moves on demand."""

    def __init__(
        self,
        *steps: Step,
        retries: dict[str, Any] | None = None,
        pool: dict[str, Any] | None = None,
        timeouts: dict[str, Any] | None = None,
        idle: IdleWatch | None = None,
    ) -> None:
        self.settings = Settings.model_validate(
            {
                "upstreams": [{"name": "openai", "base_url": BASE_URL, "keys": SECRETS}],
                "retries": {"backoff_base": 0.0, "backoff_max": 0.0, **(retries or {})},
                "pool": pool or {},
                "timeouts": timeouts or {},
            }
        )
        self.clock = Clock()
        self.router = Router.from_settings(
            self.settings.upstreams, self.settings.pool, clock=self.clock, rng=random.Random(0)
        )
        self.upstream: Upstream = self.router.upstreams[0]
        self.transport = FakeTransport(*steps)
        self.client = UpstreamClient(
            self.transport,
            self.settings.timeouts,
            self.settings.retries,
            clock=self.clock,
            rng=random.Random(0),
            idle=idle,
        )

    async def send(self, outbound: Outbound | None = None) -> Reply:
        return await self.client.send(self.upstream, outbound or chat())

    def state(self, index: int) -> KeyState:
        return self.upstream.pool.snapshot()[index].state

    def keys_tried(self) -> list[str]:
        return [secret_of(request) for request in self.transport.requests]

    def inflight(self) -> int:
        return sum(key.inflight for key in self.upstream.pool.keys())


def chat(
    *,
    stream: bool = False,
    body: Any = BODY,
    headers: dict[str, str] | None = None,
    holder_key: str | None = None,
    model: str | None = "gpt-4o",
) -> Outbound:
    return Outbound(
        "POST",
        "/chat/completions",
        "",
        CIMultiDictProxy(CIMultiDict(headers or {"Content-Type": "application/json"})),
        body,
        stream=stream,
        holder_key=holder_key,
        model=model,
    )


def secret_of(request: TransportRequest) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


def error(status: int, code: str | None = None, **headers: str) -> Answer:
    body = orjson.dumps({"error": {"message": "no", "type": "x", "param": None, "code": code}})
    return Answer(status, {**JSON, **headers}, [body])


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def whole(reply: Reply) -> bytes:
    try:
        return await reply.read()
    finally:
        reply.close()


# --- answers relayed --------------------------------------------------------------------


def test_a_success_is_handed_on_whole_with_the_keys_authorization() -> None:
    setup = Setup(OK)
    reply = run(setup.send())
    assert reply.response.status == 200 and reply.attempts == 1
    assert run(whole(reply)) == b'{"id": "chatcmpl-1", "object": "chat.completion"}'
    request = setup.transport.requests[0]
    assert request.method == "POST" and request.url == BASE_URL + "/chat/completions"
    assert secret_of(request) == SECRETS[0] and request.body == BODY
    assert setup.transport.responses[0].released and setup.inflight() == 0


def test_the_query_is_kept_on_the_url() -> None:
    setup = Setup(OK)
    outbound = Outbound("GET", "/models", "limit=2&after=x", CIMultiDictProxy(CIMultiDict()))
    run(whole(run(setup.send(outbound))))
    assert setup.transport.requests[0].url == BASE_URL + "/models?limit=2&after=x"


@pytest.mark.parametrize("status", [400, 404, 422])
def test_the_clients_own_mistake_is_passed_through_without_retry_or_penalty(status: int) -> None:
    setup = Setup(error(status, "invalid_value"))
    reply = run(setup.send(chat(model=None)))
    assert reply.response.status == status
    assert b"invalid_value" in run(whole(reply))
    assert len(setup.transport.requests) == 1
    assert setup.upstream.pool.keys()[0].consecutive_failures == 0


def test_a_closed_reply_that_broke_drops_its_connection() -> None:
    setup = Setup(Answer(200, SSE, [b"data: 1\n\n"]))
    reply = run(setup.send(chat(stream=True)))
    reply.close(broken=True)
    reply.close()  # a second close changes nothing
    response = setup.transport.responses[0]
    assert response.closed and not response.released and setup.inflight() == 0


# --- failures tied to a key: another key at once ----------------------------------------


def test_a_429_cools_the_key_until_its_reset_and_another_answers() -> None:
    setup = Setup(error(429, "rate_limit_exceeded", **{"retry-after": "30"}), OK)
    reply = run(setup.send())
    assert reply.response.status == 200 and reply.attempts == 2
    assert setup.keys_tried() == SECRETS[:2]
    status = setup.upstream.pool.snapshot()[0]
    assert status.state is KeyState.COOLING
    setup.clock.now += 31
    assert setup.state(0) is KeyState.ACTIVE


def test_every_key_cooling_is_a_429_with_the_earliest_reset() -> None:
    limited = [error(429, "rate_limit_exceeded", **{"retry-after": str(s)}) for s in (30, 5, 60)]
    setup = Setup(*limited)
    with pytest.raises(UpstreamRateLimited) as caught:
        run(setup.send())
    assert caught.value.status == 429
    assert caught.value.headers["retry-after"] == "5"
    assert len(setup.transport.requests) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(error(429, "insufficient_quota"), "no_quota"), (error(401, "invalid_api_key"), "invalid")],
)
def test_a_dead_key_is_retired_and_the_next_key_answers(answer: Answer, reason: str) -> None:
    setup = Setup(answer, OK)
    reply = run(setup.send())
    assert reply.response.status == 200
    key = setup.upstream.pool.keys()[0]
    assert key.state is KeyState.RETIRED and key.retired_reason == reason


def test_every_key_retired_is_no_upstream_keys() -> None:
    setup = Setup(*[error(401, "invalid_api_key")] * 3)
    with pytest.raises(NoUpstreamKeys):
        run(setup.send())
    assert setup.inflight() == 0


def test_a_key_refused_a_model_is_barred_from_it_only() -> None:
    setup = Setup(error(403, "model_not_allowed"), OK)
    run(whole(run(setup.send())))
    assert setup.keys_tried() == SECRETS[:2]
    # The next request for that model passes the barred key over; another model may use it.
    setup.transport.add(*[OK] * 6)
    for _ in range(3):
        run(whole(run(setup.send())))
    assert SECRETS[0] not in setup.keys_tried()[2:]
    for _ in range(3):
        run(whole(run(setup.send(chat(model="gpt-4o-mini")))))
    assert SECRETS[0] in setup.keys_tried()[5:]


def test_every_key_refusing_the_model_is_a_refusal_not_a_retry_storm() -> None:
    setup = Setup(*[error(404, "model_not_found")] * 3)
    with pytest.raises(ProxyError) as caught:
        run(setup.send())
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert len(setup.transport.requests) == 3
    setup.transport.add(OK)
    with pytest.raises(ProxyError):  # barred: no key is asked again for a while
        run(setup.send())
    assert len(setup.transport.requests) == 3


def test_a_404_that_is_not_about_the_model_is_the_clients_answer() -> None:
    setup = Setup(error(404, "not_found"))
    reply = run(setup.send())
    assert reply.response.status == 404 and b"not_found" in run(whole(reply))
    assert len(setup.transport.requests) == 1


def test_a_403_everywhere_is_a_permission_error() -> None:
    setup = Setup(*[error(403)] * 3)
    with pytest.raises(PermissionDenied):
        run(setup.send())


# --- upstream failures: retried with backoff, within budget and deadline ----------------


@pytest.mark.parametrize(
    ("step", "expected", "message"),
    [
        (ConnectFailed("ClientConnectorError"), UpstreamError, "could not be reached"),
        (TransportTimeout("ServerTimeoutError"), UpstreamTimeout, "did not answer in time"),
        (error(500), UpstreamError, "failed with status 500"),
        (error(503), UpstreamError, "failed with status 503"),
        (Answer(302, {"Location": "http://elsewhere.invalid/"}), UpstreamError, "redirect"),
        (Answer(502, {"Content-Type": "text/html"}, [b"<html>"]), UpstreamError, "HTML"),
        (Answer(200, {"Content-Type": "text/html"}, [b"<html>"]), UpstreamError, "not JSON"),
        (Answer(200, JSON, [b"  <html>"]), UpstreamError, "not JSON"),
        (Answer(200, JSON, [b'{"a', BrokenBody("ClientPayloadError")]), UpstreamError, None),
        (Answer(200, JSON, [b"", BrokenBody("ClientPayloadError")]), UpstreamError, "broke off"),
    ],
)
def test_an_upstream_failure_is_retried_on_another_key_then_mapped(
    step: Step, expected: type[ProxyError], message: str | None
) -> None:
    setup = Setup(step, step, step)
    with pytest.raises(expected) as caught:
        reply = run(setup.send())
        run(whole(reply))  # a head that looked like JSON, then the body broke
    if message is not None:
        assert message in caught.value.message
    assert caught.value.headers["x-should-retry"] == "true"
    assert "retry-after-ms" in caught.value.headers
    if message is not None:
        assert setup.keys_tried() == SECRETS  # max_attempts (3), each on another key
    assert setup.inflight() == 0
    assert all(r.released or r.closed for r in setup.transport.responses)


def test_the_message_names_the_cause_but_never_its_text() -> None:
    cause = ConnectFailed("ClientConnectorError")
    cause.__cause__ = OSError(f"connect to 10.0.0.1 with {SECRETS[0]}")
    setup = Setup(cause, cause, cause)
    with pytest.raises(UpstreamError) as caught:
        run(setup.send())
    assert "(ClientConnectorError)" in caught.value.message
    assert "10.0.0.1" not in caught.value.message and SECRETS[0] not in caught.value.message


def test_a_failure_then_a_success_answers_and_counts_both_attempts() -> None:
    setup = Setup(error(500), ConnectFailed("ClientOSError"), OK)
    reply = run(setup.send())
    assert reply.response.status == 200 and reply.attempts == 3
    assert setup.upstream.pool.keys()[0].consecutive_failures == 1


def test_repeated_failures_eject_a_key_but_never_the_whole_pool() -> None:
    def answer(request: TransportRequest) -> Step:
        return error(500) if secret_of(request) == SECRETS[0] else OK

    setup = Setup(pool={"eject_after": 2, "max_ejected_share": 0.5})
    setup.transport.script = answer
    for _ in range(6):
        run(whole(run(setup.send())))
    assert setup.state(0) is KeyState.EJECTED
    assert [setup.state(i) for i in (1, 2)] == [KeyState.ACTIVE, KeyState.ACTIVE]


def test_an_ejection_ends_and_the_key_returns() -> None:
    setup = Setup(error(500), OK, pool={"eject_after": 1, "eject_base": 30.0})
    run(whole(run(setup.send())))
    assert setup.state(0) is KeyState.EJECTED
    setup.clock.now += 31
    assert setup.state(0) is KeyState.ACTIVE


def test_a_body_sent_once_is_not_retried() -> None:
    async def once() -> AsyncIterator[bytes]:
        yield BODY

    setup = Setup(error(500), OK)
    with pytest.raises(UpstreamError):
        run(setup.send(chat(body=once())))
    assert len(setup.transport.requests) == 1


def test_the_retry_budget_stops_a_retry_storm() -> None:
    setup = Setup(*[error(503)] * 9, retries={"budget_ratio": 0.0, "budget_min": 1})
    for _ in range(3):
        with pytest.raises(UpstreamError):
            run(setup.send())
    # One retry in the whole window, then each request gets its one attempt.
    assert len(setup.transport.requests) == 4


def test_no_retry_starts_after_the_deadline() -> None:
    setup = Setup(timeouts={"request": 10.0})

    def slow_failure(request: TransportRequest) -> Step:
        setup.clock.now += 11  # the first attempt took the whole deadline
        return error(500)

    setup.transport.script = slow_failure
    with pytest.raises(UpstreamError):
        run(setup.send())
    assert len(setup.transport.requests) == 1


def test_a_request_about_a_stored_object_stays_on_its_key() -> None:
    setup = Setup(error(500), OK)
    with pytest.raises(UpstreamError):
        run(setup.send(chat(holder_key="openai#2")))
    assert setup.keys_tried() == [SECRETS[1]]


def test_a_stored_objects_retired_key_is_a_409() -> None:
    setup = Setup(error(401, "invalid_api_key"))
    with pytest.raises(ResourceUnavailable):
        run(setup.send(chat(holder_key="openai#1")))


def test_a_client_that_leaves_mid_attempt_gives_the_key_back() -> None:
    setup = Setup(Answer(200, JSON, [b"{}"], wait=3600.0))

    async def leave() -> None:
        task = asyncio.create_task(setup.send())
        while not setup.transport.requests:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(leave())
    assert setup.inflight() == 0


# --- the limits each attempt is given ---------------------------------------------------


def test_an_answer_that_comes_whole_may_pause_as_long_as_it_took_to_begin() -> None:
    setup = Setup(OK, timeouts={"connect": 5.0, "first_byte": 300.0})
    run(whole(run(setup.send())))
    assert setup.transport.requests[0].timeouts == Timeouts(5.0, 300.0, 300.0)


def test_a_watched_stream_waits_for_its_headers_and_has_no_timer_per_chunk() -> None:
    watch = IdleWatch(idle=120.0)
    setup = Setup(Answer(200, SSE), timeouts={"stream_first_byte": 20.0}, idle=watch)
    reply = run(setup.send(chat(stream=True)))
    assert setup.transport.requests[0].timeouts == Timeouts(10.0, 20.0, None)
    assert reply.watched is not None and len(watch) == 1
    reply.close()
    assert len(watch) == 0


def test_an_unwatched_stream_has_its_silence_limited_by_the_transport() -> None:
    setup = Setup(Answer(200, SSE), timeouts={"stream_first_byte": 20.0, "stream_idle": 5.0})
    run(setup.send(chat(stream=True))).close()
    assert setup.transport.requests[0].timeouts == Timeouts(10.0, 5.0, 5.0)


def test_a_client_in_a_hurry_gets_its_504_a_margin_before_it_gives_up() -> None:
    headers = {"Content-Type": "application/json", "x-stainless-read-timeout": "30"}
    setup = Setup(OK, timeouts={"client_margin": 1.0})
    run(whole(run(setup.send(chat(headers=headers)))))
    assert setup.transport.requests[0].timeouts.first_byte == 29.0


def test_a_retry_waits_no_longer_than_the_deadline_left() -> None:
    setup = Setup(timeouts={"request": 100.0, "first_byte": 600.0})
    steps = iter([error(500), OK])

    def answer(request: TransportRequest) -> Step:
        setup.clock.now += 60
        return next(steps)

    setup.transport.script = answer
    run(whole(run(setup.send())))
    first, second = (request.timeouts for request in setup.transport.requests)
    assert first.first_byte == 100.0 and second.first_byte == 40.0


# --- reading a reply ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(TransportTimeout("ServerTimeoutError"), UpstreamTimeout), (BrokenBody("x"), UpstreamError)],
)
def test_a_body_that_stops_short_is_an_upstream_failure_of_the_key(
    failure: TransportError, expected: type[ProxyError]
) -> None:
    setup = Setup(Answer(200, JSON, [b'{"a": ', failure]))
    reply = run(setup.send())
    with pytest.raises(expected):
        run(whole(reply))
    assert setup.upstream.pool.keys()[0].consecutive_failures == 1


def test_read_stops_at_its_limit() -> None:
    setup = Setup(Answer(200, JSON, [b'{"a": 1', b"234567890}"]))
    reply = run(setup.send())
    assert run(reply.read(limit=10)) == b'{"a": 1234'
    reply.close()
