"""Pricing: the first matching glob's price, per million tokens; no price costs nothing."""

from __future__ import annotations

import pytest

from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.settings import PriceSettings
from chatgpt_proxy.token_usage import Usage

MINI = PriceSettings(prompt=0.15, completion=0.6)
ANY_GPT = PriceSettings(prompt=5.0, completion=15.0)


def test_the_first_matching_glob_sets_the_price() -> None:
    pricing = Pricing({"gpt-4o-mini*": MINI, "gpt-*": ANY_GPT})
    assert pricing.price("gpt-4o-mini-2024") == MINI
    assert pricing.price("gpt-4o") == ANY_GPT
    assert pricing.price("o3") is None
    assert pricing.price(None) is None
    assert pricing


def test_cost_counts_prompt_and_completion_at_their_rates() -> None:
    pricing = Pricing({"gpt-4o-mini*": MINI})
    assert pricing.cost("gpt-4o-mini", Usage(1000, 500, 1500)) == pytest.approx(0.00045)
    assert pricing.cost("gpt-4o-mini", None) == 0.0  # priced, but no usage reported
    assert pricing.cost("o3", Usage(1000, 500, 1500)) is None


def test_an_estimate_leans_to_the_dearer_rate() -> None:
    pricing = Pricing({"gpt-4o-mini*": MINI})
    assert pricing.estimate("gpt-4o-mini", 2000) == pytest.approx(0.0012)
    assert pricing.estimate("o3", 2000) == 0.0


def test_without_prices_nothing_is_priced() -> None:
    pricing = Pricing({})
    assert not pricing
    assert pricing.cost("gpt-4o", Usage(1, 1, 2)) is None
    assert pricing.estimate("gpt-4o", 10) == 0.0


def test_a_remembered_price_stays_the_configured_one() -> None:
    pricing = Pricing({"gpt-*": ANY_GPT})
    assert [pricing.price("gpt-4o") for _ in range(3)] == [ANY_GPT] * 3
    assert [pricing.price("o1") for _ in range(3)] == [None] * 3


def test_prices_of_long_model_names_are_remembered_within_a_bound_of_characters() -> None:
    pricing = Pricing({"gpt-*": ANY_GPT})
    remembered = pricing._resolved  # what a client can make the pricing keep
    names = [f"gpt-{n:04d}" + "m" * 100_000 for n in range(30)]
    for name in names:
        assert pricing.price(name) == ANY_GPT
        assert remembered.weight <= (remembered.max_bytes or 0)
    assert len(remembered) < len(names)
    assert remembered.get(names[0]) is None and remembered.get(names[-1]) == ANY_GPT
