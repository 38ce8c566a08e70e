"""Ending upstream streams that go silent: one sweep for all of them, not a timer per chunk.

A read timeout of the HTTP client (aiohttp's ``sock_read``) re-arms a timer on every chunk it
receives. Instead each stream notes when it began waiting for the upstream, and one periodic
sweep closes (``TransportResponse.close()``) those that have waited longer than ``stream_idle``:
the relay then sees its upstream connection end, and tells the client with an error event. Only
time spent waiting on the upstream counts: while the relay is held up writing to a client slow
to read, the upstream is not silent, and its key is not to blame.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chatgpt_proxy.periodic import Periodic, TaskErrors
from chatgpt_proxy.upstream.transport import TransportResponse


class Watched:
    """One stream under watch: ``wait()`` before each read of the upstream, ``touch()`` after."""

    __slots__ = ("_clock", "_streams", "last", "response", "waiting", "went_silent")

    def __init__(
        self,
        response: TransportResponse,
        streams: dict[int, Watched],
        clock: Callable[[], float],
    ) -> None:
        self.response = response
        self.last = clock()  # when the current wait on the upstream began
        self.waiting = True  # the relay reads as soon as the headers are in
        self.went_silent = False
        self._streams = streams
        self._clock = clock
        streams[id(self)] = self

    def wait(self) -> None:
        self.last = self._clock()
        self.waiting = True

    def touch(self) -> None:
        """Something arrived: until the next ``wait()`` the relay is busy handing it on."""
        self.waiting = False

    def done(self) -> None:
        self._streams.pop(id(self), None)


class IdleWatch:
    """Closes the streams that received nothing for ``idle`` seconds.

    >>> watch = IdleWatch(idle=120.0)
    >>> watch.start()
    >>> watched = watch.watch(response)   # then watched.touch() per chunk, watched.done()
    """

    def __init__(
        self,
        idle: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        errors: TaskErrors | None = None,
    ) -> None:
        self._idle = idle
        self._clock = clock
        self._streams: dict[int, Watched] = {}
        # A sweep at a quarter of the limit ends a silent stream at most 25% late.
        interval = max(0.05, min(1.0, idle / 4))
        self._periodic = Periodic(
            "ending silent upstream streams", interval, self._sweep, errors=errors
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def watch(self, response: TransportResponse) -> Watched:
        return Watched(response, self._streams, self._clock)

    def __len__(self) -> int:
        return len(self._streams)

    async def _sweep(self) -> None:
        deadline = self._clock() - self._idle
        for watched in [w for w in self._streams.values() if w.waiting and w.last < deadline]:
            watched.went_silent = True
            watched.done()
            watched.response.close()
