"""Reading JSON request bodies within a size limit.

A declared ``Content-Length`` over the limit is refused before a byte is read; a body without
one is counted as it comes in, and refused once past the limit (``server.max_body_bytes``).
A JSON body is read whole: it must be parsed to route and police it, and kept to be replayed
on another key. Multipart uploads are read whole too, and spooled
(``multipart``), with the same refusal of a declared length and the same error.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatgpt_proxy.errors import InvalidContentType, InvalidJSON, RequestTooLarge


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")


async def _read_within(request: web.Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes as it arrives.

    Read from ``request.content``, not ``request.read()``: that one keeps its bytes on the
    request for as long as the request lives, and a stream's request lives a minute, its chat
    history with it; these bytes go once nothing needs them (``api/proxy.Send``).
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_declared_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)


async def read_json(request: web.Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body, byte for byte, and its parsed object."""
    if request.content_type != "application/json":
        raise InvalidContentType(
            "The request body must be JSON, sent with Content-Type: application/json."
        )
    check_declared_length(request, limit)
    body = await _read_within(request, limit)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from exc
    if not isinstance(document, dict):
        raise InvalidJSON("The JSON body of your request must be an object.")
    return body, document
