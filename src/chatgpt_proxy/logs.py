"""Logging set-up, with every record scrubbed of upstream keys before it is written.

The proxy never formats a key into a message on purpose; the filter is the second line of
defence for what libraries put in exception texts (DESIGN §3.1). Records are flushed once per
turn of the event loop (``DeferredFlushHandler``); the one line per request bypasses
``logging`` altogether and is written in batches (``AccessLog``), its parts from outside the
proxy scrubbed by the same redactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from chatgpt_proxy.memo import Memo
from chatgpt_proxy.redaction import Redactor


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self._redactor.scrub(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``server.log_format: json``): time (UTC, ISO 8601), level,
    logger, message. The redacting filter has already scrubbed the message and folded any
    traceback into it."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            {
                "time": _iso_time(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        ).decode()


def _iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class DeferredFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record at once but flushes once per event-loop turn, not once per line.

    Under load a burst of warnings (an upstream failing every request, say) comes between
    two turns of the loop; one system call for all of them instead of one each. Outside a
    running loop it flushes at once. (Access lines have their own batching: ``AccessLog``.)
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if not self._flush_pending:
            self._flush_pending = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        self.flush()


class AccessLog:
    """The one line per request, written straight to the log stream, in batches.

    Through ``logging``, a record, its filter and its formatter cost about a tenth of a whole
    request's CPU under load; this writes the same line (time, level, logger name) for a
    fraction of that, its parts from outside the proxy scrubbed by the same redactor. Lines
    are written together, as nginx's ``access_log ... buffer= flush=`` does: at most
    ``flush_seconds`` after the first one, or once ``max_pending`` wait, and by ``flush()``
    on shutdown. One system call for hundreds of lines instead of one per turn of the loop.
    """

    NAME = "chatgpt_proxy.access"
    _MAX_CLEANED = 4096  # distinct paths, models and aliases remembered scrubbed

    def __init__(
        self,
        stream: TextIO,
        redactor: Redactor,
        *,
        flush_seconds: float = 0.1,
        max_pending: int = 512,
        json: bool = False,
    ) -> None:
        self._json = json  # one JSON object per line instead of text
        self._stream = stream
        self._redactor = redactor
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._cleaned: Memo[str, str] = Memo(self._MAX_CLEANED)

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        key_id: str,
        model: str,
        upstream: str,
        elapsed: float,
        endpoint: str = "-",
        usage: tuple[int, int, int] | None = None,
        cost: float | None = None,
    ) -> None:
        """One request's line; ``usage`` is the prompt, completion and total tokens metered.

        Only what did not come from the proxy itself (the path and the model the client
        sent, the configured upstream alias) is scrubbed, each remembered once scrubbed:
        scanning every whole line costs more than the rest of writing it.
        """
        if self._json:
            path, model, upstream = self._clean(path), self._clean(model), self._clean(upstream)
            message = f"{method} {path} {status}"
            fields = {
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "key_id": key_id,
                "endpoint": endpoint,
                "model": model,
                "upstream": upstream,
                "latency_ms": round(elapsed * 1000, 1),
            }
            if usage is not None:
                names = ("prompt_tokens", "completion_tokens", "total_tokens")
                fields.update(zip(names, usage, strict=True))
            if cost is not None:
                fields["cost"] = cost
            self._add_json(message, fields)
            return
        self._add(
            f"{request_id} {method} {self._clean(path)} {status} key={key_id} "
            f"model={self._clean(model)} upstream={self._clean(upstream)} {elapsed * 1000:.1f}ms"
        )

    def _clean(self, text: str) -> str:
        cleaned = self._cleaned.get(text)
        if cleaned is None:
            cleaned = self._cleaned.remember(text, self._redactor.scrub(text))
        return cleaned

    def _add(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # one strftime per second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._queue(f"{self._stamp},{int((now - second) * 1000):03d} INFO {self.NAME}: {message}\n")

    def _add_json(self, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        line = {"time": _iso_time(now), "level": "INFO", "logger": self.NAME, "message": message}
        self._queue(orjson.dumps({**line, **fields}).decode() + "\n")

    def _queue(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= self._max_pending:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        # A closed or broken log stream must not fail requests: their lines are dropped.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)
            self._stream.flush()


def access_log_enabled() -> bool:
    """Whether the log level lets access lines through (they are INFO, as other logs')."""
    return logging.getLogger(AccessLog.NAME).isEnabledFor(logging.INFO)


def configure_logging(level: str, redactor: Redactor, *, json: bool = False) -> None:
    """Every log record to standard error, scrubbed; as text, or one JSON object a line."""
    handler = DeferredFlushHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json else text)
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by the proxy's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
