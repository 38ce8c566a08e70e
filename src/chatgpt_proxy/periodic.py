"""Work repeated in the background for as long as the app runs (polls, probes, flushes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from chatgpt_proxy.errors import ProxyError

logger = logging.getLogger("chatgpt_proxy.periodic")


class Periodic:
    """Runs ``work`` every ``interval`` seconds in a task of its own, until stopped.

    A ``ProxyError`` (the database or an upstream away) is logged once, when the work starts
    failing, and once when it works again, rather than every ``interval``.

    >>> refresher = Periodic("refreshing client keys", 1.0, cache.refresh)
    >>> refresher.start()
    >>> await refresher.stop()
    """

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._interval = interval
        self._work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._work()
            except ProxyError as exc:
                if not failing:
                    logger.warning("%s failed: %s", self.name, exc.message)
                failing = True
            else:
                if failing:
                    logger.info("%s works again", self.name)
                failing = False
