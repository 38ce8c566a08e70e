"""``server.log_format: json``: every log line, access lines included, one JSON object,
scrubbed like the text lines."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable

import orjson

from chatgpt_proxy.logs import AccessLog, DeferredFlushHandler, JsonFormatter, RedactingFilter
from chatgpt_proxy.redaction import Redactor
from fake_openai import FAKE_KEYS
from harness import Proxy

SECRET = "local-upstream-secret-0123"


def test_records_are_json_objects_scrubbed_tracebacks_included() -> None:
    stream = io.StringIO()
    handler = DeferredFlushHandler(stream)
    handler.addFilter(RedactingFilter(Redactor([SECRET])))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test-logs-json")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        raise ValueError(f"upstream said {SECRET}")
    except ValueError:
        logger.exception("call failed with %s", SECRET)
    [line] = stream.getvalue().splitlines()
    record = orjson.loads(line)
    assert set(record) == {"time", "level", "logger", "message"}
    assert record["level"] == "ERROR" and record["logger"] == "test-logs-json"
    assert record["time"].endswith("+00:00")
    assert "call failed with ***" in record["message"] and "ValueError" in record["message"]
    assert SECRET not in line


def test_access_lines_as_json_carry_the_request_fields() -> None:
    stream = io.StringIO()

    async def write() -> None:
        access = AccessLog(stream, Redactor([SECRET]), json=True)
        access.request(
            "req_1",
            "GET",
            f"/v1/models/{SECRET}",
            200,
            "key_1",
            "m",
            "openai#1",
            0.0123,
            endpoint="models",
        )
        access.request(
            "req_2",
            "POST",
            "/v1/chat/completions",
            200,
            "key_1",
            "m",
            "openai#1",
            0.5,
            endpoint="chat.completions",
            usage=(3, 4, 7),
            cost=0.00021,
        )
        access.flush()

    asyncio.run(write())
    record, chat = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert record["logger"] == "chatgpt_proxy.access" and record["level"] == "INFO"
    assert record["path"] == "/v1/models/***" and SECRET not in stream.getvalue()
    assert (record["request_id"], record["status"], record["key_id"]) == ("req_1", 200, "key_1")
    assert (record["endpoint"], record["model"], record["upstream"]) == ("models", "m", "openai#1")
    assert record["latency_ms"] == 12.3
    # A request that used no tokens says nothing of them; one that did says how many.
    assert "total_tokens" not in record and "cost" not in record
    tokens = (chat["prompt_tokens"], chat["completion_tokens"], chat["total_tokens"])
    assert tokens == (3, 4, 7) and chat["cost"] == 0.00021


def test_the_proxy_writes_json_access_lines(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(server={"log_format": "json"})
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    proxy.flush_logs()
    lines = [line for line in proxy.recorder.log_lines if line.startswith("{")]
    records = [orjson.loads(line) for line in lines]
    [chat] = [r for r in records if r.get("path") == "/v1/chat/completions"]
    assert chat["key_id"] == proxy.key_id and chat["status"] == 200
    assert chat["endpoint"] != "-" and chat["model"] == "gpt-4o-mini"
    assert chat["upstream"].startswith("openai#")
    assert chat["total_tokens"] > 0
    assert chat["total_tokens"] == chat["prompt_tokens"] + chat["completion_tokens"]
    assert not any(key in line for key in FAKE_KEYS for line in lines)
