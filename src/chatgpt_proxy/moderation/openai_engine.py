"""The upstream ``/v1/moderations`` endpoint as an engine: cached per item, called through the pool.

Only the items whose verdict is not cached are sent. Their texts go in ONE call, as a list of
strings (one result each). The endpoint answers a multimodal list with a single result for the
whole list, and takes one image per call, so each unseen image is its own call, concurrent with
the texts' one; every call of a check shares one deadline, ``moderation.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.errors import ModerationUnavailable, ProxyError, UpstreamError
from chatgpt_proxy.moderation.cache import ItemResult, VerdictCache, cache_key
from chatgpt_proxy.moderation.engines import ModerationContext, Verdict
from chatgpt_proxy.moderation.inputs import Item
from chatgpt_proxy.settings import ModerationSettings
from chatgpt_proxy.upstream.client import Outbound, Reply, UpstreamClient
from chatgpt_proxy.upstream.router import Router, Upstream

logger = logging.getLogger("chatgpt_proxy.moderation")

T = TypeVar("T")
_MAX_ANSWER_BYTES = 16 * 1024 * 1024
_JSON_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


class ModerationFailed(Exception):
    """The endpoint gave no usable answer; the message names the cause, never the input."""


class OpenAIModerationEngine:
    """Judges items with the moderation endpoint of an upstream, by its categories and scores.

    >>> engine = OpenAIModerationEngine(client, router, settings.moderation, cache)
    >>> verdict = await engine.judge(["some text"], ModerationContext("chat.completions"))
    """

    name = "openai"

    def __init__(
        self,
        client: UpstreamClient,
        router: Router,
        settings: ModerationSettings,
        cache: VerdictCache,
    ) -> None:
        self._client = client
        self._router = router
        self._settings = settings
        self._cache = cache
        self.errors_total = 0
        # Merged once: judging a cached verdict is then a lookup per flagged or scored category.
        self._thresholds = {
            False: _merged([settings.thresholds]),
            True: _merged([settings.thresholds, settings.strict_thresholds]),
        }

    def upstream(self) -> Upstream:
        """The upstream whose key pool serves moderation calls (ModelNotFound if none does)."""
        name = self._settings.upstream
        if name is None:
            return self._router.route(self._settings.model)
        upstream = self._router.get(name)
        if upstream is None:
            raise UpstreamError(f"No upstream is named {name}.")
        return upstream

    async def judge(self, items: Sequence[Item], context: ModerationContext) -> Verdict:
        model = self._settings.model
        keys = [cache_key(item, model) for item in items]
        cached = await self._cache.get_many(keys)
        results = {key: result for key, result in zip(keys, cached, strict=True) if result}
        unseen = {key: item for key, item in zip(keys, items, strict=True) if key not in results}
        if unseen:
            try:
                async with asyncio.timeout(self._settings.timeout):
                    fresh = await self._moderate(unseen)
            except (ProxyError, ModerationFailed, TimeoutError) as exc:
                return self._unavailable(exc, context)
            await self._cache.set_many(fresh)
            results.update(fresh)
        reasons: set[str] = set()
        blocked_items = []
        for index, key in enumerate(keys):
            blocking = self._blocking(results[key], strict=context.strict)
            if blocking:
                reasons.update(blocking)
                blocked_items.append(index)
        if not reasons:
            return Verdict.allow(self.name)
        return Verdict(True, tuple(sorted(reasons)), self.name, tuple(blocked_items))

    def _blocking(self, result: ItemResult, *, strict: bool) -> list[str]:
        allowed = self._settings.categories
        thresholds = self._thresholds[strict]
        if not thresholds:  # the common case: the endpoint's own flags decide, scores unread
            return sorted(c for c in result.flagged if allowed is None or c in allowed)
        scores = result.scores
        blocking = []
        for category in sorted(result.flagged | set(scores)):
            if allowed is not None and category not in allowed:
                continue
            threshold = thresholds.get(category, thresholds.get("*"))
            score = scores.get(category, 0.0)
            if category in result.flagged or (threshold is not None and score >= threshold):
                blocking.append(category)
        return blocking

    async def _moderate(self, unseen: Mapping[str, Item]) -> dict[str, ItemResult]:
        texts = [(key, item) for key, item in unseen.items() if isinstance(item, str)]
        images = [(key, item) for key, item in unseen.items() if not isinstance(item, str)]
        upstream = self.upstream()
        batches: list[tuple[list[str], Any]] = []
        if texts:
            batches.append(([key for key, _ in texts], [text for _, text in texts]))
        batches.extend(([key], [image]) for key, image in images)
        answers = await _together([self._call(upstream, inputs) for _, inputs in batches])
        fresh: dict[str, ItemResult] = {}
        for (batch_keys, _), answer in zip(batches, answers, strict=True):
            if len(answer) != len(batch_keys):
                raise ModerationFailed("the endpoint answered a different number of results")
            fresh.update(zip(batch_keys, answer, strict=True))
        return fresh

    async def _call(self, upstream: Upstream, inputs: list[Any]) -> list[ItemResult]:
        body = orjson.dumps({"model": self._settings.model, "input": inputs})
        outbound = Outbound("POST", "/moderations", "", headers=_JSON_HEADERS, body=body)
        reply = await self._client.send(upstream, outbound)
        try:
            if reply.response.status != 200:
                raise ModerationFailed(f"the endpoint answered status {reply.response.status}")
            raw = await _read_capped(reply)
        finally:
            reply.close()
        try:
            answer = orjson.loads(raw)
            return [_parse_result(entry) for entry in answer["results"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModerationFailed("the endpoint's answer is not a moderation result") from exc

    def _unavailable(self, exc: BaseException, context: ModerationContext) -> Verdict:
        self.errors_total += 1
        cause = _cause(exc)
        if self._settings.on_error == "block":
            raise ModerationUnavailable(
                f"The moderation service is unavailable ({cause}); retry later.",
                retry_after=self._settings.retry_after,
            ) from exc
        logger.warning(
            "moderation failed (%s); key %s on %s allowed through (on_error: allow)",
            cause,
            context.key_id,
            context.endpoint,
        )
        return Verdict.allow(self.name)


async def _together(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Await every call; the first failure cancels the others and is raised as itself."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "it timed out"
    if isinstance(exc, ProxyError):
        return exc.code or "upstream error"
    return str(exc)


def _parse_result(entry: Mapping[str, Any]) -> ItemResult:
    categories = entry["categories"]
    scores = entry.get("category_scores") or {}
    flagged = frozenset(str(name) for name, value in categories.items() if value is True)
    return ItemResult.of(
        flagged,
        {
            str(name): float(score)
            for name, score in scores.items()
            if isinstance(score, int | float) and not isinstance(score, bool)
        },
    )


async def _read_capped(reply: Reply) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await reply.read_chunk():
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise ModerationFailed("the endpoint's answer is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _merged(tables: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """One table giving, per category (and ``"*"``), the lowest threshold any table sets."""
    merged: dict[str, float] = {}
    for category in {name for table in tables for name in table}:
        found = [table.get(category, table.get("*")) for table in tables]
        known = [value for value in found if value is not None]
        if known:
            merged[category] = min(known)
    return merged
