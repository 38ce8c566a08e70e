"""Local rules: words and regular expressions that block, each rule with a name. No network."""

from __future__ import annotations

import re
from collections.abc import Sequence

from chatgpt_proxy.moderation.engines import ModerationContext, Verdict
from chatgpt_proxy.moderation.inputs import Item
from chatgpt_proxy.settings import RuleSettings


def _word_pattern(word: str) -> str:
    # Whole words even when a word starts or ends with punctuation ("c++"), where \b would not
    # match; any run of whitespace stands for a space inside a phrase.
    body = r"\s+".join(re.escape(part) for part in word.split())
    return rf"(?<!\w){body}(?!\w)"


class RulesEngine:
    """Blocks texts that contain a rule's words (whole words) or match its patterns.

    Matching is case-insensitive; the reasons are the names of every rule that matched. Images
    are not inspected: a URL or base64 payload says nothing a word list could judge.

    >>> engine = RulesEngine([RuleSettings(name="secrets", words=("password",))])
    >>> (await engine.judge(["my PASSWORD is"], ModerationContext("chat.completions"))).reasons
    ('secrets',)
    """

    name = "rules"

    def __init__(self, rules: Sequence[RuleSettings]) -> None:
        self._rules: list[tuple[str, list[re.Pattern[str]]]] = []
        for rule in rules:
            compiled = [re.compile(pattern, re.IGNORECASE) for pattern in rule.patterns]
            if rule.words:
                words = "|".join(_word_pattern(word) for word in rule.words)
                compiled.insert(0, re.compile(words, re.IGNORECASE))
            self._rules.append((rule.name, compiled))

    async def judge(self, items: Sequence[Item], context: ModerationContext) -> Verdict:
        reasons: list[str] = []
        hits: set[int] = set()
        for name, patterns in self._rules:
            matched = [
                index
                for index, item in enumerate(items)
                if isinstance(item, str) and any(p.search(item) for p in patterns)
            ]
            if matched:
                reasons.append(name)
                hits.update(matched)
        if not reasons:
            return Verdict.allow(self.name)
        return Verdict(True, tuple(reasons), self.name, tuple(sorted(hits)))
