"""Stored upstream objects: which client key owns each id the proxy handed out (DESIGN §3.8).

The upstream keeps some objects (a Responses API response with ``store: true``, the default;
later files, batches, vector stores) in the account of the key that created them, and any key
of that account can read, cancel or delete them. The proxy records each one's owner (the client
key) and holder (the upstream key) in the database, before the client sees the id, so every
replica can refuse it to other keys and send its follow-ups to the account that holds it.

The statements are here; ``KeyStore`` runs them at its one error boundary. ``Ownership`` is
the pipeline's stage that enforces all this on each request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from chatgpt_proxy.errors import ObjectNotFound, PreviousResponseNotFound, ResourceUnavailable
from chatgpt_proxy.keystore.schema import aware_utc, stored_objects
from chatgpt_proxy.memo import Memo

if TYPE_CHECKING:
    from aiohttp import web

    # For annotations only: the exchange module imports the key store, which imports this.
    from chatgpt_proxy.exchange import Exchange, Next
    from chatgpt_proxy.keystore.store import KeyStore
    from chatgpt_proxy.redaction import Redactor
    from chatgpt_proxy.upstream.router import Router, Upstream

RESPONSE = "response"
_MAX_REMEMBERED = 10_000  # records found; ids come from clients
# What an object id may look like: only such a value is looked up (a NUL is a database
# error) or echoed back.
OBJECT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")


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

    Records never change, so a record found may be remembered; an id not found is asked of
    the database every time, since another replica may have recorded it a moment ago.

    >>> owners = ObjectOwners(store)
    >>> await owners.record(StoredObject("response", "resp_1", key.id, "openai", "openai#2", now))
    >>> (await owners.find("response", "resp_1")).upstream_alias
    'openai#2'
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._found: Memo[tuple[str, str], StoredObject] = Memo(_MAX_REMEMBERED)

    async def record(self, stored: StoredObject) -> None:
        """Write the record (``StoreUnavailable`` if it cannot be written)."""
        await self._store.record_object(stored)
        self._found.remember((stored.kind, stored.object_id), stored)

    async def find(self, kind: str, object_id: str) -> StoredObject | None:
        found = self._found.get((kind, object_id))
        if found is None:
            found = await self._store.find_object(kind, object_id)
            if found is not None:
                self._found.remember((kind, object_id), found)
        return found


class Ownership:
    """The pipeline's ownership stage, for an endpoint family whose ids name stored objects.

    The object a request names (its path's ``id``, or ``previous_response_id``) must be the
    client key's: another key's is told exactly as an unknown one is, and neither is
    forwarded, since the upstream would serve any object of its account to any of its keys.
    Its follow-ups go to the upstream key holding it. With ``records``, the owner of the
    object the answer creates is recorded before the client has its id.
    """

    def __init__(
        self,
        owners: ObjectOwners,
        router: Router,
        redactor: Redactor,
        *,
        kind: str,
        records: bool = False,
    ) -> None:
        self._owners = owners
        self._router = router
        self._scrub = redactor.scrub
        self._kind = kind
        self._records = records

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        holder = await self._holder(exchange)
        if holder is not None:
            exchange.upstream = self._holding(holder)
            exchange.holder_key = holder.upstream_alias
        if self._records and exchange.document.get("store") is not False:
            # A response not stored cannot be fetched again: then there is nothing to own.
            exchange.on_created = _Recorder(self._owners, exchange)
        return await forward(exchange)

    async def _holder(self, exchange: Exchange) -> StoredObject | None:
        """The record of the stored object the request is about, which must be its key's.

        The id is echoed as the upstream does, scrubbed as the upstream's own errors are.
        """
        owner = exchange.key.id
        object_id = exchange.request.match_info.get("id")
        if object_id is not None:
            found = await self._owners.find(self._kind, object_id)
            if found is None or found.owner_key_id != owner:
                raise ObjectNotFound(self._scrub(f"Response with id '{object_id}' not found."))
            return found
        previous = exchange.document.get("previous_response_id")
        if not isinstance(previous, str):
            return None  # absent, or the upstream's to refuse
        well_formed = OBJECT_ID.fullmatch(previous) is not None
        found = await self._owners.find(self._kind, previous) if well_formed else None
        if found is None or found.owner_key_id != owner:
            shown = f" with id '{previous}'" if well_formed else ""
            raise PreviousResponseNotFound(
                self._scrub(f"Previous response{shown} not found."), param="previous_response_id"
            )
        return found

    def _holding(self, holder: StoredObject) -> Upstream:
        """The upstream holding ``holder``'s object: no other has it."""
        upstream = self._router.get(holder.upstream)
        if upstream is None:
            raise ResourceUnavailable(
                f"The upstream {holder.upstream} holding this object is no longer configured."
            )
        return upstream


class _Recorder:
    """Records the owner of the response an exchange creates, once the relay sees its id."""

    __slots__ = ("_exchange", "_owners")

    def __init__(self, owners: ObjectOwners, exchange: Exchange) -> None:
        self._owners = owners
        self._exchange = exchange

    async def __call__(self, object_id: str) -> None:
        exchange = self._exchange
        await self._owners.record(
            StoredObject(
                RESPONSE,
                object_id,
                exchange.key.id,
                exchange.upstream.name,
                exchange.reply.alias,  # the relay, which calls this, is relaying that reply
                datetime.now(UTC),
            )
        )


def insert_statement(stored: StoredObject) -> sa.Insert:
    return stored_objects.insert().values(
        kind=stored.kind,
        object_id=stored.object_id,
        owner_key_id=stored.owner_key_id,
        upstream=stored.upstream,
        upstream_alias=stored.upstream_alias,
        created_at=aware_utc(stored.created_at, "created_at"),
    )


def find_query(kind: str, object_id: str) -> sa.Select[Any]:
    return sa.select(stored_objects).where(
        stored_objects.c.kind == kind, stored_objects.c.object_id == object_id
    )


def from_row(row: sa.RowMapping) -> StoredObject:
    return StoredObject(
        kind=row["kind"],
        object_id=row["object_id"],
        owner_key_id=row["owner_key_id"],
        upstream=row["upstream"],
        upstream_alias=row["upstream_alias"],
        created_at=row["created_at"],
    )
