"""The moderator: engines in order, key policies, records of blocks, third-party engines."""

from __future__ import annotations

import secrets
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from moderation_harness import Harness, client_key
from redis.asyncio import Redis

from chatgpt_proxy.errors import ConfigError, ContentPolicyViolation
from chatgpt_proxy.moderation import Moderator, RulesEngine, Verdict, build_moderator, cache_key
from chatgpt_proxy.settings import RuleSettings
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.router import Router
from services import redis_url

RULES = [{"name": "no-secrets", "words": ["password"]}]


def chat(*texts: str) -> dict[str, Any]:
    roles = ["user", "assistant"]
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)],
    }


def blocked(
    harness: Harness, moderator: Moderator, endpoint: str, document: Any, **key: Any
) -> str:
    with pytest.raises(ContentPolicyViolation) as caught:
        harness.check(moderator, endpoint, document, client_key(**key))
    error = caught.value
    assert (error.status, error.code) == (400, "content_policy_violation")
    assert error.headers == {"x-should-retry": "false"}
    return error.message


def test_a_ten_turn_chat_sends_only_each_turns_new_messages(harness: Harness) -> None:
    moderator = harness.moderator()
    history: list[str] = []
    for turn in range(10):
        history.append(f"question {turn}")
        harness.check(moderator, "chat.completions", chat(*history))
        history.append(f"answer {turn}")
    calls = harness.fake.moderation_calls
    assert calls[0] == ["question 0"]
    assert calls[1:] == [[f"answer {t - 1}", f"question {t}"] for t in range(1, 10)]


def test_a_flagged_request_is_rejected_naming_the_categories(harness: Harness) -> None:
    moderator = harness.moderator()
    message = blocked(harness, moderator, "chat.completions", chat("hi", "ok", "FLAG:hate you"))
    assert message == "Your request was rejected by the content policy: flagged for hate."
    assert moderator.blocks_total == 1


@pytest.mark.parametrize(
    ("endpoint", "document"),
    [
        ("completions", {"prompt": ["fine", "FLAG:violence"]}),
        ("images.generations", {"prompt": "FLAG:violence"}),
        ("images.edits", {"prompt": "FLAG:violence"}),
        ("audio.speech", {"input": "FLAG:violence"}),
        ("audio.transcriptions", {"prompt": "FLAG:violence"}),
        ("responses", {"input": [{"role": "user", "content": "FLAG:violence"}]}),
        ("responses", {"instructions": "FLAG:violence", "input": "hi"}),
    ],
)
def test_every_endpoint_is_moderated(
    harness: Harness, endpoint: str, document: dict[str, Any]
) -> None:
    message = blocked(harness, harness.moderator(), endpoint, document)
    assert message.endswith("flagged for violence.")


def test_embeddings_and_moderations_are_opt_in(harness: Harness) -> None:
    moderator = harness.moderator()
    harness.check(moderator, "embeddings", {"input": "FLAG:hate"})
    harness.check(moderator, "moderations", {"input": "FLAG:hate"})
    assert harness.fake.moderation_calls == []
    moderator = harness.moderator(check_embeddings=True, check_moderations=True)
    blocked(harness, moderator, "embeddings", {"input": ["ok", "FLAG:hate"]})
    blocked(harness, moderator, "moderations", {"input": "FLAG:hate"})


def test_rules_run_first_and_block_without_any_upstream_call(harness: Harness) -> None:
    moderator = harness.moderator(rules=RULES)
    message = blocked(harness, moderator, "completions", {"prompt": "my password is FLAG:hate"})
    assert message.endswith("flagged for no-secrets.")
    assert harness.fake.moderation_calls == []
    assert moderator.recent_blocks()[0]["engine"] == "rules"


def test_engine_order_is_configurable(harness: Harness) -> None:
    moderator = harness.moderator(rules=RULES, engines=["openai", "rules"])
    message = blocked(harness, moderator, "completions", {"prompt": "my password is FLAG:hate"})
    assert message.endswith("flagged for hate.")
    moderator = harness.moderator(rules=RULES, engines=["openai", "rules"])
    blocked(harness, moderator, "completions", {"prompt": "my password"})
    assert len(harness.fake.moderation_calls) == 2


def test_exempt_keys_skip_moderation_entirely(harness: Harness) -> None:
    moderator = harness.moderator(rules=RULES)
    document = {"prompt": "password FLAG:hate"}
    harness.check(moderator, "completions", document, client_key("exempt"))
    assert harness.fake.moderation_calls == []
    assert moderator.blocks_total == 0


def test_strict_keys_use_the_strict_thresholds(harness: Harness) -> None:
    moderator = harness.moderator(strict_thresholds={"self-harm": 0.01})
    harness.check(moderator, "completions", {"prompt": "mild"}, client_key())
    message = blocked(harness, moderator, "completions", {"prompt": "mild"}, moderation="strict")
    assert message.endswith("flagged for self-harm.")


def test_disabled_moderation_checks_nothing(harness: Harness) -> None:
    moderator = harness.moderator(enabled=False, rules=RULES)
    harness.check(moderator, "completions", {"prompt": "password FLAG:hate"})
    assert harness.fake.moderation_calls == []
    assert moderator.engines == ()


# ---------------------------------------------------------------- records of blocks


def test_block_records_hold_no_input_unless_asked(harness: Harness) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    settings = harness.settings().moderation
    rules = [RulesEngine([RuleSettings(name="r", words=("bad",))])]
    moderator = Moderator(settings, rules, now=lambda: moment)
    blocked(harness, moderator, "completions", {"prompt": ["fine", "a bad one"]}, key_id="k1")
    assert moderator.recent_blocks() == [
        {
            "time": "2030-01-02T03:04:05+00:00",
            "key_id": "k1",
            "endpoint": "completions",
            "engine": "rules",
            "reasons": ["r"],
            "output": False,
        }
    ]
    logged = harness.settings(log_inputs=True).moderation
    moderator = Moderator(logged, rules)
    blocked(harness, moderator, "completions", {"prompt": ["fine", "a bad one"]})
    assert moderator.recent_blocks()[0]["input"] == ["a bad one"]


def test_recent_blocks_are_newest_first_and_bounded(harness: Harness) -> None:
    moderator = harness.moderator(rules=RULES, engines=["rules"], recent_blocks=3)
    for n in range(5):
        blocked(harness, moderator, "completions", {"prompt": "password"}, key_id=f"k{n}")
    assert [r["key_id"] for r in moderator.recent_blocks()] == ["k4", "k3", "k2"]
    assert [r["key_id"] for r in moderator.recent_blocks(limit=1)] == ["k4"]
    assert moderator.blocks_total == 5


# ---------------------------------------------------------------- output moderation


def test_output_moderation_is_off_by_default(harness: Harness) -> None:
    answer = orjson.dumps({"choices": [{"message": {"content": "FLAG:violence"}}]})
    moderator = harness.moderator()
    harness.run(moderator.check_output("chat.completions", answer, client_key()))
    assert harness.fake.moderation_calls == []


def test_a_flagged_answer_becomes_the_same_400(harness: Harness) -> None:
    moderator = harness.moderator(check_output=True)
    answer = orjson.dumps({"choices": [{"message": {"content": "FLAG:violence"}}]})
    with pytest.raises(ContentPolicyViolation, match="flagged for violence"):
        harness.run(moderator.check_output("chat.completions", answer, client_key()))
    assert moderator.recent_blocks()[0]["output"] is True
    clean = orjson.dumps({"choices": [{"text": "fine"}]})
    harness.run(moderator.check_output("completions", clean, client_key()))
    harness.run(moderator.check_output("completions", b"not json", client_key()))


# ---------------------------------------------------------------- third-party engines


def test_third_party_engine_is_loaded_by_module_path(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"cgp_engine_{secrets.token_hex(4)}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from chatgpt_proxy.moderation import Verdict

            class Tickets:
                name = "tickets"
                closed = False

                def __init__(self, settings):
                    self.model = settings.model

                async def judge(self, items, context):
                    hit = any(isinstance(i, str) and "TICKET-" in i for i in items)
                    return Verdict(hit, ("ticket numbers",) if hit else (), self.name)

                async def close(self):
                    Tickets.closed = True

            def build(settings):
                return Tickets(settings)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    moderator = harness.moderator(engines=[f"{module}:build", "openai"])
    message = blocked(harness, moderator, "completions", {"prompt": "see TICKET-7 FLAG:hate"})
    assert message.endswith("flagged for ticket numbers.")
    assert harness.fake.moderation_calls == []
    harness.run(moderator.close())
    assert moderator.engines[0].closed is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("no_such_module_xyz:build", "cannot load"),
        ("json:no_such_factory", "cannot load"),
        ("json:__doc__", "not callable"),
        ("json:dumps", "failed: TypeError"),
        ("builtins:str", "did not return an engine"),
    ],
)
def test_a_bad_third_party_engine_is_a_config_error(
    harness: Harness, spec: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        harness.moderator(engines=[spec])


# ---------------------------------------------------------------- shared cache


def test_replicas_share_verdicts_through_redis(harness: Harness) -> None:
    url = redis_url()
    settings = harness.settings(engines=["openai"])
    # A fresh model name keeps this test's keys apart from earlier runs' (key = item + model).
    model = f"omni-moderation-latest-{secrets.token_hex(4)}"
    settings = settings.model_copy(
        update={"moderation": settings.moderation.model_copy(update={"model": model})}
    )
    router = Router.from_settings(settings.upstreams, settings.pool)
    client = UpstreamClient(harness.session, settings.timeouts, settings.retries)

    async def scenario() -> None:
        redis = Redis.from_url(url)
        try:
            one = build_moderator(settings, client, router, redis=redis)
            two = build_moderator(settings, client, router, redis=redis)
            await one.check("completions", {"prompt": ["a", "b"]}, client_key())
            await two.check("completions", {"prompt": ["b", "a", "c"]}, client_key())
            await one.close()
            await two.close()
            assert await redis.ping()  # the app's client is not closed by the moderator
        finally:
            await redis.delete(*("cgp:mod:" + cache_key(item, model) for item in "abc"))
            await redis.aclose()

    harness.run(scenario())
    assert harness.fake.moderation_calls == [["a", "b"], ["c"]]


class _Unspecific:
    """A third-party engine that blocks without saying which item did."""

    name = "unspecific"

    async def judge(self, items: Any, context: Any) -> Verdict:
        hit = any(isinstance(i, str) and "TICKET-" in i for i in items)
        return Verdict(hit, ("tickets",) if hit else (), self.name)


def test_many_requests_are_judged_together_and_the_first_blocked_is_named(
    harness: Harness,
) -> None:
    requests: list[tuple[str, Any]] = [
        ("chat.completions", chat("fine", "also fine")),
        ("chat.completions", chat("")),  # no items: nothing to blame it for
        ("chat.completions", chat("fine", "my password")),
        ("chat.completions", chat("password again")),
    ]
    rules = Moderator(harness.settings(enabled=True).moderation, [RulesEngine(_rules())])
    assert harness.run(rules.first_blocked(requests, client_key())) == (2, "no-secrets")
    assert rules.recent_blocks()[0]["reasons"] == ["no-secrets"] and rules.blocks_total == 1
    assert harness.run(rules.first_blocked(requests[:2], client_key())) is None
    assert harness.run(rules.first_blocked(requests, client_key("exempt"))) is None

    unspecific = Moderator(harness.settings(enabled=True).moderation, [_Unspecific()])
    tickets = [("completions", {"prompt": p}) for p in ("a", "b", "TICKET-1", "TICKET-2")]
    assert harness.run(unspecific.first_blocked(tickets, None)) == (2, "tickets")


def _rules() -> list[RuleSettings]:
    return [RuleSettings.model_validate(rule) for rule in RULES]
