"""``file_lines`` on its own: the lines of a form's files, from a body held in memory."""

from __future__ import annotations

import asyncio

import pytest

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.multipart_lines import file_lines

BOUNDARY = "b0und4ry"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _form(file: bytes) -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\n'
            "batch\r\n"
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + file
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _lines(body: bytes, max_line: int = 1000) -> list[tuple[int, bytes]]:
    async def collect() -> list[tuple[int, bytes]]:
        return [found async for found in file_lines(CONTENT_TYPE, body, max_line)]

    return asyncio.run(collect())


def test_the_files_lines_are_numbered_and_the_fields_skipped() -> None:
    lines = _lines(_form(b"one\r\ntwo\n\nlast without newline"))
    assert lines == [(1, b"one"), (2, b"two"), (3, b""), (4, b"last without newline")]


def test_lines_spanning_chunks_are_whole() -> None:
    file = b"".join(b"x" * n + b"\n" for n in range(1, 2000, 7))
    lines = _lines(_form(file), max_line=4000)
    assert [line for _, line in lines] == file.splitlines()


def test_a_line_past_the_bound_is_refused_without_being_held() -> None:
    with pytest.raises(InvalidRequest, match=r"Line 2 .* longer than 100 bytes"):
        _lines(_form(b"short\n" + b"y" * 101 + b"\n"), max_line=100)
