"""The upstream moderations endpoint as an engine (the real fake upstream): one call for the
unseen texts, one per image, verdicts cached, thresholds and failures as configured."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from moderation_harness import Harness, client_key

from chatgpt_proxy.errors import ConfigError, ModerationUnavailable
from chatgpt_proxy.moderation import (
    MemoryVerdictCache,
    ModerationContext,
    OpenAIModerationEngine,
    Verdict,
)


def make_engine(harness: Harness, **moderation: Any) -> OpenAIModerationEngine:
    moderator = harness.moderator(engines=["openai"], **moderation)
    engine = moderator.engines[0]
    assert isinstance(engine, OpenAIModerationEngine)
    return engine


def judge(
    harness: Harness, engine: OpenAIModerationEngine, items: list[Any], **ctx: Any
) -> Verdict:
    context = ModerationContext("chat.completions", key_id="key_test", **ctx)
    return harness.run(engine.judge(items, context))


def test_unseen_items_go_in_one_call(harness: Harness) -> None:
    engine = make_engine(harness)
    verdict = judge(harness, engine, ["one", "two", "FLAG:violence three", "four"])
    assert verdict == Verdict(True, ("violence",), "openai", (2,))
    assert harness.fake.moderation_calls == [["one", "two", "FLAG:violence three", "four"]]
    assert harness.fake.last("/moderations").json() == {
        "model": "omni-moderation-latest",
        "input": ["one", "two", "FLAG:violence three", "four"],
    }


def test_cached_items_are_not_sent_again(harness: Harness) -> None:
    engine = make_engine(harness)
    judge(harness, engine, ["one", "two"])
    judge(harness, engine, ["one", "two", "three", "two"])
    judge(harness, engine, ["three", "one"])
    assert harness.fake.moderation_calls == [["one", "two"], ["three"]]


def test_flagged_verdicts_are_cached_too(harness: Harness) -> None:
    engine = make_engine(harness)
    assert judge(harness, engine, ["FLAG:hate x"]).reasons == ("hate",)
    assert judge(harness, engine, ["FLAG:hate x"]).reasons == ("hate",)
    assert len(harness.fake.moderation_calls) == 1


def test_images_are_passed_as_given_one_call_each(harness: Harness) -> None:
    engine = make_engine(harness)
    clean = {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}
    flagged = {"type": "image_url", "image_url": {"url": "https://x.test/FLAG:violence.png"}}
    verdict = judge(harness, engine, ["text", clean, flagged])
    assert verdict == Verdict(True, ("violence",), "openai", (2,))
    calls = sorted(harness.fake.moderation_calls, key=str)
    assert calls == sorted([["text"], [[clean]], [[flagged]]], key=str)


def test_categories_filter_which_flags_block(harness: Harness) -> None:
    engine = make_engine(harness, categories=["violence", "self-harm"])
    assert not judge(harness, engine, ["FLAG:hate only"]).blocked
    assert judge(harness, engine, ["FLAG:hate FLAG:violence"]).reasons == ("violence",)


def test_thresholds_block_below_the_endpoints_flag(harness: Harness) -> None:
    # The fake scores every unflagged category 0.01.
    engine = make_engine(harness, thresholds={"harassment": 0.01})
    assert judge(harness, engine, ["mild"]).reasons == ("harassment",)
    engine = make_engine(harness, thresholds={"harassment": 0.02})
    assert not judge(harness, engine, ["mild"]).blocked
    engine = make_engine(harness, thresholds={"*": 0.01}, categories=["hate", "sexual"])
    assert judge(harness, engine, ["mild"]).reasons == ("hate", "sexual")


def test_strict_keys_add_the_strict_thresholds(harness: Harness) -> None:
    engine = make_engine(harness, strict_thresholds={"*": 0.01}, categories=["violence"])
    assert not judge(harness, engine, ["mild"]).blocked
    assert judge(harness, engine, ["mild"], strict=True).reasons == ("violence",)


def test_default_strict_thresholds_only_tighten(harness: Harness) -> None:
    engine = make_engine(harness)
    assert not judge(harness, engine, ["mild"], strict=True).blocked
    assert judge(harness, engine, ["FLAG:sexual"], strict=True).reasons == ("sexual",)


def test_failure_blocks_by_default_with_retry_after(harness: Harness) -> None:
    harness.fake.moderation_down = True
    engine = make_engine(harness, retry_after=7)
    with pytest.raises(ModerationUnavailable) as caught:
        judge(harness, engine, ["anything"])
    assert caught.value.status == 503
    assert caught.value.code == "moderation_unavailable"
    assert caught.value.headers == {"retry-after": "7"}
    assert "anything" not in caught.value.message
    assert engine.errors_total == 1


def test_failure_is_allowed_and_logged_when_configured(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.fake.moderation_down = True
    engine = make_engine(harness, on_error="allow")
    with caplog.at_level(logging.WARNING, logger="chatgpt_proxy.moderation"):
        assert judge(harness, engine, ["secret prompt"]) == Verdict.allow("openai")
    assert any("on_error: allow" in r.getMessage() for r in caplog.records)
    assert not any("secret prompt" in r.getMessage() for r in caplog.records)
    harness.fake.moderation_down = False
    # A failed call caches nothing: the next check asks again.
    assert judge(harness, engine, ["secret prompt"]) == Verdict.allow("openai")
    assert harness.fake.moderation_calls[-1] == ["secret prompt"]


def test_timeout_is_a_failure(harness: Harness) -> None:
    harness.fake.moderation_delay = 2.0
    engine = make_engine(harness, timeout=0.2)
    with pytest.raises(ModerationUnavailable, match="timed out"):
        judge(harness, engine, ["slow"])
    engine = make_engine(harness, timeout=0.2, on_error="allow")
    assert not judge(harness, engine, ["slow"]).blocked


def test_moderation_upstream_is_selectable(harness: Harness) -> None:
    from fake_openai import FAKE_KEYS

    upstreams = [
        {"name": "chat", "base_url": harness.fake.base_url, "keys": [FAKE_KEYS[0]]},
        {"name": "mod", "base_url": harness.fake.base_url, "keys": [FAKE_KEYS[3]]},
    ]
    settings = harness.settings(upstreams, engines=["openai"], upstream="mod")
    moderator = harness.moderator(settings)
    harness.check(moderator, "completions", {"prompt": "hi"}, client_key())
    assert harness.fake.last("/moderations").key == FAKE_KEYS[3]


def test_moderation_upstream_must_exist(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="no upstream is named 'nope'"):
        harness.moderator(engines=["openai"], upstream="nope")
    upstreams = [{"name": "chat", "base_url": harness.fake.base_url, "keys": ["sk-x"]}]
    upstreams[0]["models"] = ["gpt-*"]
    with pytest.raises(ConfigError, match="no upstream serves the moderation model"):
        harness.moderator(harness.settings(upstreams, engines=["openai"]))


def test_engine_with_an_explicit_cache(harness: Harness) -> None:
    settings = harness.settings(engines=["openai"])
    moderator = harness.moderator(settings)
    built = moderator.engines[0]
    assert isinstance(built, OpenAIModerationEngine)
    cache = MemoryVerdictCache(10, 60.0)
    engine = OpenAIModerationEngine(built._client, built._router, settings.moderation, cache)
    judge(harness, engine, ["a", "b"])
    assert len(cache) == 2
