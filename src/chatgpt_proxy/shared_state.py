"""What replicas tell each other through Redis: client key changes and upstream key states.

* **Client keys.** The admin API publishes a key's id when it creates, changes or revokes it;
  every replica re-reads that key from the store at once, so a revocation holds everywhere
  within a round trip. The key cache's poll of the store stays the fallback without Redis.
* **Upstream keys.** A watcher compares each pool's states every ``tick`` seconds with what it
  last saw, and publishes a key that went cooling, ejected or retired, or came back early
  (re-admitted, recovered), as ``{replica, alias, state, seconds, reason}``; it also keeps the
  latest state of each alias in a hash for replicas that start (or reconnect) later. A
  replica applies what others publish with ``KeyPool.apply_remote_state`` and records the
  result as seen, so nothing echoes back; a cooldown that simply runs out is not published,
  since every replica's copy runs out by itself.

Lost messages (Redis away) are not replayed: a replica learns the keys from its poll and the
upstream states from the hash when it reconnects::

    shared = SharedState(link, router, keys)
    await shared.start()
    await shared.key_changed(key.id)          # after a revocation
    await shared.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import orjson

from chatgpt_proxy.auth import KeyCache
from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.periodic import FailureStreak, TaskErrors
from chatgpt_proxy.redis_link import (
    RedisLink,
    RedisUnavailable,
    raise_lost_cancellation,
    redis_errors,
)
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.upstream.pool import KeyState
from chatgpt_proxy.upstream.router import Router

logger = logging.getLogger("chatgpt_proxy.shared_state")

_STATES_TTL_MS = 86_400_000
_EARLY = 0.5  # seconds: a state that ends this much before its time ended on purpose
_RESUBSCRIBE_SECONDS = 0.5
# A read ends this often with nothing, so that a lost cancellation is noticed (see _subscribe).
_READ_SECONDS = 1.0
_STOP_SECONDS = 5.0  # a backstop: each task ends within a read once cancelled


class SharedState:
    """Client key changes and upstream key states, shared by every replica on one Redis."""

    def __init__(
        self,
        link: RedisLink,
        router: Router,
        keys: KeyCache,
        *,
        tick: float = 0.1,
        errors: TaskErrors | None = None,
    ) -> None:
        self._link = link
        self._router = router
        self._keys = keys
        self._tick = tick
        self._replica = secrets.token_hex(8)
        self._keys_channel = f"{link.prefix}keys"
        self._upstreams_channel = f"{link.prefix}upstreams"
        self._states = f"{link.prefix}upstream-states"
        self._seen: dict[str, tuple[KeyState, float]] = {}  # alias -> (state, until: monotonic)
        self._tasks: list[asyncio.Task[None]] = []
        errors = errors if errors is not None else TaskErrors()
        self._listening = FailureStreak("listening for shared state", errors)
        self._watching = FailureStreak("sharing upstream key states", errors)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="shared-state-listen"),
            asyncio.create_task(self._watch(), name="shared-state-watch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # wait() neither raises the tasks' CancelledError nor swallows our own.
            _, pending = await asyncio.wait(self._tasks, timeout=_STOP_SECONDS)
            for task in pending:
                logger.warning(
                    "%s did not stop within %s s; left behind", task.get_name(), _STOP_SECONDS
                )
        self._tasks = []

    async def key_changed(self, key_id: str) -> None:
        """Tell the other replicas to re-read ``key_id``; without Redis, their poll will."""
        if not self._link.up:
            return
        try:
            await _publish_key(self._link, self._replica, key_id)
        except RedisUnavailable as exc:
            self._link.failed(exc)

    # ------------------------------------------------------------------ listening

    async def _listen(self) -> None:
        while True:
            raise_lost_cancellation()
            if self._link.up:
                try:
                    await self._subscribe()
                except RedisUnavailable as exc:
                    self._link.failed(exc)
                except Exception as exc:  # a bug: this replica must not stop listening for it
                    self._listening.failed(exc)
            await asyncio.sleep(_RESUBSCRIBE_SECONDS)

    async def _subscribe(self) -> None:
        with redis_errors("subscribe"):
            async with self._link.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(self._keys_channel, self._upstreams_channel)
                # Subscribed first, then read: a state published in between is not missed.
                for value in (await self._link.client.hgetall(self._states)).values():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._apply_upstream(orjson.loads(value), stored=True)
                # Not listen(): its read never ends, so a cancellation the client lost while
                # subscribing (see raise_lost_cancellation) would leave stop() waiting for good.
                while True:
                    raise_lost_cancellation()
                    message = await pubsub.get_message(timeout=_READ_SECONDS)
                    if message is not None:
                        await self._on_message(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel, data = message["channel"], message["data"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        if channel == self._upstreams_channel:
            try:
                self._apply_upstream(orjson.loads(data), stored=False)
            except (ValueError, KeyError, TypeError):  # another version, or not ours at all
                logger.debug("ignored a malformed upstream state on %s", channel)
            return
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
        except UnicodeDecodeError:
            logger.debug("ignored a malformed key change on %s", channel)
            return
        replica, _, key_id = text.partition(":")
        if replica == self._replica:
            return
        try:
            await self._keys.reload(key_id)
        except ProxyError as exc:  # the store is down: the poll catches up
            logger.debug("client key %s not re-read: %s", key_id, exc.message)

    def _apply_upstream(self, change: object, *, stored: bool) -> None:
        if not isinstance(change, dict):  # JSON, but not an object: not ours
            raise TypeError("not an object")
        if change.get("replica") == self._replica and not stored:
            return
        alias = str(change["alias"])
        upstream = self._router.get(alias.rpartition("#")[0])
        if upstream is None:
            return
        state = KeyState(change["state"])
        seconds = change.get("seconds")
        if stored and state in (KeyState.COOLING, KeyState.EJECTED):
            seconds = float(change["until"]) - time.time()
            if seconds <= 0:
                return
        upstream.pool.apply_remote_state(alias, state, seconds, change.get("reason"))
        for status in upstream.pool.snapshot():
            if status.alias == alias:
                self._seen[alias] = (status.state, time.monotonic() + (status.until or 0.0))

    # ------------------------------------------------------------------ watching

    async def _watch(self) -> None:
        while True:
            raise_lost_cancellation()
            await asyncio.sleep(self._tick)
            if not self._link.up:
                continue  # what changed meanwhile is published once Redis is back
            try:
                changes = self._changes()
                if changes:
                    await self._publish(changes)
            except RedisUnavailable as exc:
                self._link.failed(exc)
            except Exception as exc:  # a bug: this replica must not stop sharing for it
                self._watching.failed(exc)
            else:
                self._watching.succeeded()

    def _changes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        changes = []
        for upstream in self._router.upstreams:
            for status in upstream.pool.snapshot():
                until = now + (status.until or 0.0)
                seen_state, seen_until = self._seen.get(status.alias, (KeyState.ACTIVE, 0.0))
                self._seen[status.alias] = (status.state, until)
                if status.state is KeyState.ACTIVE:
                    ended_early = seen_state is KeyState.RETIRED or seen_until > now + _EARLY
                    if seen_state is KeyState.ACTIVE or not ended_early:
                        continue
                elif status.state == seen_state and until <= seen_until + _EARLY:
                    continue
                changes.append(
                    {
                        "replica": self._replica,
                        "alias": status.alias,
                        "state": str(status.state),
                        "seconds": status.until,
                        "until": time.time() + status.until if status.until else None,
                        "reason": status.reason,
                    }
                )
        return changes

    async def _publish(self, changes: list[dict[str, Any]]) -> None:
        with redis_errors("publish"):
            pipe = self._link.client.pipeline(transaction=False)
            for change in changes:
                data = orjson.dumps(change)
                pipe.publish(self._upstreams_channel, data)
                if change["state"] == KeyState.ACTIVE:
                    pipe.hdel(self._states, change["alias"])
                else:
                    pipe.hset(self._states, change["alias"], data)
            pipe.pexpire(self._states, _STATES_TTL_MS)
            await pipe.execute()


async def announce_key_change(settings: Settings, key_id: str) -> bool:
    """Tell running replicas to re-read ``key_id`` (for the CLI); ``False`` if Redis is away."""
    if settings.redis_url is None:
        return False
    link = RedisLink.open(settings)
    try:
        await _publish_key(link, "cli", key_id)
    except RedisUnavailable:
        return False
    finally:
        await link.close()
    return True


async def _publish_key(link: RedisLink, replica: str, key_id: str) -> None:
    with redis_errors("publish"):
        await link.client.publish(f"{link.prefix}keys", f"{replica}:{key_id}")
