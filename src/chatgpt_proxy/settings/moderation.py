"""The settings of moderation: its engines, thresholds and local rules."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from chatgpt_proxy.settings.base import _Section


class RuleSettings(_Section):
    name: str = Field(
        description="name of the rule: the reason a blocked client is told",
        pattern=r"^[A-Za-z0-9_.:/ -]{1,60}$",
    )
    # default= by keyword: rules are built in code too, and mypy reads only that spelling.
    words: tuple[str, ...] = Field(
        default=(), description="words or phrases that block, as whole words, case-insensitive"
    )
    patterns: tuple[str, ...] = Field(
        default=(), description="regular expressions (Python syntax) that block, case-insensitive"
    )

    @field_validator("words")
    @classmethod
    def _no_blank_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not word.strip() for word in value):
            raise ValueError("a word is empty")
        return value

    @model_validator(mode="after")
    def _compiles(self) -> RuleSettings:
        if not self.words and not self.patterns:
            raise ValueError(f"rule {self.name!r} has neither words nor patterns")
        for pattern in self.patterns:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad pattern {pattern!r}: {exc}") from exc
        return self


_BUILTIN_ENGINES = ("rules", "openai")
_ENGINE_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ModerationSettings(_Section):
    enabled: bool = Field(True, description="check inputs before forwarding them")
    engines: tuple[str, ...] = Field(
        ("rules", "openai"),
        description='engines in the order they run, the first block wins: "rules", "openai", '
        'or "package.module:factory" for a third-party engine',
    )
    upstream: str | None = Field(
        None,
        description="upstream whose keys serve moderation calls; null: the upstream that "
        "serves the moderation model",
    )
    model: str = Field("omni-moderation-latest", description="model of the moderation endpoint")
    timeout: float = Field(
        10.0, gt=0, description="seconds one moderation check may take, retries included"
    )
    on_error: Literal["block", "allow"] = Field(
        "block",
        description="when the moderation endpoint fails: block (503 moderation_unavailable) "
        "or allow (logged)",
    )
    retry_after: float = Field(
        5.0, gt=0, description="retry-after sent with moderation_unavailable, seconds"
    )
    categories: tuple[str, ...] | None = Field(
        None, description="categories that block; null: every category the endpoint flags"
    )
    thresholds: dict[str, float] = Field(
        {},
        description='category -> score at or above which it blocks even if not flagged; "*" '
        "for every category",
    )
    strict_thresholds: dict[str, float] = Field(
        {"*": 0.5},
        description='thresholds added for keys whose policy is moderation: strict; "*" for '
        "every category (the lower of the two thresholds applies)",
    )
    rules: tuple[RuleSettings, ...] = Field(
        (), description="local rules: each a name with words and/or regular expressions"
    )
    check_embeddings: bool = Field(False, description="also check the input of embeddings")
    check_moderations: bool = Field(
        False, description="also check the input of moderations requests themselves"
    )
    check_output: bool = Field(
        False, description="also check non-streamed answers; a flagged answer becomes a 400"
    )
    log_inputs: bool = Field(
        False, description="keep the flagged input in the block records (privacy: off)"
    )
    cache_size: int = Field(100_000, ge=0, description="verdicts cached in memory, at most")
    cache_bytes: int = Field(
        16 << 20,
        ge=0,
        description="bytes of memory the cached verdicts may take, at most (~500 each)",
    )
    cache_ttl: float = Field(86400.0, gt=0, description="seconds a cached verdict is trusted")
    recent_blocks: int = Field(1000, ge=0, description="blocks kept for GET /admin/moderation")

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in _BUILTIN_ENGINES and not _ENGINE_FACTORY.match(name):
                raise ValueError(
                    f"unknown engine {name!r}: use rules, openai or package.module:factory"
                )
        if len(value) != len(set(value)):
            raise ValueError("an engine is listed twice")
        return value

    @field_validator("thresholds", "strict_thresholds")
    @classmethod
    def _scores(cls, value: dict[str, float]) -> dict[str, float]:
        for category, score in value.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"threshold of {category!r} must be between 0 and 1")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, value: tuple[RuleSettings, ...]) -> tuple[RuleSettings, ...]:
        names = [rule.name for rule in value]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        return value
