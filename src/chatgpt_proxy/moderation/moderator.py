"""The moderation step of the pipeline: engines in order, the first block wins, blocks recorded.

Its pipeline stage (``Moderate``) calls it before a request goes upstream, and may have the
relay call it on a non-streamed answer::

    moderator = build_moderator(settings, client, router, redis=redis)
    await moderator.check("chat.completions", document, key)   # raises ContentPolicyViolation
    await moderator.check_output("chat.completions", body, key) # the answer, before the client
    moderator.recent_blocks(50)                                 # for GET /admin/moderation
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from chatgpt_proxy.errors import ConfigError, ContentPolicyViolation, ProxyError
from chatgpt_proxy.exchange import Exchange, Next
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.moderation.cache import (
    MemoryVerdictCache,
    RedisVerdictCache,
    VerdictCache,
    connect_redis,
    redis_prefix,
)
from chatgpt_proxy.moderation.engines import Engine, ModerationContext, Verdict, load_engine
from chatgpt_proxy.moderation.inputs import Item, moderation_items, output_items
from chatgpt_proxy.moderation.openai_engine import OpenAIModerationEngine
from chatgpt_proxy.moderation.rules_engine import RulesEngine
from chatgpt_proxy.settings import ModerationSettings, Settings
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.router import Router

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("chatgpt_proxy.moderation")

_LOGGED_TEXT_CHARS = 2000  # per item, in a block record when log_inputs is on
_LOGGED_URL_CHARS = 200  # image URLs may be whole base64 images


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Moderator:
    """Checks what a client sends (and, optionally, what it gets back) against the policy.

    >>> moderator = Moderator(settings.moderation, [RulesEngine(settings.moderation.rules)])
    >>> await moderator.check("completions", {"prompt": "hello"}, key)   # passes: returns None
    """

    def __init__(
        self,
        settings: ModerationSettings,
        engines: Sequence[Engine],
        *,
        cache: VerdictCache | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings
        self.engines = tuple(engines)
        self._cache = cache
        self._now = now
        self._recent: deque[dict[str, Any]] = deque(maxlen=settings.recent_blocks)
        self.blocks_total = 0

    @property
    def errors_total(self) -> int:
        """Failed moderation calls, whether the request was then blocked or allowed."""
        return sum(int(getattr(engine, "errors_total", 0)) for engine in self.engines)

    async def check(
        self, endpoint: str, document: Mapping[str, Any], key: ClientKey | None
    ) -> None:
        """Raise ``ContentPolicyViolation`` (or ``ModerationUnavailable``) for a blocked request."""
        if not self.applies_to(key):
            return
        items = self._items(endpoint, document)
        if items:
            await self._judge(items, _input_context(endpoint, key))

    def applies_to(self, key: ClientKey | None) -> bool:
        """Whether ``key``'s requests are moderated at all (enabled, and the key not exempt)."""
        return self.settings.enabled and _mode(key) != "exempt"

    async def first_blocked(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], key: ClientKey | None
    ) -> tuple[int, str] | None:
        """Many requests (``(endpoint, document)``, as ``check`` takes one) judged together:
        one engine call for all their items. The first blocked one, by its index, and the
        reasons; the block is recorded as ``check`` records one."""
        if not self.applies_to(key) or not requests:
            return None
        items: list[Item] = []
        owners: list[int] = []  # the request each item comes from
        for index, (endpoint, document) in enumerate(requests):
            found = self._items(endpoint, document)
            items += found
            owners += [index] * len(found)
        if not items:
            return None
        context = _input_context(requests[0][0], key)
        blocked = await self._blocked(items, context)
        if blocked is None:
            return None
        engine, verdict = blocked
        return await self._blamed(engine, verdict, items, owners, context)

    async def _blamed(
        self,
        engine: Engine,
        verdict: Verdict,
        items: Sequence[Item],
        owners: Sequence[int],
        context: ModerationContext,
    ) -> tuple[int, str]:
        """The first request whose items blocked; an engine that does not say which items
        did is asked again about each request's own, in order."""
        reasons = _reasons(verdict)
        named = [owners[i] for i in verdict.items if 0 <= i < len(owners)]
        if named:
            return min(named), reasons
        for owner in sorted(set(owners)):
            own = [item for item, o in zip(items, owners, strict=True) if o == owner]
            if (await engine.judge(own, context)).blocked:
                return owner, reasons
        # Only the requests together were blocked: the first one stands for them.
        return owners[0], reasons

    async def check_output(self, endpoint: str, body: bytes, key: ClientKey | None) -> None:
        """For non-streamed chat.completions, completions and responses answers, when enabled."""
        mode = _mode(key)
        if not (self.settings.enabled and self.settings.check_output) or mode == "exempt":
            return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return  # not an answer with text in it: nothing to judge
        if not isinstance(answer, dict):
            return
        items = output_items(endpoint, answer)
        if items:
            context = ModerationContext(
                endpoint, _key_id(key), strict=mode == "strict", output=True
            )
            await self._judge(items, context)

    def recent_blocks(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest blocks first: time, key_id, endpoint, engine, reasons (and input if kept)."""
        return [dict(record) for record in islice(reversed(self._recent), max(limit, 0))]

    async def close(self) -> None:
        for engine in self.engines:
            closer = getattr(engine, "close", None)
            if callable(closer):
                result = closer()
                if inspect.isawaitable(result):
                    await result
        if self._cache is not None:
            await self._cache.close()

    def _items(self, endpoint: str, document: Mapping[str, Any]) -> list[Item]:
        return moderation_items(
            endpoint,
            document,
            embeddings=self.settings.check_embeddings,
            moderations=self.settings.check_moderations,
        )

    async def _judge(self, items: Sequence[Item], context: ModerationContext) -> None:
        blocked = await self._blocked(items, context)
        if blocked is not None:
            raise _violation(blocked[1], output=context.output)

    async def _blocked(
        self, items: Sequence[Item], context: ModerationContext
    ) -> tuple[Engine, Verdict] | None:
        """The first engine to block ``items``, and its verdict (recorded); None if none does."""
        for engine in self.engines:
            verdict = await engine.judge(items, context)
            if verdict.blocked:
                self._record(verdict, items, context)
                return engine, verdict
        return None

    def _record(self, verdict: Verdict, items: Sequence[Item], context: ModerationContext) -> None:
        self.blocks_total += 1
        record: dict[str, Any] = {
            "time": self._now().isoformat(),
            "key_id": context.key_id,
            "endpoint": context.endpoint,
            "engine": verdict.engine,
            "reasons": list(verdict.reasons),
            "output": context.output,
        }
        if self.settings.log_inputs:
            chosen = [items[i] for i in verdict.items if 0 <= i < len(items)] or list(items)
            record["input"] = [_shorten(item) for item in chosen]
        self._recent.append(record)
        logger.info(
            "moderation blocked %s of key %s on %s: %s (%s)",
            "an answer" if context.output else "a request",
            context.key_id,
            context.endpoint,
            ", ".join(verdict.reasons),
            verdict.engine,
        )


class Moderate:
    """The pipeline's moderation stage: 400 for an input the policy blocks; with
    ``answers``, the relay has each whole successful answer judged before it is sent."""

    def __init__(self, moderator: Moderator, *, answers: bool = False) -> None:
        self._moderator = moderator
        self._answers = answers

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        moderator, key = self._moderator, exchange.key
        await moderator.check(exchange.endpoint, exchange.document, key)
        if self._answers:
            exchange.check_answer = partial(moderator.check_output, exchange.endpoint, key=key)
        return await forward(exchange)


def _reasons(verdict: Verdict) -> str:
    return ", ".join(verdict.reasons) or verdict.engine


def _input_context(endpoint: str, key: ClientKey | None) -> ModerationContext:
    return ModerationContext(endpoint, _key_id(key), strict=_mode(key) == "strict")


def _violation(verdict: Verdict, *, output: bool) -> ContentPolicyViolation:
    reasons = _reasons(verdict)
    if output:
        return ContentPolicyViolation(
            f"The answer was withheld by the content policy: flagged for {reasons}."
        )
    return ContentPolicyViolation(
        f"Your request was rejected by the content policy: flagged for {reasons}."
    )


def _mode(key: ClientKey | None) -> str | None:
    return None if key is None else key.policy.moderation


def _key_id(key: ClientKey | None) -> str | None:
    return None if key is None else key.id


def _shorten(item: Item) -> Item:
    if isinstance(item, str):
        return item[:_LOGGED_TEXT_CHARS]
    url = str(item.get("image_url", {}).get("url", ""))
    return {"type": "image_url", "image_url": {"url": url[:_LOGGED_URL_CHARS]}}


def build_moderator(
    settings: Settings,
    client: UpstreamClient,
    router: Router,
    *,
    redis: Redis | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Moderator:
    """The moderator the settings describe; a ``ConfigError`` names what is misconfigured.

    ``redis`` is the app's shared client; without one, ``redis_url`` gets a client of its own
    (closed by ``Moderator.close``).
    """
    config = settings.moderation
    if not config.enabled:
        return Moderator(config, ())
    memory = MemoryVerdictCache(
        config.cache_size, config.cache_ttl, max_bytes=config.cache_bytes, clock=clock
    )
    cache: VerdictCache = memory
    engines: list[Engine] = []
    for name in config.engines:
        if name == "rules":
            engines.append(RulesEngine(config.rules))
        elif name == "openai":
            prefix = redis_prefix(settings.limits.redis_prefix)
            if redis is not None:
                cache = RedisVerdictCache(redis, memory=memory, prefix=prefix, clock=clock)
            elif settings.redis_url:
                own = connect_redis(settings.redis_url)
                cache = RedisVerdictCache(
                    own, memory=memory, prefix=prefix, owns_client=True, clock=clock
                )
            engine = OpenAIModerationEngine(client, router, config, cache)
            _check_upstream(router, engine, config)
            engines.append(engine)
        else:
            engines.append(load_engine(name, config))
    return Moderator(config, engines, cache=cache)


def _check_upstream(
    router: Router, engine: OpenAIModerationEngine, config: ModerationSettings
) -> None:
    if config.upstream is not None and router.get(config.upstream) is None:
        raise ConfigError(f"moderation.upstream: no upstream is named {config.upstream!r}")
    try:
        engine.upstream()
    except ProxyError as exc:
        raise ConfigError(
            f"moderation: no upstream serves the moderation model {config.model!r}; "
            "add it to an upstream's models or set moderation.upstream"
        ) from exc
