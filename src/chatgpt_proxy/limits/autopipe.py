"""Lua script calls to Redis, sent in pipelines: whatever arrived while the last one was out.

Every admission is one script call and its answer is awaited; every settlement is one call
nobody waits for. Sent one by one, each costs a round trip; here the calls that arrive while a
pipeline is on its way go together in the next one, so a busy process makes few round trips
and an idle one adds a single loop iteration of latency. Two pipelines may be on their way at
once, each on a connection of the client's pool, so the process has work to send while the
other one waits::

    pipe = AutoPipeline(link)
    admit = link.client.register_script(source)      # a redis-py Script: its SHA and its source
    result = await pipe.call(admit, keys, args)      # answered when its pipeline returns
    pipe.send(settle, keys, args, merge=True)        # fire and forget (bounded queue)
    await pipe.drain()                               # everything queued has been sent

A pipeline is ``packed_round_trip``, which stands in for redis-py's own (``pipelined``) for
less CPU. Scripts go by ``EVALSHA``; the calls Redis answers ``NOSCRIPT`` (it restarted, or
was flushed) go again through ``pipelined``, which loads their scripts first.
A call whose caller went away (the request was cancelled) may still have run in Redis:
``on_orphan`` receives its result, so an admission nobody will settle is released at once.
A pipeline that fails fails its callers with ``RedisUnavailable`` and drops its unanswered
sends (they were settlements: their leases and windows lapse by themselves).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatgpt_proxy.memo import Memo
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable, client_errors, redis_errors

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

logger = logging.getLogger("chatgpt_proxy.limits")

_MAX_BATCH = 512
_MAX_IN_FLIGHT = 2  # pipelines on their way at once, each on its own connection
_MAX_HEADS = 4096  # packed command heads kept: one per client key and script
_MAX_QUEUED = 100_000  # sends waiting, at most: past it new ones are dropped, never a call

Keys = Sequence[str | bytes]
Args = Sequence[str | int | bytes]
_Head = tuple[str, tuple[str | bytes, ...], int]  # script SHA, keys, number of arguments


@dataclass(slots=True)
class ScriptCall:
    """One call of ``script``; ``future`` gets its answer, unless nobody waits for it."""

    script: AsyncScript
    keys: Keys
    args: Args
    future: asyncio.Future[Any] | None
    on_orphan: Callable[[Any], None] | None = None
    merge: bool = False


class AutoPipeline:
    """Script calls to one Redis, batched into pipelines; at most two in flight at a time."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._queue: deque[ScriptCall] = deque()
        self._sends = 0
        self._running = 0  # pipeline tasks started and not finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._heads: Memo[_Head, bytes] = Memo(_MAX_HEADS)

    async def call(
        self,
        script: AsyncScript,
        keys: Keys,
        args: Args,
        on_orphan: Callable[[Any], None] | None = None,
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(ScriptCall(script, keys, args, future, on_orphan))
        self._kick()
        return await future

    def send(self, script: AsyncScript, keys: Keys, args: Args, *, merge: bool = False) -> None:
        """Queue a call nobody waits for.

        ``merge``: the script handles each of its arguments as a record of its own, so merging
        sends to it on the same keys that meet in one pipeline go as one call with all their
        arguments.
        """
        if self._sends >= _MAX_QUEUED:
            return  # bounded: a settlement lost this way lapses with its lease and window
        self._sends += 1
        self._queue.append(ScriptCall(script, keys, args, None, merge=merge))
        self._kick()

    async def drain(self) -> None:
        """Wait until everything queued so far has been sent, or dropped with its pipeline."""
        while self._queue or self._tasks:
            self._kick()
            # wait(), not gather(): a caller that gives up does not cancel a pipeline half-way
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """Send what is queued; the connections belong to the client's pool."""
        await self.drain()

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

    async def _execute(self, batch: Sequence[ScriptCall]) -> list[Any]:
        """The batch in one round trip, and the calls Redis had no script for (it restarted,
        or was flushed) again in a redis-py pipeline, which loads their scripts first.

        One timeout bounds the whole of it; a connection cancelled half-way is dropped, never
        reused.
        """
        no_script = _no_script_error()
        client = self._link.client
        with redis_errors("pipeline"):
            async with asyncio.timeout(self._link.timeout):
                results = await packed_round_trip(client, batch, self._heads)
                missing = [i for i, result in enumerate(results) if isinstance(result, no_script)]
                if missing:
                    answers = await pipelined(client, [batch[i] for i in missing])
                    for i, answer in zip(missing, answers, strict=True):
                        results[i] = answer
        return results


async def pipelined(client: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """The calls as one redis-py pipeline, each answer or its ``ResponseError``: the plain way.

    A ``Script`` queued on a pipeline is loaded (``SCRIPT EXISTS``, ``SCRIPT LOAD``) before it
    runs, so this also sends again what Redis had no script for. ``packed_round_trip`` does
    the same for less CPU; this is its reference.
    """
    pipeline = client.pipeline(transaction=False)
    for call in calls:
        await call.script(call.keys, call.args, client=pipeline)
    results: list[Any] = await pipeline.execute(raise_on_error=False)
    return results


async def packed_round_trip(
    client: Redis, calls: Sequence[ScriptCall], heads: Memo[_Head, bytes]
) -> list[Any]:
    """What ``pipelined`` answers, but with the ``EVALSHA`` commands packed here and written
    at once on a connection of the client's pool, then one answer read per call; a call
    whose script Redis lacks answers ``NoScriptError``.

    Why not ``pipelined``: it cost 17 us more CPU per admission and settlement (43 us instead
    of 26 us, admit+settle+release through ``RedisLimiter`` against a local Redis, 50 at
    once), 4% of a Redis-limited request's CPU through the whole proxy (about 420 us): the
    client's general packer and per-command machinery, and a timer per answer read (here the
    caller's one timeout bounds the whole round trip). ``tests/limits/test_limits_autopipe.py``
    holds the two to the same answers. A connection that fails before answering anything (a
    stale one, after a Redis restart) is retried once, fresh, as the client itself would.
    """
    packed = b"".join([_packed(call, heads) for call in calls])
    pool: Any = client.connection_pool  # redis-py leaves get_connection untyped
    connection = await pool.get_connection()
    try:
        for attempt in (1, 2):
            results: list[Any] = []
            try:
                await connection.send_packed_command(packed, check_health=False)
                for _ in calls:
                    results.append(await _answer(connection))
            except BaseException as exc:
                await connection.disconnect()  # half read: never reuse it as it is
                if results or attempt == 2 or not isinstance(exc, client_errors()):
                    raise
                continue  # the next send connects afresh
            return results
        raise AssertionError("unreachable")
    finally:
        await pool.release(connection)


def _packed(call: ScriptCall, heads: Memo[_Head, bytes]) -> bytes:
    """``EVALSHA sha numkeys keys... args...`` in the Redis protocol (RESP).

    The part its script and keys decide is packed once: a client key's Redis keys come back
    with every request it makes.
    """
    key = (call.script.sha, tuple(call.keys), len(call.args))
    head = heads.get(key)
    if head is None:
        sha, keys, args = key
        parts = [sha.encode(), b"%d" % len(keys), *map(_bytes, keys)]
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (len(parts) + args + 1)
        head = heads.remember(key, head + b"".join(map(_bulk, parts)))
    return head + b"".join(map(_bulk, map(_bytes, call.args)))


def _bulk(part: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(part), part)


def _bytes(value: str | int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"%d" % value if isinstance(value, int) else value.encode()


async def _answer(connection: Any) -> Any:
    try:
        return await connection.read_response(timeout=math.inf)  # the caller's timeout bounds it
    except _response_error() as exc:  # an answer (NOSCRIPT, a script error), not a broken link
        return exc


def _merged(batch: list[ScriptCall]) -> list[ScriptCall]:
    """The batch with the sends of a merging script on the same keys as one call each."""
    merged: dict[tuple[AsyncScript, tuple[str | bytes, ...]], list[str | int | bytes]] = {}
    out: list[ScriptCall] = []
    for call in batch:
        if call.merge:
            group = (call.script, tuple(call.keys))
            args = merged.get(group)
            if args is not None:
                args.extend(call.args)
                continue
            args = merged[group] = list(call.args)
            call = ScriptCall(call.script, call.keys, args, None, merge=True)
        out.append(call)
    return out


def _deliver(call: ScriptCall, result: Any) -> None:
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


@functools.cache
def _no_script_error() -> type[Exception]:
    # Imported on first use: this module loads without the optional redis package.
    from redis.exceptions import NoScriptError

    return NoScriptError


@functools.cache
def _response_error() -> type[Exception]:
    from redis.exceptions import ResponseError

    return ResponseError
