"""The lines of a spooled form's files, read again from the spool before it goes upstream.

A batch input file is JSON Lines whose prompts must be moderated (``moderation.batch_input``).
The form was parsed once as it came in, into its text fields only (``multipart``); its file
parts are read here in a second pass over the very bytes that will be forwarded, a chunk at a
time: memory holds one chunk and one line, never the file::

    async for number, line in file_lines(request.headers["Content-Type"], body, max_line):
        ...  # number counts from 1 in each file part; line has no end-of-line
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from chatgpt_proxy.errors import InvalidMultipart, InvalidRequest
from chatgpt_proxy.multipart import PartHeaders
from chatgpt_proxy.upstream.client import Body

_CHUNK = 256 * 1024  # of a body held in memory, fed to the parser at a time


async def file_lines(
    content_type: str, body: Body, max_line: int
) -> AsyncIterator[tuple[int, bytes]]:
    """Every line of every file part of the form ``body``, numbered; 400 past ``max_line``."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidMultipart("The multipart Content-Type has no boundary.")
    splitter = _LineSplitter(max_line)
    parser = MultipartParser(boundary, splitter.callbacks())
    async for chunk in _chunks(body):
        try:
            parser.write(chunk)
        except FormParserError as exc:  # it was parsed whole once: only a changed spool
            raise InvalidMultipart("The multipart body is malformed.") from exc
        for found in splitter.take():
            yield found
    for found in splitter.take():
        yield found


async def _chunks(body: Body) -> AsyncIterator[bytes]:
    if body is None:
        return
    if isinstance(body, bytes):
        for start in range(0, len(body), _CHUNK):
            yield body[start : start + _CHUNK]
        return
    async for chunk in body:
        yield chunk


class _LineSplitter(PartHeaders):
    """python-multipart's callbacks, splitting the data of file parts (those with a
    ``filename``) into lines as they come; text fields were read in the first pass."""

    def __init__(self, max_line: int) -> None:
        super().__init__()
        self._max_line = max_line
        self._in_file = False
        self._number = 0
        self._partial = bytearray()
        self._lines: list[tuple[int, bytes]] = []

    def take(self) -> list[tuple[int, bytes]]:
        lines, self._lines = self._lines, []
        return lines

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False
        self._number = 0
        self._partial.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition"))
        self._in_file = b"filename" in options

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        while start < end:
            newline = data.find(b"\n", start, end)
            stop = end if newline < 0 else newline
            if len(self._partial) + stop - start > self._max_line:
                raise InvalidRequest(
                    f"Line {self._number + 1} of the file is longer than {self._max_line} bytes."
                )
            self._partial += data[start:stop]
            if newline < 0:
                return
            self._line()
            start = newline + 1

    def _part_end(self) -> None:
        if self._in_file and self._partial:
            self._line()
        self._in_file = False

    def _line(self) -> None:
        self._number += 1
        self._lines.append((self._number, bytes(self._partial.removesuffix(b"\r"))))
        self._partial.clear()
