"""Multipart uploads, read whole and policed before a byte of them goes upstream.

A form's text fields (``model``, ``prompt``, ``stream``...) may sit before or after its files,
and every one of them must reach the allowlist, routing, moderation and pricing (DESIGN §3.7).
So the body is read to its end before anything is forwarded: counted against its limit as the
bytes come in, parsed on the way by python-multipart's push parser (no second pass), and kept
as received in a spool, in memory up to a bound and then in an anonymous temporary file. Those
very bytes go upstream, and can go again to another key. The spool is closed on every path by
whoever holds the ``SpooledUpload``; an anonymous file leaves nothing on disk even if the
process dies.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from chatgpt_proxy.errors import InvalidContentType, InvalidMultipart
from chatgpt_proxy.requestbody import check_declared_length, too_large
from chatgpt_proxy.upstream.client import Body, ReplayableBody

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict for type checkers only

FieldValue = str | list[str]
Spool = tempfile.SpooledTemporaryFile[bytes]

_WRITE_BATCH = 256 * 1024  # bytes gathered before one write to a spool on disk
_READ_CHUNK = 256 * 1024
_MAX_PARTS = 1000  # OpenAI's forms have a few dozen; each part costs memory to track
_IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})
# Fields the proxy polices (allowlist, routing, moderation, metering): sent as a file part,
# which it does not read, they would slip past it if the upstream took them as text.
_POLICED_NAMES = frozenset({b"model", b"prompt", b"stream", b"purpose"})
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # as pydantic reads a form's true


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How much of an upload is accepted, and how much of it is held in memory."""

    body: int  # the whole body, files included
    fields: int  # its text fields together, which are held in memory to be policed
    memory: int  # bytes kept in memory before the spool moves to a temporary file
    directory: str | None = None  # where that file goes; None: the system's temp dir


class SpooledUpload:
    """A multipart body read whole: its text fields, and its bytes until ``close()``::

    with await read_multipart(request, limits) as upload:
        police(upload.fields)  # every text field, wherever it sat
        await forward(upload.body)  # the bytes as received; may be sent again
    """

    def __init__(self, spool: Spool, size: int, on_disk: bool, fields: _Fields) -> None:
        self.fields: dict[str, FieldValue] = fields.values
        self.size = size
        self._spool = spool
        self._body: Body
        if on_disk:
            self._body = _DiskBody(spool, size)
        else:
            spool.seek(0)
            self._body = spool.read()
            spool.close()  # not held twice in memory

    @property
    def body(self) -> Body:
        """``bytes`` when held in memory, else an iterable over the file, replayable."""
        return self._body

    @property
    def fields_size(self) -> int:
        """Bytes of text in the fields: what a token estimate should count, not the files."""
        return sum(
            len(value) if isinstance(value, str) else sum(map(len, value))
            for value in self.fields.values()
        )

    def close(self) -> None:
        if isinstance(self._body, _DiskBody):
            self._body.closed = True
        self._spool.close()

    def __enter__(self) -> SpooledUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def form_flag(value: FieldValue | None) -> bool:
    """A form field read as a boolean the way a lenient server reads it (``stream=1``...)."""
    return isinstance(value, str) and value.strip().lower() in _TRUE


async def read_multipart(request: web.Request, limits: UploadLimits) -> SpooledUpload:
    """Read, count, parse and spool the whole body; 400 if it is not a well-formed form."""
    if request.content_type != "multipart/form-data":
        raise InvalidContentType("This endpoint takes multipart/form-data (or JSON).")
    _, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidMultipart("The multipart Content-Type has no boundary.")
    check_declared_length(request, limits.body)
    fields = _Fields(limits.fields)
    try:
        parser = MultipartParser(boundary, fields.callbacks())
    except FormParserError as exc:
        raise InvalidMultipart("The multipart boundary is not valid.") from exc
    # It outlives this function, in the SpooledUpload that closes it. With max_size 0 it never
    # rolls over by itself: _receive does, once the bound is passed, in a thread like every
    # write to disk.
    spool: Spool = tempfile.SpooledTemporaryFile(max_size=0, dir=limits.directory)  # noqa: SIM115
    try:
        size, on_disk = await _receive(request, parser, spool, limits)
        if not fields.ended:
            raise InvalidMultipart("The multipart body ends before its closing boundary.")
        return SpooledUpload(spool, size, on_disk, fields)
    except BaseException:
        spool.close()
        raise


async def _receive(
    request: web.Request, parser: MultipartParser, spool: Spool, limits: UploadLimits
) -> tuple[int, bool]:
    """Feed the parser and the spool as the bytes come in; the body's size and where it is."""
    size = 0
    on_disk = False
    pending = bytearray()
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limits.body:
            raise too_large(limits.body)
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise InvalidMultipart("The multipart body is malformed.") from exc
        pending += chunk
        if not on_disk and size > limits.memory:
            on_disk = True
            await asyncio.to_thread(_roll_over, spool, bytes(pending))
            pending.clear()
        elif not on_disk:
            spool.write(pending)
            pending.clear()
        elif len(pending) >= _WRITE_BATCH:
            await asyncio.to_thread(spool.write, bytes(pending))
            pending.clear()
    if on_disk:
        # Flushed: the file is then read by descriptor, past the spool's own buffer.
        await asyncio.to_thread(_write_out, spool, bytes(pending))
    return size, on_disk


def _write_out(spool: Spool, data: bytes) -> None:
    spool.write(data)
    spool.flush()


def _roll_over(spool: Spool, data: bytes) -> None:
    spool.rollover()
    spool.write(data)


class _DiskBody(ReplayableBody):
    """The spooled file, read from its start at every iteration (every try on a key).

    Each iteration reads through its own duplicate of the file descriptor, by offset: tries
    never share a file position, and a read still under way when the upload is closed reads
    the same file, never whatever file reuses the number.
    """

    def __init__(self, spool: Spool, size: int) -> None:
        self._spool = spool
        self.size = size
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.closed:
            raise ConnectionAbortedError("the upload was closed")
        fd = os.dup(self._spool.fileno())
        try:
            offset = 0
            while offset < self.size and not self.closed:
                length = min(_READ_CHUNK, self.size - offset)
                chunk = await asyncio.to_thread(os.pread, fd, length, offset)
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)


class PartHeaders(ABC):
    """The headers of the form part python-multipart is reading, from its header callbacks
    (``on_header_field``, ``on_header_value``, ``on_header_end``): what a reader of a form's
    parts builds on. ``_headers`` holds them by lower-case name; a reader empties it as each
    part begins, and says in its own four hooks what it does with the parts."""

    def __init__(self) -> None:
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}

    def callbacks(self) -> MultipartCallbacks:
        """python-multipart's callbacks for the parts: the headers here, the rest the reader's."""
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    @abstractmethod
    def _part_begin(self) -> None: ...

    @abstractmethod
    def _headers_finished(self) -> None: ...

    @abstractmethod
    def _part_data(self, data: bytes, start: int, end: int) -> None: ...

    @abstractmethod
    def _part_end(self) -> None: ...

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()


class _Fields(PartHeaders):
    """The text fields of a form, gathered from python-multipart's callbacks.

    A part with a ``filename`` is a file and is not kept (the spool has it); every other part
    is a text field, which must be valid UTF-8, not transfer-encoded, and named once unless its
    name ends with ``[]`` (the SDKs' arrays): a value policed here must be the one the upstream
    reads.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.values: dict[str, FieldValue] = {}
        self.ended = False
        self._limit = limit
        self._size = 0
        self._parts = 0
        self._name: str | None = None
        self._value: bytearray | None = None  # None while in a file part

    def callbacks(self) -> MultipartCallbacks:
        return {**super().callbacks(), "on_end": self._end}

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise InvalidMultipart(f"The form has more than {_MAX_PARTS} parts.")
        self._headers = {}
        self._name = None
        self._value = None

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or not name:
            raise InvalidMultipart("Every part of the form needs a name (Content-Disposition).")
        if b"filename" in options:
            if name.lower() in _POLICED_NAMES:
                raise InvalidMultipart(f"The field `{_text(name, 'A field name')}` must be text.")
            return
        encoding = self._headers.get("content-transfer-encoding", "").lower()
        if encoding not in _IDENTITY_ENCODINGS:
            raise InvalidMultipart("A text field of the form may not be transfer-encoded.")
        self._name = _text(name, "A field name")
        self._value = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._value is None:
            return
        self._size += end - start
        if self._size > self._limit:
            raise too_large(self._limit)
        self._value += data[start:end]

    def _part_end(self) -> None:
        if self._name is None or self._value is None:
            return
        name, value = self._name, _text(self._value, f"The field `{self._name}`")
        if name.endswith("[]"):
            entries = self.values.setdefault(name, [])
            assert isinstance(entries, list)
            entries.append(value)
        elif name in self.values:
            raise InvalidMultipart(f"The field `{name}` is given more than once.")
        else:
            self.values[name] = value

    def _end(self) -> None:
        self.ended = True


def _text(data: bytes | bytearray, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMultipart(f"{what} is not valid UTF-8.") from exc
