"""Usage metering: every answered request's usage, written in batches off the hot path.

``record`` only appends to a bounded buffer; a background task writes it to the key store
every ``interval`` seconds or as soon as ``batch_size`` events wait, and ``close`` writes
what is left, so a clean shutdown loses nothing. If the database is down the events are
kept (up to ``max_pending``) and written when it returns. ``pricing`` is what the events'
``cost`` is computed with (``meter.pricing.cost(model, usage)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.keystore import KeyStore, UsageEvent
from chatgpt_proxy.pricing import Pricing

logger = logging.getLogger("chatgpt_proxy.metering")


class Meter:
    """Buffers usage events and writes them in batches.

    >>> meter = Meter(store, pricing=Pricing(settings.pricing))
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
        pricing: Pricing | None = None,
    ) -> None:
        self._store = store
        self.pricing = pricing if pricing is not None else Pricing({})
        self._interval = interval
        self._batch_size = batch_size
        self._pending: deque[UsageEvent] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
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
        """Write every event recorded so far; when it returns, they are all in the store."""
        # One flush at a time: a second caller waits for the batch the first is writing,
        # rather than return while it is still on its way.
        async with self._flushing:
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
            # Holding the flush lock: a batch on its way is written, not cancelled half-way.
            async with self._flushing:
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
