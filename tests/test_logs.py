"""Logs: records scrubbed of upstream keys and account ids; lines flushed once per loop turn."""

from __future__ import annotations

import asyncio
import io
import logging
import re

from chatgpt_proxy.logs import AccessLog, DeferredFlushHandler, RedactingFilter
from chatgpt_proxy.redaction import Redactor
from servers import wait_for_async

SECRET = "local-upstream-secret-0123"


class _CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _logger(stream: io.StringIO) -> tuple[logging.Logger, DeferredFlushHandler]:
    handler = DeferredFlushHandler(stream)
    handler.addFilter(RedactingFilter(Redactor([SECRET])))
    logger = logging.getLogger(f"test-logs-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_secrets_key_shapes_and_account_ids_are_scrubbed() -> None:
    redactor = Redactor([SECRET])
    text = f"upstream said {SECRET} for sk-proj-abcdef123 in org-AbCdEf12 / proj_XyZ12345"
    assert redactor.scrub(text) == "upstream said *** for sk-*** in org-*** / proj_***"
    plain = "req_1 POST /v1/chat/completions 200 key=key_1 model=gpt-4o 3.1ms"
    assert redactor.scrub(plain) is plain  # nothing to replace: the text is returned as it is
    assert redactor.scrub_bytes(SECRET.encode() + b" org-AbCdEf12") == b"*** org-***"


def test_a_traceback_is_scrubbed_too() -> None:
    stream = io.StringIO()
    logger, _ = _logger(stream)
    try:
        raise RuntimeError(f"connecting with {SECRET}")
    except RuntimeError:
        logger.exception("upstream failed")
    assert SECRET not in stream.getvalue()
    assert "RuntimeError: connecting with ***" in stream.getvalue()


def test_lines_are_written_at_once_and_flushed_once_per_loop_turn() -> None:
    stream = _CountingStream()
    logger, _ = _logger(stream)

    async def burst() -> int:
        for n in range(100):
            logger.info("line %d", n)
        flushes_during_burst = stream.flushes
        await asyncio.sleep(0)  # one turn of the loop
        return flushes_during_burst

    assert asyncio.run(burst()) == 0
    assert stream.flushes == 1
    assert stream.getvalue().count("\n") == 100


def test_outside_a_loop_every_line_is_flushed() -> None:
    stream = _CountingStream()
    logger, _ = _logger(stream)
    logger.info("one")
    logger.info("two")
    assert stream.flushes == 2


def _request(
    access: AccessLog, request_id: str, method: str = "POST", path: str = "/v1/chat/completions"
) -> None:
    status = 200 if method == "POST" else 404
    access.request(request_id, method, path, status, "key_1", "gpt-4o-mini", "openai#1", 0.0012)


def test_access_lines_have_the_log_format_are_scrubbed_and_written_in_batches() -> None:
    stream = _CountingStream()
    access = AccessLog(stream, Redactor([SECRET]), flush_seconds=0.05)

    async def burst() -> tuple[str, int]:
        for n in range(50):
            _request(access, f"req_{n}")
        _request(access, "req_x", "GET", f"/v1/models/{SECRET}")
        await asyncio.sleep(0)
        written_at_once = stream.getvalue()
        await wait_for_async(lambda: stream.flushes, message="the batch was never written")
        return written_at_once, stream.flushes

    written_at_once, flushes = asyncio.run(burst())
    assert written_at_once == ""  # not one write per line, nor per turn of the loop
    assert flushes == 1
    lines = stream.getvalue().splitlines()
    assert len(lines) == 51
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp + r" INFO chatgpt_proxy\.access: req_0 POST /v1/chat/completions 200 key=key_1"
        r" model=gpt-4o-mini upstream=openai#1 1\.2ms",
        lines[0],
    )
    assert lines[-1].endswith(
        "req_x GET /v1/models/*** 404 key=key_1 model=gpt-4o-mini upstream=openai#1 1.2ms"
    )


def test_a_request_line_scrubs_what_the_client_sent_and_the_alias() -> None:
    stream = _CountingStream()
    access = AccessLog(stream, Redactor([SECRET]))

    async def lines() -> None:
        for _ in range(2):  # the second time, the scrubbed texts are remembered
            access.request(
                "req_1",
                "GET",
                f"/v1/models/{SECRET}",
                404,
                "-",
                f"x-{SECRET}",
                "org-AbCd1234",
                0.0012,
            )
        access.flush()

    asyncio.run(lines())
    lines_written = stream.getvalue().splitlines()
    assert len(lines_written) == 2
    for line in lines_written:
        assert SECRET not in line
        assert line.endswith(
            "req_1 GET /v1/models/*** 404 key=- model=x-*** upstream=org-*** 1.2ms"
        )


def test_a_full_batch_is_written_at_once_and_flush_writes_the_rest() -> None:
    stream = _CountingStream()
    access = AccessLog(stream, Redactor(), flush_seconds=60, max_pending=10)

    async def lines() -> None:
        for n in range(25):
            _request(access, f"req_{n}")
        assert stream.getvalue().count("\n") == 20
        access.flush()  # as on shutdown

    asyncio.run(lines())
    assert stream.getvalue().count("\n") == 25


def test_a_broken_access_log_stream_does_not_fail_the_request() -> None:
    stream = io.StringIO()
    stream.close()

    async def write() -> None:
        access = AccessLog(stream, Redactor())
        _request(access, "req_1")
        access.flush()

    asyncio.run(write())  # no exception


def test_scrubbed_paths_are_remembered_within_a_bound_of_characters() -> None:
    access = AccessLog(io.StringIO(), Redactor([SECRET]), flush_seconds=60)
    remembered = access._cleaned  # what a client can make the access log keep
    paths = [f"/v1/models/{n:04d}" + "p" * 100_000 for n in range(30)]

    async def lines() -> None:
        for path in paths:
            _request(access, "req_1", "GET", path)
            assert remembered.weight <= (remembered.max_bytes or 0)
        access.flush()

    asyncio.run(lines())
    assert len(remembered) < len(paths)
    assert remembered.get(paths[0]) is None and remembered.get(paths[-1]) == paths[-1]
