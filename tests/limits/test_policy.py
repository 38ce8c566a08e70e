"""The small pieces every limiter shares: which limits a key has, reset times, prices."""

from __future__ import annotations

import pytest

from chatgpt_proxy.keystore import KeyPolicy
from chatgpt_proxy.limits.policy import Limits, default_policy, duration, limits_of, rate_headers
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.settings import LimitSettings, PriceSettings
from chatgpt_proxy.token_usage import Usage


def test_a_policy_with_only_models_has_no_limits_to_enforce() -> None:
    assert limits_of(KeyPolicy(models=("gpt-4o*",), moderation="strict")) is None
    limits = limits_of(KeyPolicy(rpm=5, daily_cost_budget=1.0))
    assert limits is not None and limits.windowed and limits.daily and limits.priced
    assert not limits.total


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (59.9301, "59.931s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (61.2, "1m2s"),
    ],
)
def test_reset_times_read_like_openais(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_never_show_a_negative_remainder() -> None:
    headers = rate_headers(Limits(rpm=2, tpm=10), requests=3, tokens=50, reset=12.5)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "12.5s"


def test_the_default_policy_comes_from_the_limits_section() -> None:
    settings = LimitSettings.model_validate({"default_rpm": 60, "default_models": ["gpt-4o*"]})
    assert default_policy(settings) == KeyPolicy(rpm=60, models=("gpt-4o*",))
    assert default_policy(LimitSettings.model_validate({})) == KeyPolicy()


def test_prices_first_matching_glob_wins_and_unpriced_models_cost_nothing() -> None:
    pricing = Pricing(
        {
            "gpt-4o-mini*": PriceSettings(prompt=0.15, completion=0.6),
            "gpt-4o*": PriceSettings(prompt=2.5, completion=10.0),
        }
    )
    assert pricing.cost("gpt-4o-mini", Usage(1_000, 500, 1_500)) == pytest.approx(0.00045)
    assert pricing.cost("gpt-4o", Usage(1_000_000, 0, 1_000_000)) == pytest.approx(2.5)
    assert pricing.cost("o3", Usage(1_000, 500, 1_500)) is None
    assert pricing.cost("gpt-4o", None) == 0.0
    assert pricing.estimate("gpt-4o", 1_000_000) == pytest.approx(10.0)  # the dearer rate
    assert pricing.estimate("o3", 1_000_000) == 0.0
    assert not Pricing({})
