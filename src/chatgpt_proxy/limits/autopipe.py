"""Lua script calls to Redis, sent in pipelines: whatever arrived while the last one was out.

Every admission is one script call and its answer is awaited; every settlement is one call
nobody waits for. Sent one by one, each costs a round trip and most of the client's CPU goes
to the per-command machinery; here the calls that arrive while a pipeline is on its way are
sent together in the next one, so a busy process makes few round trips and an idle one adds a
single loop iteration of latency. Two pipelines may be on their way at once, each on a
connection of its own, so the process has work to send while the other one waits::

    pipe = AutoPipeline(link)
    result = await pipe.call(script, keys, args)     # answered when its pipeline returns
    pipe.send(script, keys, args)                    # fire and forget (bounded queue)
    await pipe.drain()                               # everything queued has been sent

A call whose caller went away (the request was cancelled) may still have run in Redis:
``on_orphan`` receives its result, so an admission nobody will settle is released at once.
A pipeline that fails fails its callers with ``RedisUnavailable`` and drops its unanswered
sends (they were settlements: their leases and windows lapse by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chatgpt_proxy.memo import Memo
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable, client_errors, redis_errors

logger = logging.getLogger("chatgpt_proxy.limits")

_MAX_BATCH = 512
_MAX_IN_FLIGHT = 2  # pipelines on their way at once, each on its own connection
_MAX_HEADS = 4096
_MAX_QUEUED = 100_000  # sends waiting, at most: past it new ones are dropped, never a call

Args = Sequence[str | int | bytes]


class Script:
    """A Lua script, called by its SHA and loaded again when Redis has forgotten it.

    ``merges``: the script handles each of its arguments as a record of its own, so sends to
    it on the same keys that meet in one pipeline go as one call with all their arguments.
    """

    def __init__(self, source: str, *, merges: bool = False) -> None:
        self.source = source
        self.merges = merges
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class _Call:
    script: Script
    keys: Args
    args: Args
    future: asyncio.Future[Any] | None
    on_orphan: Callable[[Any], None] | None = None


class AutoPipeline:
    """Script calls to one Redis, batched into pipelines; at most two in flight at a time."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._queue: deque[_Call] = deque()
        self._sends = 0
        self._running = 0  # pipeline tasks started and not finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: list[Any] = []  # connections of our own, between pipelines
        self._heads: Memo[tuple[Script, Args, int], bytes] = Memo(_MAX_HEADS)

    async def call(
        self,
        script: Script,
        keys: Args,
        args: Args,
        on_orphan: Callable[[Any], None] | None = None,
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(script, keys, args, future, on_orphan))
        self._kick()
        return await future

    def send(self, script: Script, keys: Args, args: Args) -> None:
        if self._sends >= _MAX_QUEUED:
            return  # bounded: a settlement lost this way lapses with its lease and window
        self._sends += 1
        self._queue.append(_Call(script, keys, args, None))
        self._kick()

    async def drain(self) -> None:
        """Wait until everything queued so far has been sent, or dropped with its pipeline."""
        while self._queue or self._tasks:
            self._kick()
            # wait(), not gather(): a caller that gives up does not cancel a pipeline half-way
            await asyncio.wait(list(self._tasks))

    def _kick(self) -> None:
        # A task counts as running until its last statement: one that saw the queue empty
        # has already stopped counting, so a call queued after it starts another.
        if self._running < _MAX_IN_FLIGHT and self._queue:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(), name="redis-limits")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            while self._queue:
                size = min(len(self._queue), _MAX_BATCH)
                batch = [self._queue.popleft() for _ in range(size)]
                self._sends -= sum(1 for call in batch if call.future is None)
                batch = _merged(batch)
                try:
                    results = await self._execute(batch)
                except Exception as exc:
                    if not isinstance(exc, RedisUnavailable):
                        # A bug, not an outage; still, no request may hang or fail for it.
                        logger.exception("Redis limits pipeline failed")
                        exc = RedisUnavailable(f"Redis limits failed ({type(exc).__name__})")
                    self._link.failed(exc)
                    for call in batch:
                        if call.future is not None and not call.future.done():
                            call.future.set_exception(exc)
                    continue
                for call, result in zip(batch, results, strict=True):
                    _deliver(call, result)
        finally:
            self._running -= 1

    async def close(self) -> None:
        """Send what is queued, then give the connections back to the client's pool."""
        await self.drain()
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(RedisUnavailable), redis_errors("release"):
                await self._link.client.connection_pool.release(connection)

    async def _execute(self, batch: Sequence[_Call]) -> list[Any]:
        with redis_errors("pipeline"):
            results = await self._round_trip(batch)
            missing = [i for i, result in enumerate(results) if _no_script(result)]
            if missing:  # Redis restarted or was flushed: load the scripts, then send those again
                for script in {batch[i].script.sha: batch[i].script for i in missing}.values():
                    await self._link.client.script_load(script.source)
                again = await self._round_trip([batch[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        return results

    async def _round_trip(self, batch: Sequence[_Call]) -> list[Any]:
        """Write the whole batch at once, then read one answer per call, on our connection.

        The commands are packed here rather than by the client: its general packer costs more
        than the rest of an admission. One timeout bounds the whole round trip, instead of a
        timer per answer read. A connection that failed before answering anything (a stale
        one, after a Redis restart) is retried once, fresh, as the client itself would.
        """
        packed = b"".join(self._pack(call) for call in batch)
        if self._idle:
            connection = self._idle.pop()
        else:
            pool: Any = self._link.client.connection_pool
            connection = await pool.get_connection()
        try:
            for attempt in (1, 2):
                results: list[Any] = []
                try:
                    async with asyncio.timeout(self._link.timeout):
                        await connection.send_packed_command(packed, check_health=False)
                        for _ in batch:
                            results.append(await _answer(connection))
                except BaseException as exc:
                    await connection.disconnect()  # half read: never reuse it as it is
                    if results or attempt == 2 or not isinstance(exc, client_errors()):
                        raise
                    continue  # the next send connects afresh
                return results
            raise AssertionError("unreachable")
        finally:
            self._idle.append(connection)

    def _pack(self, call: _Call) -> bytes:
        """``EVALSHA sha numkeys keys... args...`` in the Redis protocol (RESP).

        The part its script and keys decide is packed once: a client key's Redis keys come
        back with every request it makes.
        """
        cache_key = (call.script, tuple(call.keys), len(call.args))
        head = self._heads.get(cache_key)
        if head is None:
            head = self._heads.remember(cache_key, _pack_head(*cache_key))
        return head + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in map(_bytes, call.args))


def _merged(batch: list[_Call]) -> list[_Call]:
    """The batch with the sends of a merging script on the same keys as one call each."""
    merged: dict[tuple[Script, tuple[str | int | bytes, ...]], list[str | int | bytes]] = {}
    out: list[_Call] = []
    for call in batch:
        if call.future is None and call.script.merges:
            group = (call.script, tuple(call.keys))
            args = merged.get(group)
            if args is not None:
                args.extend(call.args)
                continue
            args = merged[group] = list(call.args)
            call = _Call(call.script, call.keys, args, None)
        out.append(call)
    return out


def _pack_head(script: Script, keys: Args, args: int) -> bytes:
    parts = [script.sha.encode(), str(len(keys)).encode(), *map(_bytes, keys)]
    out = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (len(parts) + args + 1)]
    out += [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    return b"".join(out)


def _bytes(value: str | int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode() if isinstance(value, int) else value.encode()


async def _answer(connection: Any) -> Any:
    try:
        return await connection.read_response(timeout=math.inf)  # the caller's timeout bounds it
    except _errors()[0] as exc:  # an answer (NOSCRIPT, a script error), not a broken link
        return exc


def _deliver(call: _Call, result: Any) -> None:
    future = call.future
    if future is None:
        return
    if future.cancelled():
        if call.on_orphan is not None and not isinstance(result, Exception):
            call.on_orphan(result)
        return
    if isinstance(result, Exception):
        # A script error is a bug here, not an outage: still, the request must not fail.
        future.set_exception(RedisUnavailable(f"Redis script failed: {type(result).__name__}"))
    else:
        future.set_result(result)


def _no_script(result: object) -> bool:
    """Whether Redis answered that it does not know the script (it restarted, or was flushed)."""
    return isinstance(result, _errors()[1])


@functools.cache
def _errors() -> tuple[type[Exception], type[Exception]]:
    # Imported on first use: this module loads without the optional redis package.
    from redis.exceptions import NoScriptError, ResponseError

    return ResponseError, NoScriptError
