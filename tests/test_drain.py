"""Draining: relayed streams are tracked, kept work runs to its end, and at the end of the
grace period every stream still relayed has its upstream connection closed."""

from __future__ import annotations

import asyncio

import aiohttp

from chatgpt_proxy.drain import Drain
from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import wait_for_async

STREAM = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "[[fault:slow:0.2]] [[fault:long:50]]"}],
    "stream": True,
}


def test_streams_left_after_the_grace_period_are_closed(fake: FakeOpenAI) -> None:
    async def scenario() -> tuple[bool, bool, bool, int]:
        drain = Drain()
        headers = {"Authorization": f"Bearer {FAKE_KEYS[0]}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(fake.base_url + "/chat/completions", json=STREAM, headers=headers) as r,
        ):
            with drain.track(r):
                assert drain.streams == {r}
                drain.begin(grace=0.01)
                draining = drain.draining
                await wait_for_async(lambda: drain.ending, message="the grace period never ended")
                closed = r.closed
            return draining, drain.ending, closed, len(drain.streams)

    draining, ending, closed, left = asyncio.run(scenario())
    assert draining and ending and closed
    assert left == 0  # untracked once its relay ended
    assert fake.wait_for_disconnect(path="/v1/chat/completions") is not None


def test_a_second_begin_keeps_the_first_grace_period() -> None:
    async def scenario() -> bool:
        drain = Drain()
        drain.begin(grace=0.01)
        drain.begin(grace=3600)  # SIGTERM twice: the first deadline stands
        assert drain.draining and not drain.ending
        await wait_for_async(lambda: drain.ending, message="the first grace period was lost")
        return drain.ending

    assert asyncio.run(scenario())


def test_kept_work_finishes_even_when_its_waiter_is_cancelled() -> None:
    async def scenario() -> list[str]:
        drain = Drain()
        done: list[str] = []
        release = asyncio.Event()

        async def work() -> str:
            await release.wait()
            done.append("finished")
            return "result"

        async def waiter() -> str:
            # As the proxy awaits it: shielded, so a client going away does not cancel it.
            return await asyncio.shield(drain.keep(work()))

        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # one turn: the waiter has handed its work to the drain
        waiting.cancel()
        release.set()
        await wait_for_async(lambda: done)

        async def fails() -> None:
            raise RuntimeError("nobody waits for this")

        failing = drain.keep(fails())  # its error is consumed, not logged as never retrieved
        await asyncio.wait([failing])
        assert isinstance(failing.exception(), RuntimeError)
        return done

    assert asyncio.run(scenario()) == ["finished"]
