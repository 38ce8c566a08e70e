"""The list endpoints of stored objects (files, batches, vector stores), served from the records.

The upstream lists every object of its account, whichever client key made it, and each
account (upstream key) lists only its own. So a list is not the upstream's, filtered: its
members and their order come from the records of the caller's objects (``ObjectOwners.page``,
newest first, ``after``, ``limit`` up to 100, ``order``), and each member is then fetched
from the key holding it, a few at a time, so that it shows what the upstream says of it now.
An object the upstream no longer has (expired, deleted elsewhere) or whose holding key is
gone is left out of its page; ``has_more`` is the records'. A filter the upstream applies to
its own lists (files' ``purpose``) is applied to each page fetched::

    GET /v1/files?limit=2  ->  {"object": "list", "data": [...], "first_id": ..., "last_id": ...,
                                "has_more": true}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from chatgpt_proxy.errors import InvalidRequest, ObjectNotFound, ResourceUnavailable, UpstreamError
from chatgpt_proxy.exchange import Exchange, Next, Outcome
from chatgpt_proxy.keystore.objects import OBJECT_ID, AnswerWatch, ObjectOwners, StoredObject
from chatgpt_proxy.token_usage import Usage
from chatgpt_proxy.upstream.client import Outbound, UpstreamClient
from chatgpt_proxy.upstream.router import Router

_DEFAULT_LIMIT = 20
_MAX_LIMIT = 100
_FETCHES_AT_ONCE = 8
# Query parameters the upstream's lists take that filter by a field of the object.
_FILTERS = ("purpose",)


class ListOwned:
    """The last stage of a list endpoint: the caller's objects of ``kind``, as the upstream
    would list them. A batch first seen finished here is charged as on any other path."""

    def __init__(
        self, owners: ObjectOwners, router: Router, client: UpstreamClient, *, kind: str
    ) -> None:
        self._owners = owners
        self._router = router
        self._client = client
        self._kind = kind

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        query = exchange.request.query
        limit = _limit(query.get("limit"))
        after = query.get("after")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("`order` must be `asc` or `desc`.", param="order")
        if after is not None and not OBJECT_ID.fullmatch(after):
            raise ObjectNotFound("The object to list after was not found.", param="after")
        page = await self._owners.page(
            exchange.key.id, self._kind, after=after, limit=limit, ascending=order == "asc"
        )
        if page is None:
            message = f"The object '{after}' to list after was not found."
            raise ObjectNotFound(message, param="after")
        records, has_more = page
        exchange.sent_at = time.monotonic()
        watch = AnswerWatch(self._owners, exchange)
        gate = asyncio.Semaphore(_FETCHES_AT_ONCE)
        fetched = await asyncio.gather(
            *(self._fetch(exchange, record, watch, gate) for record in records)
        )
        data = [item for item, _ in fetched if item is not None and _passes(item, query)]
        charged = [usage for _, usage in fetched if usage is not None]
        exchange.outcome = Outcome(200, _summed(charged), complete=True)
        models = {item.get("model") for item, usage in fetched if item and usage is not None}
        if len(models) == 1 and isinstance(model := models.pop(), str):
            exchange.model = model  # priced as the batches it charges (one model, as usual)
        answer = {
            "object": "list",
            "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": has_more,
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _fetch(
        self,
        exchange: Exchange,
        record: StoredObject,
        watch: AnswerWatch,
        gate: asyncio.Semaphore,
    ) -> tuple[dict[str, Any] | None, Usage | None]:
        """The object as its holder has it now (None if it is gone), and the batch usage it
        is the first to show."""
        upstream = self._router.get(record.upstream)
        if upstream is None:
            return None, None
        outbound = Outbound(
            "GET",
            f"{exchange.path}/{record.object_id}",
            "",
            exchange.request.headers,
            holder_key=record.upstream_alias,
        )
        async with gate:
            try:
                reply = await self._client.send(upstream, outbound)
            except ResourceUnavailable:
                return None, None  # its key is retired: it cannot be shown
            try:
                status = reply.response.status
                body = await reply.read()
            finally:
                reply.close()
        if status == 404:
            return None, None
        try:
            item = orjson.loads(body) if status < 300 else None
        except orjson.JSONDecodeError:
            item = None
        if not isinstance(item, dict):
            raise UpstreamError(f"The upstream answered {status} for a listed object.")
        return item, await watch.seen(item, record.upstream, record.upstream_alias)


def _limit(value: str | None) -> int:
    if value is None:
        return _DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InvalidRequest("`limit` must be a positive whole number.", param="limit")
    return min(limit, _MAX_LIMIT)


def _passes(item: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    return all(item.get(name) == query[name] for name in _FILTERS if name in query)


def _summed(usages: list[Usage]) -> Usage:
    return Usage(
        sum(u.prompt_tokens for u in usages),
        sum(u.completion_tokens for u in usages),
        sum(u.total_tokens for u in usages),
    )
