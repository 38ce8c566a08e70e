"""Redis killed mid-run: no request fails, each replica limits on its own, and then shares again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import openai
import pytest
from replica_harness import RedisServer, Replicas

from fake_openai import FakeOpenAI
from harness import Proxy, Recorder

LOST = "WARNING chatgpt_proxy.redis"
BACK = "INFO chatgpt_proxy.redis Redis answers again"


def _lines(recorder: Recorder, since: int, start: str) -> list[str]:
    return [line for line in recorder.log_lines[since:] if line.startswith(start)]


def test_redis_killed_mid_run_then_back(
    make_proxy: Callable[..., Proxy],
    database_url: str,
    redis_server: RedisServer,
    recorder: Recorder,
    fake: FakeOpenAI,
) -> None:
    replicas = Replicas.start(
        make_proxy,
        database_url=database_url,
        redis_url=redis_server.url,
        # A killed Redis refuses connections at once; the timeout only has to outlast a slow
        # answer on a busy machine, where a timed-out call would be counted per replica.
        limits={"redis_recheck_seconds": 0.2, "redis_timeout": 2.0},
    )
    mark = len(recorder.log_lines)
    _, secret = replicas.create_key(rpm=10)
    assert Counter(o.status for o in replicas.drive(secret, 15)) == {200: 10, 429: 5}

    redis_server.kill()
    outcomes = replicas.drive(secret, 45)  # 15 to each replica, now counting on its own
    assert Counter(o.status for o in outcomes) == {200: 30, 429: 15}
    assert {o.code for o in outcomes if o.status != 200} == {"rate_limit_exceeded"}
    assert len(_lines(recorder, mark, LOST)) == 3  # once per replica, however many requests

    redis_server.start()
    replicas.wait_until(lambda: len(_lines(recorder, mark, BACK)) == 3, timeout=5.0)
    _, fresh = replicas.create_key(rpm=6)
    assert Counter(o.status for o in replicas.drive(fresh, 12)) == {200: 6, 429: 6}
    assert len(_lines(recorder, mark, LOST)) == 3


def test_a_redis_that_hangs_costs_at_most_its_timeout(
    make_proxy: Callable[..., Proxy],
    database_url: str,
    redis_server: RedisServer,
    recorder: Recorder,
    fake: FakeOpenAI,
) -> None:
    replicas = Replicas.start(
        make_proxy,
        count=2,
        database_url=database_url,
        redis_url=redis_server.url,
        limits={"redis_recheck_seconds": 0.2, "redis_timeout": 0.3},
    )
    mark = len(recorder.log_lines)
    _, secret = replicas.create_key(rpm=100)
    redis_server.pause()
    try:
        # A paused Redis never answers: without the proxy's own redis_timeout (0.3 s) each
        # request would wait for the client to give up (30 s) instead.
        outcomes = replicas.drive(secret, 10)
    except openai.APITimeoutError:
        pytest.fail("a request hung on the paused Redis until the client gave up")
    finally:
        redis_server.resume()
    assert Counter(o.status for o in outcomes) == {200: 10}
    # What ended the wait was the proxy's timeout, once per replica, before it fell back.
    lost = _lines(recorder, mark, LOST)
    assert len(lost) == 2 and all("TimeoutError" in line for line in lost), lost
    replicas.wait_until(lambda: len(_lines(recorder, mark, BACK)) == 2, timeout=5.0)
