"""Work repeated in the background for as long as the app runs (polls, probes, flushes).

Background work survives any exception (DESIGN §4): a failed run is logged, counted by task
name in ``TaskErrors`` (exported in ``/metrics``), and the task runs again at its next tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from chatgpt_proxy.errors import ProxyError

logger = logging.getLogger("chatgpt_proxy.periodic")


class TaskErrors:
    """Failed runs of background tasks, by task name: one per app, shared by its tasks.

    >>> errors = TaskErrors()
    >>> Periodic("writing usage", 1.0, meter.flush, errors=errors)
    >>> errors.counts
    {'writing usage': 2}
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, task: str) -> None:
        self.counts[task] = self.counts.get(task, 0) + 1


class Periodic:
    """Runs ``work`` every ``interval`` seconds in a task of its own, until stopped.

    Any exception but cancellation is counted in ``errors`` and logged once, when the work
    starts failing (a ``ProxyError``, the database or an upstream away, as a warning; anything
    else, a bug, with its traceback), and once when it works again, rather than every
    ``interval``.

    >>> refresher = Periodic("refreshing client keys", 1.0, cache.refresh, errors=errors)
    >>> refresher.start()
    >>> await refresher.stop()
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[None]],
        *,
        errors: TaskErrors | None = None,
    ) -> None:
        self.name = name
        self._interval = interval
        self._work = work
        self.errors = errors if errors is not None else TaskErrors()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait(), not `await task`: the task's own cancellation is not raised here, and a
            # cancellation of the caller still is (suppressing CancelledError would eat both).
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self) -> None:
        streak = FailureStreak(self.name, self.errors)
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._work()
            except Exception as exc:  # CancelledError is a BaseException: stop() still stops
                streak.failed(exc)
            else:
                streak.succeeded()


class FailureStreak:
    """How a background loop reports its failed runs: each counted, logged once per streak.

    For loops that are not a ``Periodic`` (a subscription, say)::

        streak = FailureStreak("listening for key changes", errors)
        while True:
            try:
                await listen()
            except Exception as exc:
                streak.failed(exc)
    """

    def __init__(self, task: str, errors: TaskErrors) -> None:
        self._task = task
        self._errors = errors
        self._failing = False

    def failed(self, exc: Exception) -> None:
        """Count the failure; log it if the task worked until now.

        A ``ProxyError`` (the database or an upstream away) is logged by its message, anything
        else (a bug) with its traceback, which the logs' redacting filter scrubs of secrets.
        """
        self._errors.count(self._task)
        if self._failing:
            return
        self._failing = True
        if isinstance(exc, ProxyError):
            logger.warning("%s failed: %s", self._task, exc.message)
        else:
            logger.error("%s failed unexpectedly; it goes on", self._task, exc_info=exc)

    def succeeded(self) -> None:
        if self._failing:
            logger.info("%s works again", self._task)
        self._failing = False
