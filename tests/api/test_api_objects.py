"""Files, uploads, batches, vector stores and conversations through the official SDK, each
object its creator's alone (DESIGN §3.8).

The fake upstream keeps every object in the account of the key that made it, so a follow-up
that reached another key would fail there: every flow below that works also shows that its
follow-ups went to the key holding the object. One proxy serves the whole module; each test
makes its own client keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import orjson
import pytest

from chatgpt_proxy.keystore import KeyPolicy
from chatgpt_proxy.keystore.objects import StoredObject
from fake_openai import FakeOpenAI
from harness import Proxy, proxy_settings, start_proxy
from servers import BackgroundLoop

MODEL = "gpt-4o-mini"
TEXT = b"the quick brown fox jumps over the lazy dog\n"


@pytest.fixture(scope="module")
def shared(
    background_loop: BackgroundLoop,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
    recorder: Any,
) -> Iterator[Proxy]:
    fake_openai.reset()
    settings = proxy_settings(fake_openai, tmp_path_factory.mktemp("objects"))
    proxy = start_proxy(background_loop, settings, recorder)
    yield proxy
    proxy.close()


def new_client(proxy: Proxy, name: str = "tenant") -> openai.OpenAI:
    return proxy.client(proxy.create_key(name))


def upload(client: openai.OpenAI, data: bytes = TEXT, purpose: Any = "user_data") -> str:
    return client.files.create(file=("notes.txt", data), purpose=purpose).id


def batch_input(*prompts: str) -> bytes:
    lines = [
        {
            "custom_id": f"req-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
        }
        for n, prompt in enumerate(prompts)
    ]
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


def test_a_file_is_uploaded_listed_retrieved_downloaded_and_deleted(shared: Proxy) -> None:
    client = new_client(shared)
    file_id = upload(client)
    assert [f.id for f in client.files.list()] == [file_id]
    assert client.files.retrieve(file_id).bytes == len(TEXT)
    assert client.files.content(file_id).read() == TEXT
    assert client.files.delete(file_id).deleted
    assert list(client.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_a_list_pages_through_the_callers_objects_newest_first(shared: Proxy) -> None:
    client = new_client(shared)
    ids = [upload(client, bytes([n]) * 10) for n in range(5)]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[:-3:-1] and first.has_more
    assert [f.id for f in first] == ids[::-1]  # the SDK follows `after` to the end
    oldest = client.files.list(limit=2, order="asc", after=ids[2])
    assert [f.id for f in oldest.data] == ids[3:] and not oldest.has_more
    assert [f.id for f in client.files.list(purpose="batch")] == []


def test_a_chunked_upload_becomes_the_callers_file(shared: Proxy) -> None:
    client = new_client(shared)
    data = TEXT * 100
    done = client.uploads.upload_file_chunked(
        file=data,
        mime_type="text/plain",
        purpose="assistants",
        filename="a.txt",
        bytes=len(data),
        part_size=1000,
    )
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == data
    assert done.file.id in [f.id for f in client.files.list()]


def _usage_total(proxy: Proxy, key_id: str) -> int:
    proxy.loop.run(proxy.state.meter.flush())
    return proxy.loop.run(proxy.state.store.usage.totals(key_id))[0]


def test_a_batch_runs_from_its_input_file_to_its_output_with_usage_recorded_once(
    shared: Proxy,
) -> None:
    secret = shared.create_key("batcher")
    client = shared.client(secret)
    key_id = shared.state.keys.authenticate(f"Bearer {secret}").id
    input_id = upload(client, batch_input("one two three", "four five"), purpose="batch")
    batch = client.batches.create(
        input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    before = _usage_total(shared, key_id)

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.usage is not None and done.output_file_id
    lines = client.files.content(done.output_file_id).read().splitlines()
    assert [orjson.loads(line)["custom_id"] for line in lines] == ["req-0", "req-1"]
    assert _usage_total(shared, key_id) == before + done.usage.total_tokens

    # Seen again, on every path, it is charged nothing more.
    client.batches.retrieve(batch.id)
    assert [b.id for b in client.batches.list()] == [batch.id]
    assert _usage_total(shared, key_id) == before + done.usage.total_tokens


def test_a_batch_is_refused_when_its_key_is_out_of_budget(shared: Proxy) -> None:
    client = shared.client(shared.create_key("broke", KeyPolicy(total_token_budget=0)))
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.create(
            input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.code == "insufficient_quota"


def test_a_vector_store_with_a_file_is_searched(shared: Proxy) -> None:
    client = new_client(shared)
    first, second = upload(client), upload(client, b"a lazy cat sleeps")
    store = client.vector_stores.create(name="notes", file_ids=[first])
    client.vector_stores.files.create(vector_store_id=store.id, file_id=second)
    assert {f.id for f in client.vector_stores.files.list(store.id)} == {first, second}
    hits = client.vector_stores.search(store.id, query="quick fox")
    assert [hit.file_id for hit in hits] == [first]
    third = upload(client, b"more")
    batch = client.vector_stores.file_batches.create(store.id, file_ids=[third])
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).id
    assert [s.id for s in client.vector_stores.list()] == [store.id]
    found = client.responses.create(
        model=MODEL,
        input="what about the fox?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
    )
    assert found.id
    assert client.vector_stores.delete(store.id).deleted
    assert list(client.vector_stores.list()) == []


def test_a_conversation_keeps_its_items(shared: Proxy) -> None:
    client = new_client(shared)
    conversation = client.conversations.create(items=[{"role": "user", "content": "hello"}])
    added = client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "and more"}]
    )
    items = list(client.conversations.items.list(conversation.id))
    assert len(items) == 2 and items[1].id == added.data[0].id
    assert client.conversations.items.retrieve(items[0].id, conversation_id=conversation.id).id
    answer = client.responses.create(model=MODEL, input="go on", conversation=conversation.id)
    assert answer.id
    assert client.conversations.retrieve(conversation.id).id == conversation.id
    assert client.conversations.delete(conversation.id).deleted


# ------------------------------------------------------------------ isolation

Use = Callable[[openai.OpenAI, dict[str, str]], Any]
# Every use of another key's object: by path, and by every body field that names one.
USES: dict[str, Use] = {
    "file.retrieve": lambda c, o: c.files.retrieve(o["file"]),
    "file.delete": lambda c, o: c.files.delete(o["file"]),
    "file.content": lambda c, o: c.files.content(o["file"]),
    "file.in_batch": lambda c, o: c.batches.create(
        input_file_id=o["file"], endpoint="/v1/chat/completions", completion_window="24h"
    ),
    "file.in_store": lambda c, o: c.vector_stores.create(file_ids=[o["file"]]),
    "file.in_chat": lambda c, o: c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": o["file"]}}]}],
    ),
    "file.in_response": lambda c, o: c.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_file", "file_id": o["file"]}]}],
    ),
    "upload.part": lambda c, o: c.uploads.parts.create(o["upload"], data=b"x"),
    "upload.complete": lambda c, o: c.uploads.complete(o["upload"], part_ids=[]),
    "upload.cancel": lambda c, o: c.uploads.cancel(o["upload"]),
    "batch.retrieve": lambda c, o: c.batches.retrieve(o["batch"]),
    "batch.cancel": lambda c, o: c.batches.cancel(o["batch"]),
    "store.retrieve": lambda c, o: c.vector_stores.retrieve(o["store"]),
    "store.update": lambda c, o: c.vector_stores.update(o["store"], name="mine"),
    "store.delete": lambda c, o: c.vector_stores.delete(o["store"]),
    "store.search": lambda c, o: c.vector_stores.search(o["store"], query="fox"),
    "store.files": lambda c, o: c.vector_stores.files.list(o["store"]),
    "store.file": lambda c, o: c.vector_stores.files.retrieve(
        o["file"], vector_store_id=o["store"]
    ),
    "store.in_tool": lambda c, o: c.responses.create(
        model=MODEL,
        input="hi",
        tools=[{"type": "file_search", "vector_store_ids": [o["store"]]}],
    ),
    "conversation.retrieve": lambda c, o: c.conversations.retrieve(o["conversation"]),
    "conversation.delete": lambda c, o: c.conversations.delete(o["conversation"]),
    "conversation.items": lambda c, o: c.conversations.items.list(o["conversation"]),
    "conversation.add": lambda c, o: c.conversations.items.create(
        o["conversation"], items=[{"role": "user", "content": "x"}]
    ),
    "conversation.in_response": lambda c, o: c.responses.create(
        model=MODEL, input="hi", conversation=o["conversation"]
    ),
}
UNKNOWN = {
    "file": "file-0123456789abcdef",
    "upload": "upload_0123456789abcdef",
    "batch": "batch_0123456789abcdef",
    "store": "vs_0123456789abcdef",
    "conversation": "conv_0123456789abcdef",
}


def _refusal(client: openai.OpenAI, use: Use, objects: dict[str, str]) -> dict[str, Any]:
    """The error ``use`` gets, with the ids blanked out."""
    with pytest.raises(openai.NotFoundError) as caught:
        use(client, objects)
    raw = orjson.dumps(caught.value.response.json())
    for name, object_id in objects.items():
        raw = raw.replace(object_id.encode(), f"<{name}>".encode())
    blanked: dict[str, Any] = orjson.loads(raw)
    return blanked


def test_another_keys_objects_are_not_found_anywhere_and_never_listed(
    shared: Proxy, fake_openai: FakeOpenAI
) -> None:
    owner, other = new_client(shared, "owner"), new_client(shared, "other")
    file_id = upload(owner, batch_input("hi"), purpose="batch")
    objects = {
        "file": file_id,
        "upload": owner.uploads.create(
            bytes=1, filename="a.txt", mime_type="text/plain", purpose="assistants"
        ).id,
        "batch": owner.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
        "store": owner.vector_stores.create(name="private", file_ids=[file_id]).id,
        "conversation": owner.conversations.create().id,
    }
    before = len(fake_openai.requests)
    for name, use in USES.items():
        assert _refusal(other, use, objects) == _refusal(other, use, UNKNOWN), name
    assert len(fake_openai.requests) == before  # refused here: the upstream saw none of it

    assert list(other.files.list()) == []
    assert list(other.batches.list()) == []
    assert list(other.vector_stores.list()) == []
    # The owner's objects are all still there, and theirs.
    assert [f.id for f in owner.files.list()] == [file_id]
    assert owner.vector_stores.retrieve(objects["store"]).name == "private"
    assert owner.batches.retrieve(objects["batch"]).status == "completed"


def _holder(proxy: Proxy, kind: str, object_id: str) -> str:
    found = proxy.loop.run(proxy.state.objects.find(kind, object_id))
    assert found is not None
    return found.upstream_alias


def test_a_clients_objects_stay_on_one_upstream_key(shared: Proxy) -> None:
    """Round robin would spread them over both keys, and objects of two accounts cannot be
    used together: a client's new objects go to the key holding its others."""
    client = new_client(shared)
    files = [upload(client) for _ in range(3)]
    store = client.vector_stores.create(name="all", file_ids=files)
    holders = {_holder(shared, "file", f) for f in files}
    assert holders == {_holder(shared, "vector_store", store.id)}


def test_objects_held_by_two_upstream_keys_cannot_be_used_together(shared: Proxy) -> None:
    secret = shared.create_key("split")
    client = shared.client(secret)
    key = shared.state.keys.authenticate(f"Bearer {secret}")
    here = upload(client)
    alias = _holder(shared, "file", here)
    elsewhere = "openai#1" if alias == "openai#2" else "openai#2"
    now = datetime.now(UTC)
    stored = StoredObject("file", "file-elsewhere", key.id, "openai", elsewhere, now)
    shared.loop.run(shared.state.objects.record(stored))
    with pytest.raises(openai.ConflictError) as caught:
        client.vector_stores.create(file_ids=[here, "file-elsewhere"])
    assert caught.value.code == "resource_key_unavailable"


def test_malformed_ids_in_paths_and_bodies_are_refused_before_the_upstream(
    shared: Proxy, fake_openai: FakeOpenAI
) -> None:
    proxy = shared
    headers = {"Authorization": f"Bearer {proxy.key}"}
    http = proxy.http()
    before = len(fake_openai.requests)
    for path in ("/v1/files/file-1'--", "/v1/batches/%00", "/v1/vector_stores/a.b/files"):
        assert http.get(path, headers=headers).status_code == 404
    answer = proxy.post_json("/v1/batches", b'{"input_file_id": "file-\\u0000", "endpoint": "x"}')
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "input_file_id"
    answer = http.get("/v1/files?limit=0", headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit"
    answer = http.get("/v1/files?after=file-nope", headers=headers)
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "after"
    assert len(fake_openai.requests) == before
