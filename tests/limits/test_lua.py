"""The limit scripts, run in Redis as the limiter runs them: answers, refusals by reason,
budgets that must be seeded first, and settlements that give back what was not used."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from redis import Redis

from chatgpt_proxy.limits import lua
from chatgpt_proxy.limits.policy import (
    OVER_CONCURRENCY,
    OVER_RPM,
    OVER_TOTAL_TOKENS,
    OVER_TPM,
    TOO_LARGE,
)
from services import redis_url

NONE = -1
WINDOW_MS, LEASE_MS, TTL_MS = 60_000, 30_000, 86_400_000


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(redis_url())
    yield client
    client.close()


@pytest.fixture
def keys(redis: Redis) -> Iterator[list[str]]:
    base = f"cgp-test:{secrets.token_hex(4)}:{{key_1}}:"
    names = [base + suffix for suffix in ("w", "wt", "c", "b:1", "d:1:2026-01-02")]
    yield names
    redis.delete(*names)


def _limits(rpm: int = NONE, tpm: int = NONE, slots: int = NONE, total_tokens: int = NONE) -> str:
    values = (rpm, tpm, slots, NONE, total_tokens, NONE, NONE, WINDOW_MS, LEASE_MS, TTL_MS, TTL_MS)
    return " ".join(map(str, values))


def _admit(redis: Redis, keys: list[str], request_id: str, tokens: int, limits: str) -> list[int]:
    answer = redis.eval(lua.ADMIT, len(keys), *keys, request_id, f"{tokens} 0.0", limits)
    return [int(part) for part in answer.split()]


def _code(reason: str) -> int:
    return lua.REASONS.index(reason) + 1


def test_without_limits_everything_is_admitted(redis: Redis, keys: list[str]) -> None:
    assert _admit(redis, keys, "r1", 10, _limits())[0] == 0


def test_the_window_counts_requests_and_tokens(redis: Redis, keys: list[str]) -> None:
    limits = _limits(rpm=2, tpm=100)
    code, _, count, used, _ = _admit(redis, keys, "r1", 60, limits)
    assert (code, count, used) == (0, 1, 60)  # the window, this request counted in
    assert _admit(redis, keys, "r2", 50, limits)[0] == _code(OVER_TPM)
    assert _admit(redis, keys, "r2", 200, limits)[0] == _code(TOO_LARGE)  # never fits a minute
    assert _admit(redis, keys, "r3", 40, limits)[0] == 0
    code, wait_ms, count, _, _ = _admit(redis, keys, "r4", 1, limits)
    assert code == _code(OVER_RPM) and count == 2
    assert 0 < wait_ms <= WINDOW_MS


def test_slots_are_held_until_settled(redis: Redis, keys: list[str]) -> None:
    limits = _limits(slots=1)
    assert _admit(redis, keys, "r1", 1, limits)[0] == 0
    assert _admit(redis, keys, "r2", 1, limits)[0] == _code(OVER_CONCURRENCY)
    redis.eval(lua.SETTLE, len(keys), *keys, "r1 2 0 0 0")  # flag 2: release the slot
    assert _admit(redis, keys, "r2", 1, limits)[0] == 0


def test_a_budget_is_seeded_once_then_counted(redis: Redis, keys: list[str]) -> None:
    limits = _limits(total_tokens=100)
    code, missing, *_ = _admit(redis, keys, "r1", 10, limits)
    assert (code, missing) == (-1, 1)  # the total counter must be seeded first
    redis.eval(lua.SEED, 1, keys[3], 95, 0.0, TTL_MS)
    redis.eval(lua.SEED, 1, keys[3], 0, 0.0, TTL_MS)  # a later seeder does not reset it
    assert _admit(redis, keys, "r1", 10, limits)[0] == 0
    redis.eval(lua.SETTLE, len(keys), *keys, "r1 4 10 10 0")  # flag 4: the total budget
    assert _admit(redis, keys, "r2", 1, limits)[0] == _code(OVER_TOTAL_TOKENS)
