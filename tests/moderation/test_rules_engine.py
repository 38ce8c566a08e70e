"""Local rules: whole words and patterns, case-insensitive, every matching rule named."""

from __future__ import annotations

import asyncio
from typing import Any

from chatgpt_proxy.moderation import ModerationContext, RulesEngine, Verdict
from chatgpt_proxy.settings import RuleSettings

CONTEXT = ModerationContext("chat.completions", key_id="key_test")


def judge_rules(rules: list[RuleSettings], items: list[Any]) -> Verdict:
    return asyncio.run(RulesEngine(rules).judge(items, CONTEXT))


def test_rules_match_whole_words_case_insensitively() -> None:
    rules = [RuleSettings(name="secrets", words=("password", "c++", "api key"))]
    assert judge_rules(rules, ["my PASSWORD is hunter2"]).reasons == ("secrets",)
    assert judge_rules(rules, ["I like C++."]).blocked
    assert judge_rules(rules, ["the API   Key here"]).blocked
    assert not judge_rules(rules, ["passwords are plural"]).blocked
    assert not judge_rules(rules, ["abc++ is another word"]).blocked


def test_rules_match_patterns_and_name_every_rule_that_matched() -> None:
    rules = [
        RuleSettings(name="card", patterns=(r"\b\d{4}(?: ?\d{4}){3}\b",)),
        RuleSettings(name="ticket", patterns=(r"ticket-\d+",)),
        RuleSettings(name="unused", words=("zebra",)),
    ]
    verdict = judge_rules(rules, ["hello", "card 4111 1111 1111 1111", "TICKET-42"])
    assert verdict == Verdict(True, ("card", "ticket"), "rules", (1, 2))


def test_rules_ignore_images_and_pass_clean_text() -> None:
    rules = [RuleSettings(name="r", words=("secret",))]
    image = {"type": "image_url", "image_url": {"url": "https://x.test/secret.png"}}
    assert judge_rules(rules, [image, "nothing here"]) == Verdict.allow("rules")


def test_judging_reads_no_key_policy_or_endpoint() -> None:
    rules = [RuleSettings(name="r", words=("bad",))]
    strict = ModerationContext("embeddings", key_id=None, strict=True, output=True)
    engine = RulesEngine(rules)
    assert asyncio.run(engine.judge(["bad"], strict)) == asyncio.run(engine.judge(["bad"], CONTEXT))
    assert RulesEngine([]).name == "rules"
    assert asyncio.run(RulesEngine([]).judge(["bad"], CONTEXT)) == Verdict.allow("rules")
