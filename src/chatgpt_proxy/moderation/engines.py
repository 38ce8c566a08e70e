"""The engine seam: what every moderation engine is, built-in or third-party, and how one is loaded.

An engine judges the items of one request and says whether they are blocked, and why::

    class Engine(Protocol):
        name: str
        async def judge(self, items: Sequence[Item], context: ModerationContext) -> Verdict: ...

Engines never see the client key's secret; the context carries what a policy needs. An engine that
cannot judge either raises ``errors.ModerationUnavailable`` (fail closed) or lets the items pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.moderation.inputs import Item
from chatgpt_proxy.settings import ModerationSettings


@dataclass(frozen=True, slots=True)
class ModerationContext:
    """Who asked and where: ``strict`` for keys whose policy is ``moderation: strict``."""

    endpoint: str
    key_id: str | None = None
    strict: bool = False
    output: bool = False  # judging the upstream's answer rather than the client's request


@dataclass(frozen=True, slots=True)
class Verdict:
    """An engine's decision: ``reasons`` are category or rule names, never the text judged.

    ``items`` are the indices of the items that caused a block, when the engine knows them.

    >>> Verdict(blocked=True, reasons=("violence",), engine="openai", items=(2,))
    """

    blocked: bool
    reasons: tuple[str, ...]
    engine: str
    items: tuple[int, ...] = ()

    @classmethod
    def allow(cls, engine: str) -> Verdict:
        return cls(blocked=False, reasons=(), engine=engine)


@runtime_checkable
class Engine(Protocol):
    name: str

    async def judge(self, items: Sequence[Item], context: ModerationContext) -> Verdict: ...


def load_engine(spec: str, settings: ModerationSettings) -> Engine:
    """Build a third-party engine from ``"package.module:factory"``: ``factory(settings)``."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"moderation.engines: cannot load {spec!r}: {exc}") from exc
    if not callable(target):
        raise ConfigError(f"moderation.engines: {spec!r} is not callable")
    try:
        engine = target(settings)
    except Exception as exc:  # a plug-in's own failure, reported at start-up with its name
        raise ConfigError(f"moderation.engines: {spec!r} failed: {exc!r}") from exc
    if not isinstance(engine, Engine) or not isinstance(getattr(engine, "name", None), str):
        raise ConfigError(
            f"moderation.engines: {spec!r} did not return an engine "
            "(an object with a str name and an async judge(items, context) method)"
        )
    return engine
