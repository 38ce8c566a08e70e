"""Stored upstream objects: which client key owns each id the proxy handed out (DESIGN §3.8).

The upstream keeps some objects (a Responses API response with ``store: true``, the default;
files, uploads, batches, vector stores, conversations) in the account of the key that created
them, and any key of that account can read, cancel or delete them. The proxy records each
one's owner (the client key) and holder (the upstream key) in the database, before the client
sees the id, so every replica can refuse it to other keys and send its follow-ups to the
account that holds it.

The records themselves are in ``object_records.py``; ``ObjectOwners`` remembers the ones
found, and ``Ownership`` is the pipeline's stage that enforces all this on each request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chatgpt_proxy.errors import ObjectNotFound, PreviousResponseNotFound, ResourceUnavailable
from chatgpt_proxy.keystore.references import (
    BATCH,
    NOT_FOUND,
    RESPONSE,
    Reference,
    implied_objects,
    named_objects,
)
from chatgpt_proxy.memo import Memo
from chatgpt_proxy.token_usage import Usage

if TYPE_CHECKING:
    from aiohttp import web

    # For annotations only: the exchange module imports the key store, which imports this.
    from chatgpt_proxy.exchange import Answering, Exchange, Next
    from chatgpt_proxy.keystore.store import KeyStore
    from chatgpt_proxy.redaction import Redactor
    from chatgpt_proxy.upstream.router import Router, Upstream

_MAX_REMEMBERED = 10_000  # records found; ids come from clients
# What an object id may look like: only such a value is looked up (a NUL is a database
# error) or echoed back.
OBJECT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
# A batch in one of these states has its final usage.
_FINISHED_BATCH = frozenset({"completed", "failed", "expired", "cancelled"})
_NOTHING = Usage(0, 0, 0)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object the upstream stores: its owner here, its holder upstream."""

    kind: str
    object_id: str
    owner_key_id: str
    upstream: str  # the upstream's configured name
    upstream_alias: str  # the key holding it, e.g. "openai#2"
    created_at: datetime


class ObjectOwners:
    """The owners of stored objects, in the key store, with the ones found remembered.

    A record never changes while it exists, so one found may be remembered; an id not found
    is asked of the database every time, since another replica may have recorded it a moment
    ago. A record is dropped when its object is deleted through the proxy (another replica
    that remembers it forwards its owner's calls, which the upstream answers with its 404).

    >>> owners = ObjectOwners(store)
    >>> await owners.record(StoredObject("response", "resp_1", key.id, "openai", "openai#2", now))
    >>> (await owners.find("response", "resp_1")).upstream_alias
    'openai#2'
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._found: Memo[tuple[str, str], StoredObject] = Memo(_MAX_REMEMBERED)
        self._homes: Memo[str, StoredObject] = Memo(_MAX_REMEMBERED)

    async def record(self, stored: StoredObject, *, if_absent: bool = False) -> None:
        """Write the record (``StoreUnavailable`` if it cannot be written); with
        ``if_absent``, one already there (a batch's output file seen again) is kept."""
        key = (stored.kind, stored.object_id)
        if if_absent and self._found.get(key) is not None:
            return
        await self._store.objects.record(stored, if_absent=if_absent)
        if not if_absent:
            self._found.remember(key, stored)
        if stored.kind != RESPONSE:
            self._homes.remember(stored.owner_key_id, stored)

    async def home(self, owner: str) -> StoredObject | None:
        """The latest object (not a response) ``owner`` made, whose key its new objects go to
        when it can: objects used together (a batch and its file, a vector store and its
        files) must be held by one account."""
        found = self._homes.get(owner)
        if found is None:
            found = await self._store.objects.latest(owner, RESPONSE)
            if found is not None:
                self._homes.remember(owner, found)
        return found

    async def forget(self, kind: str, object_id: str) -> None:
        """Drop the record of an object deleted upstream: no list shows it any more."""
        self._found.forget((kind, object_id))
        await self._store.objects.forget(kind, object_id)

    async def settle(self, kind: str, object_id: str) -> bool:
        """Mark the object's usage metered: True for the one call (on any replica) that did."""
        return await self._store.objects.settle(kind, object_id)

    async def page(
        self, owner: str, kind: str, *, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[StoredObject], bool] | None:
        """``owner``'s objects of ``kind`` after the object ``after`` (None: from the start),
        newest first unless ``ascending``: at most ``limit``, and whether there are more.
        None when ``after`` is not one of them."""
        rows = await self._store.objects.page(owner, kind, after, limit + 1, ascending)
        if rows is None:
            return None
        return rows[:limit], len(rows) > limit

    async def find(self, kind: str, object_id: str) -> StoredObject | None:
        found = self._found.get((kind, object_id))
        if found is None:
            found = await self._store.objects.find(kind, object_id)
            if found is not None:
                self._found.remember((kind, object_id), found)
        return found


class Ownership:
    """The pipeline's ownership stage: every stored object a request names must be its key's.

    The objects named are the path's ``id`` (of the endpoint's kind ``owns``) and every body
    field that names one (``references``). Another key's is told exactly as an unknown one
    is, and neither is forwarded, since the upstream would serve any object of its account
    to any of its keys. The request then goes to the upstream key holding them (one key: a
    request naming objects held by two cannot be served). With ``creates``, the object the
    answer creates is recorded before the client has its id; with ``watches``, the answer is
    read for objects the upstream made on its own (a batch's output file) and for a batch's
    usage, metered once; with ``deletes``, a successful delete drops the path's record.
    """

    def __init__(
        self,
        owners: ObjectOwners,
        router: Router,
        redactor: Redactor,
        *,
        owns: str | None = None,
        creates: str | None = None,
        watches: bool = False,
        deletes: bool = False,
    ) -> None:
        self._owners = owners
        self._router = router
        self._scrub = redactor.scrub
        self._owns = owns
        self._creates = creates
        self._watches = watches or creates is not None or deletes
        self._deletes = deletes

    def __call__(self, exchange: Exchange, forward: Next) -> Answering:  # a tail call, mostly
        body = exchange.body
        named = named_objects(body, exchange.document) if isinstance(body, bytes) else []
        if self._owns is not None:
            named.insert(0, Reference("id", self._owns, exchange.request.match_info["id"]))
        if self._watches and not (
            self._creates == RESPONSE and exchange.document.get("store") is False
        ):
            # A response not stored cannot be fetched again: then there is nothing to own.
            exchange.on_created = AnswerWatch(
                self._owners,
                exchange,
                creates=self._creates,
                deletes=self._owns if self._deletes else None,
            )
        if named:
            return self._held(exchange, forward, named)
        if self._creates is not None and self._creates != RESPONSE:
            return self._at_home(exchange, forward)
        return forward(exchange)

    async def _at_home(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        """A new object goes to the key holding the client's others, while it is in service."""
        home = await self._owners.home(exchange.key.id)
        upstream = self._router.get(home.upstream) if home is not None else None
        if home is not None and upstream is not None:
            exchange.upstream = upstream
            exchange.preferred_key = home.upstream_alias
        return await forward(exchange)

    async def _held(
        self, exchange: Exchange, forward: Next, named: list[Reference]
    ) -> web.StreamResponse:
        holder: StoredObject | None = None
        for reference in named:
            found = await self._owned(exchange.key.id, reference)
            if holder is None:
                holder = found
            elif (found.upstream, found.upstream_alias) != (holder.upstream, holder.upstream_alias):
                raise ResourceUnavailable(
                    "The objects this request names are held by different upstream keys: they"
                    " cannot be used together."
                )
        assert holder is not None
        exchange.upstream = self._holding(holder)
        exchange.holder_key = holder.upstream_alias
        return await forward(exchange)

    async def _owned(self, owner: str, reference: Reference) -> StoredObject:
        """The record of a named object, which must be ``owner``'s.

        The id is echoed as the upstream does, scrubbed as the upstream's own errors are; an
        id that cannot be one is neither looked up nor echoed.
        """
        kind, object_id = reference.kind, reference.object_id
        well_formed = OBJECT_ID.fullmatch(object_id) is not None
        found = await self._owners.find(kind, object_id) if well_formed else None
        if found is not None and found.owner_key_id == owner:
            return found
        if reference.field == "previous_response_id":
            shown = f" with id '{object_id}'" if well_formed else ""
            raise PreviousResponseNotFound(
                self._scrub(f"Previous response{shown} not found."), param=reference.field
            )
        message = NOT_FOUND[kind].format(id=object_id if well_formed else "(invalid id)")
        param = None if reference.field == "id" else reference.field
        raise ObjectNotFound(self._scrub(message), param=param)

    def _holding(self, holder: StoredObject) -> Upstream:
        """The upstream holding ``holder``'s object: no other has it."""
        upstream = self._router.get(holder.upstream)
        if upstream is None:
            raise ResourceUnavailable(
                f"The upstream {holder.upstream} holding this object is no longer configured."
            )
        return upstream


class AnswerWatch:
    """Reads each object an answer carries (``OnCreated``), before the client has it.

    Records the object the answer creates (``creates``) and those the upstream made on its
    own (``implied_objects``), drops the record of a deleted one (``deletes``), and charges a
    finished batch's usage to its owner once, on whichever replica sees it first: every other
    sight of it is charged nothing.
    """

    __slots__ = ("_creates", "_deletes", "_exchange", "_owners")

    def __init__(
        self,
        owners: ObjectOwners,
        exchange: Exchange,
        *,
        creates: str | None = None,
        deletes: str | None = None,
    ) -> None:
        self._owners = owners
        self._exchange = exchange
        self._creates = creates
        self._deletes = deletes

    async def __call__(self, document: Mapping[str, Any]) -> None:
        exchange = self._exchange
        # The relay, which calls this, is relaying that reply.
        charged = await self.seen(document, exchange.upstream.name, exchange.reply.alias)
        if document.get("object") == "batch" and exchange.outcome is not None:
            # A batch's usage is its own, not this call's: charged once, when first seen done.
            exchange.outcome.usage = charged or _NOTHING
            model = document.get("model")
            if charged is not None and isinstance(model, str):
                exchange.model = model
        if self._deletes is not None and document.get("deleted") is True:
            await self._owners.forget(self._deletes, exchange.request.match_info["id"])

    async def seen(self, document: Mapping[str, Any], upstream: str, alias: str) -> Usage | None:
        """Record what ``document`` (an object held by ``alias`` of ``upstream``) shows; the
        batch usage it is the first to show, if any."""
        object_id = document.get("id")
        now = datetime.now(UTC)
        owner = self._exchange.key.id
        if self._creates is not None and isinstance(object_id, str):
            await self._owners.record(
                StoredObject(self._creates, object_id, owner, upstream, alias, now)
            )
        for kind, implied in implied_objects(document):
            stored = StoredObject(kind, implied, owner, upstream, alias, now)
            await self._owners.record(stored, if_absent=True)
        usage = document.get("usage")
        if (
            document.get("object") == "batch"
            and document.get("status") in _FINISHED_BATCH
            and isinstance(object_id, str)
            and isinstance(usage, dict)
            and await self._owners.settle(BATCH, object_id)
        ):
            return Usage.from_mapping(usage)
        return None
