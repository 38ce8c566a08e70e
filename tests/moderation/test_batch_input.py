"""Batch input files are moderated line by line before they go upstream (POST /v1/files)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from chatgpt_proxy.keystore import KeyPolicy
from fake_openai import FakeOpenAI
from harness import ADMIN_KEY, Proxy

MODERATED = {"moderation": {"enabled": True}}


def _line(n: int, prompt: str, url: str = "/v1/chat/completions") -> dict[str, Any]:
    body: dict[str, Any]
    if url == "/v1/chat/completions":
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    elif url == "/v1/responses":
        body = {"model": "gpt-4o", "input": prompt}
    else:
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt}
    return {"custom_id": f"req-{n}", "method": "POST", "url": url, "body": body}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


def _upload(proxy: Proxy, data: bytes, purpose: Any = "batch") -> Any:
    return proxy.client().files.create(file=("input.jsonl", data), purpose=purpose)


@pytest.fixture
def moderated(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy(**MODERATED)


def test_a_clean_batch_file_is_checked_and_uploaded(moderated: Proxy, fake: FakeOpenAI) -> None:
    data = _jsonl([_line(n, f"question {n}") for n in range(5)])
    created = _upload(moderated, data)
    assert moderated.client().files.content(created.id).read() == data
    sent = [item for call in fake.moderation_calls for item in call]
    assert sorted(map(str, sent)) == sorted(f"question {n}" for n in range(5))
    assert fake.count("/v1/files") == 1


def test_a_flagged_line_refuses_the_whole_upload(moderated: Proxy, fake: FakeOpenAI) -> None:
    lines = [_line(n, f"question {n}") for n in range(1, 8)]
    lines[3] = _line(4, "something FLAG:violence")  # line 4 of the file
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(moderated, _jsonl(lines))
    error = caught.value
    assert error.code == "content_policy_violation"
    assert "line 4" in error.message and "req-4" in error.message
    assert "violence" in error.message and "FLAG" not in error.message
    assert fake.count("/v1/files") == 0
    answer = moderated.http().get(
        "/admin/moderation", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert answer.json()["data"][0]["reasons"] == ["violence"]


def test_every_batch_endpoint_is_checked_as_its_requests_are(
    moderated: Proxy, fake: FakeOpenAI
) -> None:
    for url in ("/v1/responses", "/v1/completions"):
        lines = [_line(1, "fine", url), _line(2, "", url), _line(3, "FLAG:hate", url)]
        with pytest.raises(openai.BadRequestError) as caught:
            _upload(moderated, _jsonl(lines))
        assert "line 3" in caught.value.message
    assert fake.count("/v1/files") == 0


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}\nnot json\n', "line 2"),
        (b'{"custom_id": "a", "url": "/v1/chat/completions"}\n', "line 1"),
        (b'\n\n{"custom_id": "a", "body": {}}\n', "line 3"),
        (b"[1, 2]\n", "line 1"),
        (b'{"custom_id": "a", "url": "/v1/images/edits", "body": {}}\n', "line 1"),
    ],
)
def test_a_malformed_line_is_refused(
    moderated: Proxy, fake: FakeOpenAI, content: bytes, what: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(moderated, content)
    assert caught.value.code != "content_policy_violation"
    assert what in caught.value.message
    assert fake.count("/v1/files") == 0


def test_a_big_file_spooled_to_disk_is_streamed_through_the_check(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(server={"upload_memory_bytes": 64 * 1024}, **MODERATED)
    count = 20_000
    lines = [_line(n, f"question number {n}") for n in range(1, count + 1)]
    lines[-1] = _line(count, "the last one FLAG:self-harm")
    data = _jsonl(lines)
    assert len(data) > 50 * 64 * 1024  # far past what is held in memory
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(proxy, data)
    assert f"line {count}" in caught.value.message and f"req-{count}" in caught.value.message
    calls = fake.moderation_calls
    assert sum(len(call) for call in calls) == count
    assert len(calls) > 1 and max(len(call) for call in calls) <= 64  # many lines per call
    assert fake.count("/v1/files") == 0

    clean = data.replace(b"FLAG:self-harm", b"no flag at all")
    created = _upload(proxy, clean)
    assert created.bytes == len(clean)
    assert fake.count("/v1/files") == 1


def test_files_of_other_purposes_and_unmoderated_proxies_are_not_read(
    make_proxy: Callable[..., Proxy], moderated: Proxy, fake: FakeOpenAI
) -> None:
    flagged = _jsonl([_line(1, "FLAG:violence")])
    _upload(moderated, flagged, purpose="user_data")
    _upload(make_proxy(), flagged)
    assert fake.count("/v1/moderations") == 0
    assert fake.count("/v1/files") == 2


def test_exempt_keys_upload_batch_files_unread(moderated: Proxy, fake: FakeOpenAI) -> None:
    secret = moderated.create_key("exempt", KeyPolicy(moderation="exempt"))
    client = moderated.client(secret)
    client.files.create(file=("a.jsonl", _jsonl([_line(1, "FLAG:hate")])), purpose="batch")
    assert fake.count("/v1/moderations") == 0


def test_batch_uploads_through_the_uploads_api_are_refused(
    make_proxy: Callable[..., Proxy], moderated: Proxy, fake: FakeOpenAI
) -> None:
    data = _jsonl([_line(1, "hello")])
    kwargs: dict[str, Any] = {
        "bytes": len(data),
        "filename": "input.jsonl",
        "mime_type": "application/jsonl",
    }
    with pytest.raises(openai.BadRequestError) as caught:
        moderated.client().uploads.create(purpose="batch", **kwargs)
    assert "/v1/files" in caught.value.message and caught.value.param == "purpose"
    assert fake.count("/v1/uploads") == 0
    assert moderated.client().uploads.create(purpose="assistants", **kwargs).id
    assert make_proxy().client().uploads.create(purpose="batch", **kwargs).id


def test_a_purpose_sent_as_a_file_part_is_refused(moderated: Proxy, fake: FakeOpenAI) -> None:
    # Unread as a file, it would escape the check if the upstream took it as the field.
    answer = moderated.http().post(
        "/v1/files",
        headers={"Authorization": f"Bearer {moderated.key}"},
        files=[
            ("purpose", ("purpose.txt", b"batch", "text/plain")),
            ("file", ("input.jsonl", _jsonl([_line(1, "FLAG:hate")]), "application/jsonl")),
        ],
    )
    assert answer.status_code == 400
    assert "`purpose` must be text" in answer.json()["error"]["message"]
    assert fake.count("/v1/files") == 0


def test_of_several_flagged_lines_the_first_is_named(moderated: Proxy, fake: FakeOpenAI) -> None:
    lines = [_line(n, f"question {n}") for n in range(1, 301)]
    for n in (290, 150, 40):  # in groups judged at the same time
        lines[n - 1] = _line(n, "FLAG:harassment")
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(moderated, _jsonl(lines))
    assert "line 40 " in caught.value.message
    assert fake.count("/v1/files") == 0


def test_a_flagged_line_before_a_malformed_one_is_named(moderated: Proxy, fake: FakeOpenAI) -> None:
    data = _jsonl([_line(1, "fine"), _line(2, "FLAG:hate")]) + b"not json\n"
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(moderated, data)
    assert caught.value.code == "content_policy_violation" and "line 2 " in caught.value.message
