"""Batch input files: their prompts are moderated before the file goes upstream (DESIGN §2).

A file uploaded with ``purpose=batch`` (``POST /v1/files``) is read line by line from its spool,
each line's ``body`` judged as a request to its ``url`` would be, many lines per moderation
call. A blocked line refuses the whole upload with 400 ``content_policy_violation`` naming its
line and ``custom_id``; a line that is not a batch request is a 400 too: what cannot be read
cannot be judged. The Uploads API sends its parts upstream one by one, so a line could span two
of them unseen: with moderation on, a batch upload goes through ``POST /v1/files`` only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from chatgpt_proxy.errors import ContentPolicyViolation, InvalidRequest
from chatgpt_proxy.exchange import Exchange, Next
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.moderation.moderator import Moderator
from chatgpt_proxy.multipart_lines import file_lines
from chatgpt_proxy.upstream.client import Body

# The endpoints a batch calls, by the `url` of its lines, and their names here.
BATCH_ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/moderations": "moderations",
}
# Lines judged together: one moderation call for all their texts (and one per image).
_GROUP_LINES = 32
_GROUP_BYTES = 512 * 1024
_IN_FLIGHT = 4  # groups judged at once: at most this many calls from one upload
_SHOWN_ID_CHARS = 64


class _Line(NamedTuple):
    number: int
    custom_id: str
    endpoint: str
    body: Mapping[str, Any]


class ModerateBatchInput:
    """The moderation of ``POST /v1/files`` with ``purpose=batch``; other files go on unread."""

    def __init__(self, moderator: Moderator, *, max_line: int) -> None:
        self._moderator = moderator
        self._max_line = max_line

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        if _is_batch(exchange.document) and self._moderator.applies_to(exchange.key):
            content_type = exchange.request.headers.get("Content-Type", "")
            await check_batch_file(
                self._moderator, content_type, exchange.body, exchange.key, self._max_line
            )
        return await forward(exchange)


class RefuseBatchUploads:
    """``POST /v1/uploads`` with ``purpose=batch``: refused while moderation applies, since
    its parts go upstream one at a time and a line may span two of them."""

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        if _is_batch(exchange.document) and self._moderator.applies_to(exchange.key):
            raise InvalidRequest(
                "Batch input files are moderated on this server: upload them with "
                "POST /v1/files (purpose=batch), not with the Uploads API.",
                param="purpose",
            )
        return await forward(exchange)


async def check_batch_file(
    moderator: Moderator, content_type: str, body: Body, key: ClientKey | None, max_line: int
) -> None:
    """Judge every line of the form's file; raise for the first blocked or malformed one.

    A few groups of lines are judged at once (each call waits on the upstream), and their
    verdicts awaited in order: the line named is the file's first blocked one.
    """
    window: deque[asyncio.Task[None]] = deque()
    try:
        try:
            async for group in _groups(content_type, body, max_line):
                if len(window) >= _IN_FLIGHT:
                    await window.popleft()
                window.append(asyncio.create_task(_judge(moderator, group, key)))
        except ContentPolicyViolation:
            raise
        except InvalidRequest:  # a malformed line: a block before it is the first fault
            await _in_order(window)
            raise
        await _in_order(window)
    finally:
        for task in window:
            task.cancel()
        await asyncio.gather(*window, return_exceptions=True)


async def _in_order(window: deque[asyncio.Task[None]]) -> None:
    while window:
        await window.popleft()


async def _groups(content_type: str, body: Body, max_line: int) -> AsyncIterator[list[_Line]]:
    """The file's requests, a few lines of one endpoint at a time; blank lines skipped."""
    group: list[_Line] = []
    size = 0
    async for number, raw in file_lines(content_type, body, max_line):
        if not raw.strip():
            continue
        try:
            line = _parse(number, raw)
        except InvalidRequest:
            if group:  # judged before the malformed line is reported
                yield group
            raise
        if group and (
            line.endpoint != group[0].endpoint or len(group) >= _GROUP_LINES or size >= _GROUP_BYTES
        ):
            yield group
            group, size = [], 0
        group.append(line)
        size += len(raw)
    if group:
        yield group


async def _judge(moderator: Moderator, group: list[_Line], key: ClientKey | None) -> None:
    blocked = await moderator.first_blocked([(line.endpoint, line.body) for line in group], key)
    if blocked is not None:
        index, reasons = blocked
        line = group[index]
        raise ContentPolicyViolation(
            "The batch input file was rejected by the content policy: "
            f"line {line.number} (custom_id {line.custom_id}) is flagged for {reasons}."
        )


def _parse(number: int, raw: bytes) -> _Line:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        request = None
    if not isinstance(request, dict):
        raise _malformed(number, "is not a JSON object")
    url, body = request.get("url"), request.get("body")
    if not isinstance(body, dict):
        raise _malformed(number, "has no `body` object")
    if not isinstance(url, str):
        raise _malformed(number, "has no `url`")
    endpoint = BATCH_ENDPOINTS.get(url)
    if endpoint is None:
        known = ", ".join(BATCH_ENDPOINTS)
        raise _malformed(number, f"has a `url` a batch cannot call here (one of: {known})")
    return _Line(number, _shown(request.get("custom_id")), endpoint, body)


def _malformed(number: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"The batch input file is not valid: line {number} {what}.", param="file")


def _shown(custom_id: object) -> str:
    """The custom_id as the error names it: JSON, cut short (it is the client's own text)."""
    text = orjson.dumps(custom_id).decode()
    if len(text) > _SHOWN_ID_CHARS:
        return text[: _SHOWN_ID_CHARS - 1] + "…"
    return text


def _is_batch(document: Mapping[str, Any]) -> bool:
    purpose = document.get("purpose")
    return isinstance(purpose, str) and purpose.strip().lower() == "batch"
