"""The moderation settings: known engines, scores between 0 and 1, rules that name and compile."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatgpt_proxy.settings import ModerationSettings, RuleSettings


def test_moderation_defaults_block_on_both_built_in_engines() -> None:
    moderation = ModerationSettings()
    assert moderation.enabled is True
    assert moderation.engines == ("rules", "openai")
    assert moderation.upstream is None and moderation.categories is None
    assert moderation.on_error == "block"
    assert moderation.thresholds == {} and moderation.strict_thresholds == {"*": 0.5}
    assert moderation.rules == ()
    assert not (moderation.check_embeddings or moderation.check_output or moderation.log_inputs)


def test_a_third_party_engine_is_named_by_its_factory() -> None:
    engines = ("rules", "my_package.engines:make_engine")
    assert ModerationSettings(engines=engines).engines == engines
    for bad in ("magic", "my_package.engines", "my package:factory", ":factory"):
        with pytest.raises(ValidationError, match="unknown engine"):
            ModerationSettings.model_validate({"engines": [bad]})


def test_moderation_engines_thresholds_and_rules_are_checked() -> None:
    with pytest.raises(ValidationError, match="twice"):
        ModerationSettings.model_validate({"engines": ["rules", "rules"]})
    with pytest.raises(ValidationError, match="between 0 and 1"):
        ModerationSettings.model_validate({"thresholds": {"hate": 1.5}})
    rule = {"name": "a", "words": ["x"]}
    with pytest.raises(ValidationError, match="unique"):
        ModerationSettings.model_validate({"rules": [rule, rule]})


@pytest.mark.parametrize("field", ["thresholds", "strict_thresholds"])
def test_thresholds_are_scores_from_0_to_1_inclusive(field: str) -> None:
    made = ModerationSettings.model_validate({field: {"*": 0.0, "hate": 1.0}})
    assert getattr(made, field) == {"*": 0.0, "hate": 1.0}
    with pytest.raises(ValidationError, match="'violence' must be between 0 and 1"):
        ModerationSettings.model_validate({field: {"violence": -0.1}})


@pytest.mark.parametrize(
    "values",
    [{"on_error": "ignore"}, {"timeout": 0}, {"retry_after": 0}, {"cache_size": -1}],
    ids=["on-error", "timeout", "retry-after", "cache-size"],
)
def test_bad_moderation_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModerationSettings.model_validate(values)


def test_rules_need_words_or_patterns_that_compile() -> None:
    assert RuleSettings(name="r", words=("w",)).patterns == ()
    with pytest.raises(ValidationError, match="neither words nor patterns"):
        RuleSettings(name="empty")
    with pytest.raises(ValidationError, match="bad pattern"):
        RuleSettings(name="r", patterns=("(unclosed",))
    with pytest.raises(ValidationError, match="empty"):
        RuleSettings(name="r", words=(" ",))


def test_a_rules_name_is_the_reason_a_client_is_told() -> None:
    assert RuleSettings(name="no secrets: sk-/keys", words=("w",)).name == "no secrets: sk-/keys"
    for bad in ("", "x" * 61, "line\nbreak", "quote'"):
        with pytest.raises(ValidationError, match="name"):
            RuleSettings(name=bad, words=("w",))
