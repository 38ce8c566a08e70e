"""Draining at shutdown: no new upstream calls, and streams in flight ended cleanly when time is up.

On SIGTERM the server stops listening and gives the requests in flight ``grace_seconds``.
A stream still running then is ended here, before aiohttp cancels its handler: its upstream
connection is closed, and the relay, seeing ``ending``, tells the client with an error event
instead of leaving it with a cut connection::

    drain = Drain()
    with drain.track(reply.response):   # around a relayed stream
        ...
    await drain.keep(call)              # work that runs to its end even if its client leaves
    drain.begin(grace=30.0)             # at SIGTERM; ``drain.draining`` is now True
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Closable(Protocol):
    """What a shutdown can end: an upstream answer being relayed, a Realtime session."""

    def close(self) -> None: ...


class Drain:
    """The upstream answers being relayed, and whether the server is shutting down."""

    __slots__ = ("_tasks", "_timer", "draining", "ending", "streams")

    def __init__(self) -> None:
        self.streams: set[Closable] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.draining = False  # stopping: no new upstream call starts
        self.ending = False  # the grace period is over: the streams left are being ended
        self._timer: asyncio.TimerHandle | None = None

    @contextmanager
    def track(self, response: Closable) -> Iterator[None]:
        self.streams.add(response)
        try:
            yield
        finally:
            self.streams.discard(response)

    def keep(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` as a task that runs to its end even if whoever awaits it is cancelled."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # an error no one waited for: its request already ended

    def begin(self, grace: float) -> None:
        """Refuse new upstream calls from now on, and end the streams left after ``grace``."""
        self.draining = True
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(grace, self.end_streams)

    def end_streams(self) -> None:
        """Close every relayed stream's upstream connection (each relay sends an error event)
        and every Realtime session (with an error event and close code 1001)."""
        self.ending = True
        for response in list(self.streams):
            response.close()
