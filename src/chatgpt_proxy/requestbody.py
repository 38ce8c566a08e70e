"""Reading JSON request bodies within a size limit.

A declared ``Content-Length`` over the limit is refused before a byte is read; a body without
one is counted as it comes in by aiohttp, which stops at the app's ``client_max_size``
(``server.max_body_bytes``). A JSON body is read whole: it must be parsed to route and police
it, and kept to be replayed on another key. Multipart uploads are read whole too, and spooled
(``multipart``), with the same refusal of a declared length and the same error.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatgpt_proxy.errors import InvalidContentType, InvalidJSON, RequestTooLarge


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")


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
    try:
        body = await request.read()  # aiohttp stops at client_max_size while reading
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large(limit) from exc
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
