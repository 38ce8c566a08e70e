"""Token usage as the upstream reports it, read from JSON answers and from SSE streams.

Chat and legacy completions report ``prompt_tokens``/``completion_tokens``; embeddings only
``prompt_tokens``; the Responses API ``input_tokens``/``output_tokens``, inside the
``response.completed`` event when streamed. All become one ``Usage``. Before the answer,
``estimate_tokens`` guesses a request's usage from its size, for the limits to reserve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

_USAGE_MARK = b'"usage"'
_COMPLETION_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class Usage(NamedTuple):  # a tuple: built for every answer, cheaper than a frozen dataclass
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_mapping(cls, usage: object) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt = _int(usage.get("prompt_tokens")) or _int(usage.get("input_tokens"))
        completion = _int(usage.get("completion_tokens")) or _int(usage.get("output_tokens"))
        total = _int(usage.get("total_tokens")) or prompt + completion
        return cls(prompt, completion, total)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_in_document(document: Any) -> Usage | None:
    """The usage of a JSON answer, or of one streamed event's payload."""
    if not isinstance(document, dict):
        return None
    if "usage" in document:
        return Usage.from_mapping(document["usage"])
    response = document.get("response")  # Responses API events wrap the response object
    if isinstance(response, dict):
        return Usage.from_mapping(response.get("usage"))
    return None


def usage_in_json(body: bytes) -> Usage | None:
    if body.find(_USAGE_MARK) < 0:  # `in` would first try, and fail, to read it as a byte
        return None
    try:
        return usage_in_document(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def event_data(event: bytes) -> bytes:
    """The payload of one SSE event: its ``data:`` lines, joined."""
    # bytes.find rather than `in`, which first tries (and fails) to read its operand as a byte.
    if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2 and event.find(b"\r") < 0:
        return event[5:-2].lstrip()  # the usual event, one LF-framed data line: no split
    return b"".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))


def estimate_tokens(document: Mapping[str, Any], body_size: int) -> int:
    """A cheap upper-leaning guess of a request's tokens, reserved before it is forwarded.

    About four bytes of body a token, plus the completion it may ask for; the reservation is
    settled with the upstream's own count afterwards, so only its order of size matters, and
    measuring the body already read costs nothing.
    """
    for name in _COMPLETION_LIMITS:
        value = document.get(name)
        if isinstance(value, int):
            return body_size // 4 + value
    return body_size // 4
