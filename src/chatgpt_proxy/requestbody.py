"""Reading request bodies within their size limit, counted as the bytes come in.

JSON bodies are read whole (they must be parsed to route and moderate them, and kept to be
replayed on another key). Multipart uploads (image edits, audio) are streamed upstream as
they arrive; only their leading text fields (``model``, ``prompt``...) are read ahead, since
the SDKs send those before the files.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from chatgpt_proxy.errors import InvalidContentType, InvalidJSON, RequestTooLarge

_FIELDS_LOOKAHEAD = 64 * 1024
_DISPOSITION_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


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


class StreamedUpload:
    """A multipart body: its leading text fields, and the whole body as a stream.

    ``exceeded`` tells, after a failed forward, that the stream stopped at the size limit.
    """

    def __init__(self, request: web.Request, fields: dict[str, str], head: bytes, limit: int):
        self.fields = fields
        self.exceeded = False
        self.body = self._stream(request, head, limit)

    async def _stream(self, request: web.Request, head: bytes, limit: int) -> AsyncIterator[bytes]:
        size = len(head)
        yield head
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                self.exceeded = True
                raise too_large(limit)
            yield chunk


async def open_multipart(request: web.Request, limit: int) -> StreamedUpload:
    if request.content_type != "multipart/form-data":
        raise InvalidContentType("This endpoint takes multipart/form-data (or JSON).")
    match = _BOUNDARY.search(request.headers.get("Content-Type", ""))
    if match is None:
        raise InvalidContentType("The multipart Content-Type has no boundary.")
    check_declared_length(request, limit)
    boundary = b"--" + match.group(1).encode("latin-1")
    head = bytearray()
    fields: dict[str, str] = {}
    while len(head) < _FIELDS_LOOKAHEAD:
        chunk = await request.content.readany()
        if not chunk:
            break
        head += chunk
        fields, done = _leading_fields(bytes(head), boundary)
        if done:
            break
    if len(head) > limit:
        raise too_large(limit)
    return StreamedUpload(request, fields, bytes(head), limit)


def _leading_fields(data: bytes, boundary: bytes) -> tuple[dict[str, str], bool]:
    """Text fields before the first file part; ``done`` once a file part or the end is seen."""
    fields: dict[str, str] = {}
    parts = data.split(boundary)
    # parts[0] is the preamble; the last part may be incomplete and is not trusted.
    for part in parts[1:-1]:
        header, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if b"filename=" in header.lower():
            return fields, True
        name = _DISPOSITION_NAME.search(header)
        if name is not None:
            fields[name.group(1).decode("utf-8", "replace")] = value.removesuffix(b"\r\n").decode(
                "utf-8", "replace"
            )
    last = parts[-1] if len(parts) > 1 else b""
    ended = last.startswith(b"--") or b"filename=" in last.split(b"\r\n\r\n", 1)[0].lower()
    return fields, ended
