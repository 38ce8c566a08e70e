"""What the fake records about each request it receives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import hdrs
from aiohttp.base_protocol import BaseProtocol
from aiohttp.multipart import BodyPartReader, MultipartReader
from aiohttp.streams import StreamReader
from multidict import CIMultiDict


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data request body."""

    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    value: str | None = None  # the text of a non-file part
    data: bytes = field(default=b"", repr=False)  # the bytes of a file part


@dataclass(frozen=True)
class Received:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    key: str | None
    time: float  # time.monotonic()
    parts: tuple[FormPart, ...] = ()
    raw_path: str = ""  # the path as sent, percent-encoding kept (``path`` is decoded)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def form(self) -> dict[str, str]:
        """The text fields of a multipart body."""
        return {
            part.name: part.value
            for part in self.parts
            if part.name is not None and part.value is not None
        }


async def read_parts(body: bytes, content_type: str) -> tuple[FormPart, ...]:
    """Parse a multipart body already read into memory, with aiohttp's multipart reader."""
    loop = asyncio.get_running_loop()
    # Fed whole: a limit under half the body would ask this protocol-less reader to pause.
    stream = StreamReader(BaseProtocol(loop), limit=max(2**16, len(body)), loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader(CIMultiDict({hdrs.CONTENT_TYPE: content_type}), stream)
    parts: list[FormPart] = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        data = await part.read()
        value = None if part.filename is not None else data.decode(errors="replace")
        ctype = part.headers.get(hdrs.CONTENT_TYPE)
        content = data if part.filename is not None else b""
        parts.append(FormPart(part.name, part.filename, ctype, len(data), value, content))
    return tuple(parts)
