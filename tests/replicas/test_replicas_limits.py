"""Limits hold exactly across three replicas on one database and one Redis (each backend)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import openai
from replica_harness import Replicas, chat, reported_tokens

from fake_openai import FakeOpenAI

# 6 words of prompt and 20 of answer: 26 tokens as the fake counts them. The proxy's estimate
# (a quarter of the body's bytes, ~38, plus max_tokens) is above that, as it should be.
STORY = "[[fault:slow:0.02]] [[fault:long:20]] please tell a story"
STORY_TOKENS = 26
MAX_TOKENS = 25


def story_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": STORY}],
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    for _ in stream:
        pass


def test_rpm_30_gives_exactly_30_successes_across_three_replicas(
    replicas: Replicas, fake: FakeOpenAI
) -> None:
    _, secret = replicas.create_key(rpm=30)
    outcomes = replicas.drive(secret, 45)
    assert Counter(o.status for o in outcomes) == {200: 30, 429: 15}
    refused = [o for o in outcomes if o.status == 429]
    assert {o.code for o in refused} == {"rate_limit_exceeded"}
    assert all(o.headers and 1 <= int(o.headers["retry-after"]) <= 60 for o in refused)
    assert fake.count("/v1/chat/completions") == 30


def test_concurrent_streams_never_overrun_tpm(replicas: Replicas, fake: FakeOpenAI) -> None:
    tpm = 300
    key_id, secret = replicas.create_key(tpm=tpm)
    outcomes = replicas.drive(secret, 30, story_stream)
    statuses = Counter(o.status for o in outcomes)
    assert statuses[200] >= 3 and statuses[429] >= 1, statuses
    assert {o.code for o in outcomes if o.status == 429} == {"rate_limit_exceeded"}
    used, _ = replicas.usage_totals(key_id)
    assert used == statuses[200] * STORY_TOKENS
    assert used <= tpm  # every estimate was above the actual: no overrun at all


def test_concurrent_streams_overrun_a_budget_by_one_reservation_at_most(
    replicas: Replicas, fake: FakeOpenAI
) -> None:
    budget = 200
    key_id, secret = replicas.create_key(total_token_budget=budget)
    outcomes = replicas.drive(secret, 30, story_stream)  # reservations stop the burst early
    outcomes += [o for _ in range(4) for o in replicas.drive(secret, 3, story_stream)]
    statuses = Counter(o.status for o in outcomes)
    assert {o.code for o in outcomes if o.status == 429} == {"insufficient_quota"}
    used, _ = replicas.usage_totals(key_id)
    assert used == statuses[200] * STORY_TOKENS
    assert budget <= used <= budget + STORY_TOKENS  # spent, by at most one request more
    assert all(o.status == 429 for o in replicas.drive(secret, 3, story_stream))


def test_usage_totals_equal_what_the_upstream_reported_streams_included(
    replicas: Replicas, fake: FakeOpenAI
) -> None:
    key_id, secret = replicas.create_key(tpm=1_000_000, max_concurrency=100)

    def mixed(n: int) -> Any:
        def call(client: openai.OpenAI) -> None:
            content = f"request {n} [[fault:long:{n % 7 + 1}]] " + "word " * (n % 5)
            messages = [{"role": "user", "content": content}]
            if n % 3 == 0:
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
                return
            options = {"include_usage": True} if n % 3 == 1 else None
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                **({"stream_options": options} if options else {}),
            )
            for _ in stream:
                pass

        return call

    clients = replicas.clients(secret)
    for n in range(24):
        mixed(n)(clients[n % 3])
    replicas.drive(secret, 12, chat)
    records = fake.requests_to("/v1/chat/completions")
    assert len(records) == 36
    expected = sum(reported_tokens(fake, record) for record in records)
    assert replicas.usage_totals(key_id) == (expected, 0.0)
