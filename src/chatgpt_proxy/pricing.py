"""What a request cost in USD, from the operator's ``pricing`` table (model glob → price).

Prices are USD per 1M tokens, prompt and completion apart; the first glob that matches the
model wins, in the order of the configuration. A model without a price costs nothing: its
usage is recorded with ``cost`` null and cost budgets do not see it::

    pricing = Pricing({"gpt-4o-mini*": PriceSettings(prompt=0.15, completion=0.6)})
    pricing.cost("gpt-4o-mini", Usage(1000, 500, 1500))   # 0.00045
    pricing.cost("o3", Usage(1000, 500, 1500))            # None: no price configured
    pricing.estimate("gpt-4o-mini", 2000)                 # 0.0012, at the dearer rate
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from chatgpt_proxy.memo import ABSENT, Memo, key_chars
from chatgpt_proxy.settings import PriceSettings
from chatgpt_proxy.token_usage import Usage

_PER_TOKEN = 1e-6  # prices are per million tokens
_MAX_CACHED_MODELS = 4096  # model names come from clients: bound what is remembered
_MAX_CACHED_CHARS = 1 << 20  # and the sum of their lengths


class Pricing:
    """The price of each model, looked up once per model name and then remembered."""

    def __init__(self, prices: Mapping[str, PriceSettings]) -> None:
        self._prices = tuple(prices.items())
        self._resolved: Memo[str, PriceSettings | None] = Memo(
            _MAX_CACHED_MODELS, max_bytes=_MAX_CACHED_CHARS, weigh=key_chars
        )

    def __bool__(self) -> bool:
        return bool(self._prices)

    def price(self, model: str | None) -> PriceSettings | None:
        if not self._prices or model is None:
            return None
        found = self._resolved.get(model, ABSENT)
        if found is ABSENT:
            found = next((p for glob, p in self._prices if fnmatchcase(model, glob)), None)
            self._resolved.remember(model, found)
        return found

    def cost(self, model: str | None, usage: Usage | None) -> float | None:
        """USD for ``usage`` of ``model``; ``None`` when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        if usage is None:
            return 0.0
        spent = usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion
        return spent * _PER_TOKEN

    def estimate(self, model: str | None, tokens: int) -> float:
        """An upper-leaning guess of what ``tokens`` will cost, for a budget's reservation."""
        price = self.price(model)
        if price is None:
            return 0.0
        return tokens * max(price.prompt, price.completion) * _PER_TOKEN
