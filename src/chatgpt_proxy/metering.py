"""Usage metering: every answered request's usage, written in batches off the hot path.

``record`` only appends to a bounded buffer; a background task writes it to the key store
every ``interval`` seconds or as soon as ``batch_size`` events wait, and ``close`` writes
what is left, so a clean shutdown loses nothing. If the database is down the events are
kept (up to ``max_pending``) and written when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.keystore import KeyStore, UsageEvent

logger = logging.getLogger("chatgpt_proxy.metering")


class Meter:
    """Buffers usage events and writes them in batches.

    >>> meter = Meter(store)
    >>> meter.start()
    >>> meter.record(UsageEvent(...))      # never waits
    >>> await meter.close()                # flushes
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        interval: float = 1.0,
        batch_size: int = 500,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._interval = interval
        self._batch_size = batch_size
        self._pending: deque[UsageEvent] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-meter")

    def record(self, event: UsageEvent) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # bounded: the oldest event is pushed out, and counted
        self._pending.append(event)
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), 1000))]
            try:
                await self._store.record_usage(batch)
            except ProxyError:
                self._pending.extendleft(reversed(batch))
                raise
            self.written += len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except ProxyError as exc:
            logger.error("%d usage events could not be written: %s", len(self._pending), exc)

    async def _run(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except ProxyError as exc:
                if not failing:
                    logger.warning("usage could not be written yet: %s", exc.message)
                failing = True
            else:
                failing = False
