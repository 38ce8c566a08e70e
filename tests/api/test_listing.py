"""Lists of stored objects, served from the records: what they leave out, what they refuse."""

from __future__ import annotations

import openai
import pytest

from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy

MODEL = "gpt-4o-mini"


def test_a_list_leaves_out_what_the_upstream_no_longer_has_or_cannot_reach(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    client = proxy.client()
    kept, expired = (
        client.files.create(file=("a.txt", b"a"), purpose="user_data").id for _ in "ab"
    )
    fake.objects.expire_file(expired)
    assert [f.id for f in client.files.list()] == [kept]

    holder = fake.last("/v1/files").key
    assert holder is not None
    fake.revoke_key(holder)
    for _ in FAKE_KEYS[:2]:  # round robin reaches it: the proxy retires it
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert list(client.files.list()) == []
    with pytest.raises(openai.ConflictError) as caught:
        client.files.retrieve(kept)
    assert caught.value.code == "resource_key_unavailable"


def test_odd_list_parameters_are_refused_before_the_upstream(
    proxy: Proxy, fake: FakeOpenAI
) -> None:
    http = proxy.http()
    auth = {"Authorization": f"Bearer {proxy.key}"}
    for query, param in (("limit=abc", "limit"), ("limit=-1", "limit"), ("order=up", "order")):
        answer = http.get(f"/v1/batches?{query}", headers=auth)
        assert answer.status_code == 400, query
        assert answer.json()["error"]["param"] == param
    answer = http.get("/v1/vector_stores?limit=100000", headers=auth)
    assert answer.json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    assert fake.requests == []
