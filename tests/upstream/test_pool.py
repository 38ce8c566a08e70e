import logging

import pytest
from pool_rig import make_pool, take

from chatgpt_proxy.errors import (
    ModelNotFound,
    NoUpstreamKeys,
    PermissionDenied,
    ProxyError,
    ResourceUnavailable,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
)
from chatgpt_proxy.upstream.pool import KeyPool, KeyState, PoolPolicy

SECRETS = ["sk-secret-aaaa1111", "sk-secret-bbbb2222", "sk-secret-cccc3333"]


def test_aliases_are_pool_name_and_one_based_index() -> None:
    keys = KeyPool("openai", SECRETS).keys()
    assert [key.alias for key in keys] == ["openai#1", "openai#2", "openai#3"]
    pool = KeyPool("openai", SECRETS)
    assert pool.by_alias("openai#2") is pool.keys()[1]
    assert pool.by_alias("openai#9") is None


def test_acquire_counts_requests_and_inflight() -> None:
    pool, _ = make_pool(1)
    key = pool.acquire()
    assert (key.inflight, key.requests) == (1, 1)
    pool.release(key)
    pool.release(key)
    assert key.inflight == 0


def test_release_of_the_last_request_clears_what_was_unanswered() -> None:
    pool, _ = make_pool(1, strategy="least_headroom")
    key = pool.acquire_exact("openai#1", tokens=40)
    assert (key.room.pending, key.room.pending_tokens) == (1, 40)
    pool.release(key)  # e.g. a task cancelled before its answer
    assert (key.room.pending, key.room.pending_tokens) == (0, 0)


def test_rate_limited_key_cools_for_retry_after_then_returns() -> None:
    pool, clock = make_pool(2)
    first = pool.keys()[0]
    pool.report_rate_limited(first, retry_after=30)
    assert first.state is KeyState.COOLING
    assert {take(pool).alias for _ in range(4)} == {"openai#2"}
    clock.advance(29.9)
    assert {take(pool).alias for _ in range(4)} == {"openai#2"}
    clock.advance(0.1)
    assert {take(pool).alias for _ in range(4)} == {"openai#1", "openai#2"}
    assert first.state is KeyState.ACTIVE


def test_rate_limited_without_hint_uses_default_cooldown() -> None:
    pool, clock = make_pool(1, policy=PoolPolicy(default_cooldown=20))
    key = pool.keys()[0]
    pool.report_rate_limited(key, retry_after=None)
    assert pool.snapshot()[0].until == pytest.approx(20)
    clock.advance(19)
    with pytest.raises(UpstreamRateLimited):
        pool.acquire()
    clock.advance(1)
    assert pool.acquire() is key


@pytest.mark.parametrize(
    ("hint", "expected"), [(0, 0.1), (-5, 0.1), (10**7, 3600), (float("nan"), 20)]
)
def test_cooldown_is_floored_and_capped(hint: float, expected: float) -> None:
    pool, _ = make_pool(1)
    pool.report_rate_limited(pool.keys()[0], retry_after=hint)
    assert pool.snapshot()[0].until == pytest.approx(expected)


def test_concurrent_429s_keep_the_longest_cooldown() -> None:
    pool, _ = make_pool(1)
    key = pool.keys()[0]
    pool.report_rate_limited(key, retry_after=50)
    pool.report_rate_limited(key, retry_after=5)
    assert pool.snapshot()[0].until == pytest.approx(50)
    pool.report_rate_limited(key, retry_after=70)
    assert pool.snapshot()[0].until == pytest.approx(70)


def test_all_cooling_raises_rate_limited_with_earliest_expiry() -> None:
    pool, _ = make_pool(3)
    for key, seconds in zip(pool.keys(), [45, 30, 90], strict=True):
        pool.report_rate_limited(key, retry_after=seconds)
    with pytest.raises(UpstreamRateLimited) as caught:
        pool.acquire()
    assert caught.value.retry_after == pytest.approx(30)
    assert caught.value.headers["retry-after"] == "30"
    assert caught.value.status == 429
    assert "openai" in caught.value.message


def test_rate_limited_retry_after_is_capped_at_120() -> None:
    pool, _ = make_pool(2)
    keys = pool.keys()
    for key in keys:
        pool.report_rate_limited(key, retry_after=600)
    with pytest.raises(UpstreamRateLimited) as caught:
        pool.acquire()
    assert caught.value.retry_after == 120
    assert caught.value.headers["retry-after"] == "120"


def test_all_retired_raises_no_upstream_keys() -> None:
    pool, _ = make_pool(2)
    keys = pool.keys()
    for key in keys:
        pool.report_retired(key, "invalid")
    with pytest.raises(NoUpstreamKeys) as caught:
        pool.acquire()
    assert caught.value.status == 503
    assert "openai" in caught.value.message


def test_empty_pool_raises_no_upstream_keys() -> None:
    with pytest.raises(NoUpstreamKeys):
        KeyPool("openai", []).acquire()


def test_cooling_and_retired_mix_raises_rate_limited() -> None:
    pool, _ = make_pool(3)
    pool.report_retired(pool.keys()[0], "invalid")
    pool.report_rate_limited(pool.keys()[1], retry_after=15)
    pool.report_retired(pool.keys()[2], "no_quota")
    with pytest.raises(UpstreamRateLimited) as caught:
        pool.acquire()
    assert caught.value.headers["retry-after"] == "15"


def test_ejection_never_takes_the_whole_pool_out() -> None:
    """Every key failing: only the configured share is ejected, the rest stays in play."""
    pool, _ = make_pool(2)
    first, second = pool.keys()
    for key in pool.keys():
        for _ in range(3):
            pool.report_failure(key)
    assert (first.state, second.state) == (KeyState.EJECTED, KeyState.ACTIVE)
    assert {take(pool).alias for _ in range(4)} == {"openai#2"}


@pytest.mark.parametrize(
    ("keys", "share", "ejected"),
    [(4, 0.5, 2), (4, 0.25, 1), (5, 0.5, 2), (10, 0.1, 1), (3, 1.0, 3), (2, 0.1, 1)],
)
def test_at_most_the_configured_share_is_ejected(keys: int, share: float, ejected: int) -> None:
    pool, _ = make_pool(keys, policy=PoolPolicy(max_ejected_share=share))
    for key in pool.keys():
        for _ in range(3):
            pool.report_failure(key)
    states = [key.state for key in pool.keys()]
    assert states.count(KeyState.EJECTED) == ejected  # at least one, as Envoy's outliers


def test_a_freed_share_lets_the_next_failure_eject() -> None:
    pool, clock = make_pool(2, policy=PoolPolicy(eject_base=10.0, eject_max=10.0))
    first, second = pool.keys()
    for _ in range(3):
        pool.report_failure(first)
        pool.report_failure(second)
    assert second.state is KeyState.ACTIVE
    clock.advance(10)  # the first is back on probation
    pool.report_failure(second)
    assert pool.snapshot()[1].state is KeyState.EJECTED
    assert pool.snapshot()[0].state is KeyState.ACTIVE


def test_with_no_other_key_usable_the_ejected_key_due_back_first_is_used() -> None:
    pool, clock = make_pool(3, policy=PoolPolicy(max_ejected_share=1.0))
    a, b, c = pool.keys()
    for _ in range(3):
        pool.report_failure(a)
    clock.advance(0.5)
    for _ in range(3):
        pool.report_failure(b)
    pool.report_retired(c, "invalid")
    assert take(pool) is a
    assert take(pool, exclude=("openai#1",)) is b
    with pytest.raises(NoUpstreamKeys):
        pool.acquire(exclude={"openai#1", "openai#2"})  # this request tried both


def test_exclude_skips_keys_already_tried() -> None:
    pool, _ = make_pool(3)
    first = take(pool)
    second = take(pool, exclude=(first.alias,))
    third = take(pool, exclude=(first.alias, second.alias))
    assert len({first.alias, second.alias, third.alias}) == 3
    for _ in range(5):
        assert take(pool, exclude=("openai#1", "openai#3")).alias == "openai#2"


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_busy", "least_headroom"])
def test_exclude_all_raises_upstream_error(strategy: str) -> None:
    pool, _ = make_pool(3, strategy=strategy)
    with pytest.raises(UpstreamError) as caught:
        pool.acquire(exclude={"openai#1", "openai#2", "openai#3"})
    assert type(caught.value) is UpstreamError
    assert caught.value.message == "all upstream keys of openai failed for this request"


def test_exclude_judges_only_the_keys_left() -> None:
    pool, _ = make_pool(3)
    pool.report_retired(pool.keys()[1], "invalid")
    pool.report_rate_limited(pool.keys()[2], retry_after=10)
    with pytest.raises(UpstreamRateLimited):
        pool.acquire(exclude={"openai#1"})
    with pytest.raises(NoUpstreamKeys):
        pool.acquire(exclude={"openai#1", "openai#3"})


def test_consecutive_failures_eject_for_a_doubling_capped_time() -> None:
    policy = PoolPolicy(eject_after=3, eject_base=1.0, eject_max=5.0)
    pool, clock = make_pool(2, policy=policy)
    key = pool.keys()[0]
    pool.report_failure(key)
    pool.report_failure(key)
    assert key.state is KeyState.ACTIVE
    pool.report_failure(key)
    assert key.state is KeyState.EJECTED
    assert {take(pool).alias for _ in range(4)} == {"openai#2"}
    lengths = []
    for _ in range(4):
        lengths.append(pool.snapshot()[0].until)
        clock.advance(lengths[-1])
        assert pool.snapshot()[0].state is KeyState.ACTIVE
        pool.report_failure(key)  # on probation: one more failure ejects again
        assert key.state is KeyState.EJECTED
    lengths.append(pool.snapshot()[0].until)
    assert lengths == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
    assert key.failures == 7


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    pool, _ = make_pool(1)
    key = pool.keys()[0]
    for _ in range(10):
        pool.report_failure(key)
    assert key.ejections == 1
    assert pool.snapshot()[0].until == pytest.approx(1.0)


def test_success_resets_failures_and_ejection_growth() -> None:
    pool, clock = make_pool(1)
    key = pool.keys()[0]
    pool.report_failure(key)
    pool.report_failure(key)
    pool.report_success(key)
    pool.report_failure(key)
    pool.report_failure(key)
    assert key.state is KeyState.ACTIVE
    pool.report_failure(key)
    clock.advance(1)
    pool.report_failure(key)
    assert pool.snapshot()[0].until == pytest.approx(2.0)
    pool.report_success(key)  # a request started before the ejection came back fine
    assert key.state is KeyState.ACTIVE
    for _ in range(3):
        pool.report_failure(key)
    assert pool.snapshot()[0].until == pytest.approx(1.0)


def test_success_does_not_end_a_cooldown() -> None:
    pool, _ = make_pool(1)
    key = pool.keys()[0]
    pool.report_rate_limited(key, retry_after=10)
    pool.report_success(key)
    assert key.state is KeyState.COOLING


def test_retired_keys_are_listed_and_readmitted() -> None:
    pool, _ = make_pool(3)
    a, b, _c = pool.keys()
    pool.report_retired(a, "invalid")
    pool.report_retired(b, "no_quota")
    assert pool.retired() == [a, b]
    pool.report_rate_limited(a, retry_after=5)  # a retired key stays retired
    pool.report_success(a)
    assert a.state is KeyState.RETIRED
    pool.readmit(a)
    assert a.state is KeyState.ACTIVE
    assert (a.retired_reason, a.consecutive_failures, a.ejections) == (None, 0, 0)
    assert pool.retired() == [b]
    assert {take(pool).alias for _ in range(4)} == {"openai#1", "openai#3"}


def test_snapshot_reports_state_and_reason() -> None:
    pool, _ = make_pool(3)
    _a, b, c = pool.keys()
    held = pool.acquire()
    pool.report_rate_limited(b, retry_after=12)
    pool.report_retired(c, "no_quota")
    statuses = pool.snapshot()
    assert [s.state for s in statuses] == [KeyState.ACTIVE, KeyState.COOLING, KeyState.RETIRED]
    assert [s.until for s in statuses] == [None, pytest.approx(12), None]
    assert [s.reason for s in statuses] == [None, None, "no_quota"]
    assert statuses[0].inflight == 1 and statuses[0].requests == 1
    pool.release(held)


def test_no_secret_in_any_str_or_repr() -> None:
    pool, _ = make_pool(3)
    a, b, c = pool.keys()
    pool.report_rate_limited(a, retry_after=5)
    pool.report_retired(b, f"invalid: upstream said key {b.secret} is wrong")
    for _ in range(3):
        pool.report_failure(c)
    objects: list[object] = [pool, *pool.keys(), *pool.snapshot(), pool.policy]
    try:
        pool.acquire()
    except UpstreamRateLimited as err:
        objects += [err, err.body()]
    for obj in objects:
        for text in (str(obj), repr(obj)):
            for secret in (a.secret, b.secret, c.secret):
                assert secret not in text
    assert repr(a) == "<UpstreamKey openai#1 cooling>"
    assert "invalid" in str(pool.snapshot()[1].reason)


def test_logs_name_the_alias_never_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chatgpt_proxy.upstream")
    pool, _ = make_pool(2)
    a, b = pool.keys()
    pool.report_retired(a, "invalid")
    pool.report_retired(a, "invalid")
    for _ in range(3):
        pool.report_failure(b)
    pool.report_success(b)
    pool.readmit(a)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # retired once, ejected once
    assert "openai#1" in warnings[0].getMessage() and "invalid" in warnings[0].getMessage()
    assert "openai#2" in warnings[1].getMessage()
    assert all(r.name == "chatgpt_proxy.upstream" for r in caplog.records)
    for record in caplog.records:
        assert a.secret not in record.getMessage()
        assert b.secret not in record.getMessage()


def test_apply_remote_state_mirrors_cooling_and_retirement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatgpt_proxy.upstream")
    pool, clock = make_pool(3)
    a, b, c = pool.keys()
    pool.apply_remote_state("openai#1", KeyState.COOLING, 25.0, None)
    pool.apply_remote_state("openai#2", KeyState.RETIRED, None, "no_quota")
    pool.apply_remote_state("openai#9", KeyState.RETIRED, None, "invalid")  # unknown: ignored
    assert not caplog.records
    assert a.state is KeyState.COOLING
    assert pool.snapshot()[0].until == pytest.approx(25)
    assert (b.state, b.retired_reason) == (KeyState.RETIRED, "no_quota")
    assert {take(pool).alias for _ in range(3)} == {"openai#3"}
    pool.apply_remote_state("openai#2", KeyState.COOLING, 5.0, None)  # retirement wins
    assert b.state is KeyState.RETIRED
    pool.apply_remote_state("openai#2", KeyState.ACTIVE, None, None)  # another replica readmitted
    assert b.state is KeyState.ACTIVE
    clock.advance(25)
    assert {take(pool).alias for _ in range(3)} == {"openai#1", "openai#2", "openai#3"}
    assert c.state is KeyState.ACTIVE


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="strategy"):
        KeyPool("openai", SECRETS, strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PoolPolicy(eject_after=0)
    with pytest.raises(ValueError):
        PoolPolicy(eject_base=10, eject_max=5)


# ---------------------------------------------------------------- the key holding an object


def test_acquire_exact_gives_that_key_or_says_why_not_never_another() -> None:
    pool, clock = make_pool(3)
    holder = pool.keys()[1]
    key = pool.acquire_exact("openai#2")
    assert key is holder and key.inflight == 1
    pool.release(key)

    pool.report_rate_limited(holder, retry_after=30)
    with pytest.raises(UpstreamRateLimited) as cooling:
        pool.acquire_exact("openai#2")
    assert cooling.value.headers["retry-after"] == "30"
    clock.advance(31)
    pool.release(pool.acquire_exact("openai#2"))  # the cooldown is over

    for _ in range(pool.policy.eject_after):
        pool.report_failure(holder)
    with pytest.raises(UpstreamError):
        pool.acquire_exact("openai#2")

    pool.report_retired(holder, "invalid")
    for alias in ("openai#2", "openai#9"):  # retired, or no longer configured
        with pytest.raises(ResourceUnavailable) as gone:
            pool.acquire_exact(alias)
        assert gone.value.status == 409 and gone.value.headers == {"x-should-retry": "false"}
    assert all(key.inflight == 0 for key in pool.keys())


def test_a_retry_does_not_go_to_an_ejected_key_while_another_is_usable() -> None:
    pool, _ = make_pool(2)
    first, second = pool.keys()
    for _ in range(3):
        pool.report_failure(first)
    with pytest.raises(UpstreamError) as caught:
        pool.acquire(exclude={"openai#2"})
    assert "failing" in caught.value.message
    assert take(pool) is second


def test_a_key_that_refused_a_model_is_barred_from_it_for_a_while() -> None:
    pool, clock = make_pool(3, policy=PoolPolicy(barred_for=60.0))
    first = pool.keys()[0]
    pool.report_refused_model(first, "gpt-4o", 403)
    chosen = {pool.acquire(model="gpt-4o").alias for _ in range(6)}
    assert chosen == {"openai#2", "openai#3"}
    assert {take(pool).alias for _ in range(3)} == {"openai#1", "openai#2", "openai#3"}
    clock.advance(60)
    assert "openai#1" in {pool.acquire(model="gpt-4o").alias for _ in range(3)}


@pytest.mark.parametrize(
    ("statuses", "error", "code"),
    [
        ([403, 403], PermissionDenied, "permission_denied"),
        ([404, 404], ModelNotFound, "model_not_found"),
        ([403, 404], ModelNotFound, "model_not_found"),
    ],
)
def test_every_key_refusing_a_model_is_a_sanitized_answer_not_to_retry(
    statuses: list[int], error: type[ProxyError], code: str
) -> None:
    pool, _ = make_pool(2)
    for key, status in zip(pool.keys(), statuses, strict=True):
        pool.report_refused_model(key, "gpt-4o", status)
    with pytest.raises(error) as caught:
        pool.acquire(model="gpt-4o")
    assert caught.value.code == code and caught.value.param == "model"
    assert caught.value.headers == {"x-should-retry": "false"}
    assert "openai#" not in caught.value.message
    assert take(pool).alias == "openai#1"  # other models are served as before


def test_refused_model_and_cooling_keys_wait_for_the_cooling_key() -> None:
    pool, _ = make_pool(2)
    first, second = pool.keys()
    pool.report_refused_model(first, "gpt-4o", 404)
    pool.report_rate_limited(second, retry_after=12)
    with pytest.raises(UpstreamRateLimited):
        pool.acquire(model="gpt-4o")


def test_refusals_are_remembered_within_a_bound(caplog: pytest.LogCaptureFixture) -> None:
    pool, _ = make_pool(1)
    key = pool.keys()[0]
    for i in range(5000):
        pool.report_refused_model(key, f"model-{i}", 404)
    assert len(pool._barred) <= pool._barred.limit
    caplog.set_level(logging.WARNING, logger="chatgpt_proxy.upstream")
    caplog.clear()
    pool.report_refused_model(key, "model-4999", 404)
    assert not caplog.records  # told once per refusal, not per request


def test_refusals_of_long_model_names_are_remembered_within_a_bound_of_characters() -> None:
    pool, _ = make_pool(1)
    key = pool.keys()[0]
    long_names = [f"{n:04d}" + "m" * 100_000 for n in range(30)]
    for name in long_names:  # a client's model names may be as long as its body
        pool.report_refused_model(key, name, 404)
        assert pool._barred.weight <= (pool._barred.max_bytes or 0)
    with pytest.raises(ProxyError):
        pool.acquire(model=long_names[-1])  # the newest refusal is remembered
    pool.release(pool.acquire(model=long_names[0]))  # the oldest made room


def test_every_key_out_of_quota_is_429_not_to_retry() -> None:
    pool, _ = make_pool(2)
    for key in pool.keys():
        pool.report_retired(key, "no_quota")
    with pytest.raises(UpstreamQuotaExhausted) as caught:
        pool.acquire()
    assert caught.value.status == 429
    assert caught.value.headers["x-should-retry"] == "false"
    pool.report_retired(pool.keys()[0], "invalid")
    with pytest.raises(NoUpstreamKeys) as mixed:
        pool.acquire()
    assert mixed.value.headers["x-should-retry"] == "false"


def test_a_lone_key_keeps_its_alias() -> None:
    pool, _ = make_pool(3)
    third = pool.keys()[2]
    alone = KeyPool.alone("openai", third)
    assert [key.alias for key in alone.keys()] == ["openai#3"]
    assert alone.keys()[0] is not third  # what the probe does to it stays apart
    assert alone.acquire().secret == third.secret
