"""The engine seam: verdicts, contexts, engines loaded by module path, and the settings that
choose and tune the engines."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.moderation import (
    ModerationContext,
    Verdict,
)
from chatgpt_proxy.moderation.engines import Engine, load_engine
from chatgpt_proxy.moderation.inputs import Item
from chatgpt_proxy.settings import ModerationSettings, parse_settings

CONTEXT = ModerationContext("chat.completions", key_id="key_test")


def test_rule_settings_are_validated_at_load() -> None:
    yaml_text = """
upstreams: [{name: openai, keys: [sk-x]}]
moderation:
  rules:
    - {name: broken, patterns: ["(unclosed"]}
"""
    with pytest.raises(ConfigError, match=r"moderation\.rules\[0\].*broken.*unclosed"):
        parse_settings(yaml_text, {})
    with pytest.raises(ConfigError, match="neither words nor patterns"):
        parse_settings(
            "upstreams: [{name: openai, keys: [sk-x]}]\nmoderation: {rules: [{name: empty}]}", {}
        )


@pytest.mark.parametrize(
    ("moderation", "problem"),
    [
        ("{engines: [nonsense]}", "unknown engine"),
        ("{engines: [rules, rules]}", "listed twice"),
        ("{thresholds: {hate: 1.5}}", "between 0 and 1"),
        ("{on_error: maybe}", "on_error"),
        ("{rules: [{name: a, words: [x]}, {name: a, words: [y]}]}", "unique"),
    ],
)
def test_moderation_settings_refuse_bad_values(moderation: str, problem: str) -> None:
    text = f"upstreams: [{{name: openai, keys: [sk-x]}}]\nmoderation: {moderation}\n"
    with pytest.raises(ConfigError, match=problem):
        parse_settings(text, {})


# ---------------------------------------------------------------- loading an engine


class _Engine:
    name = "third-party"

    def __init__(self, settings: ModerationSettings) -> None:
        self.settings = settings

    async def judge(self, items: Sequence[Item], context: ModerationContext) -> Verdict:
        return Verdict.allow(self.name)


def third_party(settings: ModerationSettings) -> _Engine:
    return _Engine(settings)


def failing(settings: ModerationSettings) -> _Engine:
    raise RuntimeError("no licence")


def not_an_engine(settings: ModerationSettings) -> object:
    return object()


NOT_CALLABLE = 3


def test_an_engine_is_loaded_by_module_path_with_the_settings() -> None:
    settings = ModerationSettings()
    engine = load_engine(f"{__name__}:third_party", settings)
    assert isinstance(engine, Engine) and engine.name == "third-party"
    assert isinstance(engine, _Engine) and engine.settings is settings


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("missing", "cannot load"),
        ("NOT_CALLABLE", "is not callable"),
        ("failing", "failed: RuntimeError"),
        ("not_an_engine", "did not return an engine"),
    ],
)
def test_a_bad_engine_is_a_config_error_naming_it(attribute: str, problem: str) -> None:
    spec = f"{__name__}:{attribute}"
    with pytest.raises(ConfigError, match=problem) as caught:
        load_engine(spec, ModerationSettings())
    assert spec in str(caught.value)
    with pytest.raises(ConfigError, match="cannot load"):
        load_engine("no_such_module_anywhere:factory", ModerationSettings())


def test_an_allowing_verdict_has_no_reasons() -> None:
    assert Verdict.allow("rules") == Verdict(blocked=False, reasons=(), engine="rules", items=())
    assert not CONTEXT.strict and not CONTEXT.output
