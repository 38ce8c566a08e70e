"""The client keys pages: created and shown once, changed, revoked, paged, searched, sorted."""

from __future__ import annotations

import re
from collections.abc import Callable

import openai
import pytest
from console_helpers import created_secret, sign_in

from chatgpt_proxy.keystore import KeyPolicy
from harness import Proxy

MakeProxy = Callable[..., Proxy]


def test_a_key_created_in_the_console_is_shown_once_works_and_can_be_revoked(
    proxy: Proxy,
) -> None:
    operator = sign_in(proxy)
    created = operator.post("/admin/console/keys", {"name": "from-console", "rpm": "60"})
    assert created.status_code == 201
    secret = created_secret(created.text)
    assert "shown this once" in created.text
    assert created.headers["cache-control"] == "no-store"
    assert proxy.client(secret).models.list().data  # the new key works at once
    [key] = [k for k in proxy.loop.run(proxy.state.store.list()) if k.name == "from-console"]
    assert key.policy.rpm == 60
    # Never again: not in the list, not on the key's page.
    listing = operator.http.get("/admin/console/keys")
    detail = operator.http.get(f"/admin/console/keys/{key.id}")
    for page in (listing, detail):
        assert page.status_code == 200
        assert secret not in page.text and key.prefix in page.text
    revoked = operator.post(f"/admin/console/keys/{key.id}/revoke")
    assert revoked.status_code == 200 and "Revoked" in revoked.text
    with pytest.raises(openai.AuthenticationError):
        proxy.client(secret).models.list()
    audit = operator.http.get("/admin/console/audit").text
    assert audit.index("key.revoke") < audit.index("key.create")  # newest first
    assert key.id in audit and secret not in audit


def test_a_key_is_changed_from_its_page(proxy: Proxy) -> None:
    operator = sign_in(proxy)
    changed = operator.post(
        f"/admin/console/keys/{proxy.key_id}",
        {"name": "renamed", "rpm": "", "tpm": "1000", "models": "gpt-4o*, o1", "expires_at": ""},
    )
    assert changed.status_code == 200 and "Saved." in changed.text
    key = proxy.loop.run(proxy.state.store.get(proxy.key_id))
    assert key is not None and key.name == "renamed"
    assert key.policy.tpm == 1000 and key.policy.rpm is None
    assert key.policy.models == ("gpt-4o*", "o1")
    bad = operator.post(f"/admin/console/keys/{proxy.key_id}", {"rpm": "lots"})
    assert bad.status_code == 400
    negative = operator.post(f"/admin/console/keys/{proxy.key_id}", {"rpm": "-5"})
    assert negative.status_code == 400
    entries = proxy.loop.run(proxy.state.store.audit.page())
    assert entries[0].action == "key.update" and "tpm" in (entries[0].detail or "")


def test_the_key_list_is_paged_searched_and_sorted_in_sql(proxy: Proxy) -> None:
    store = proxy.state.store
    for n in range(60):
        proxy.loop.run(store.create(f"team-{n:02d}", KeyPolicy()))
    proxy.loop.run(store.create("100%_literal", KeyPolicy()))
    operator = sign_in(proxy)
    first = operator.http.get("/admin/console/keys")
    assert "62 keys" in first.text and "page 1 of 2" in first.text
    second = operator.http.get("/admin/console/keys", params={"page": "2"})
    assert "page 2 of 2" in second.text
    by_name = operator.http.get("/admin/console/keys", params={"sort": "name", "dir": "asc"})
    names = re.findall(r'/admin/console/keys/key_[0-9a-f]+">([^<]+)<', by_name.text)
    assert names == sorted(names) and len(names) == 50
    found = operator.http.get("/admin/console/keys", params={"q": "TEAM-0"})
    assert "10 keys" in found.text
    # LIKE's wildcards are searched for as themselves.
    assert "1 key matching" in operator.http.get("/admin/console/keys", params={"q": "%_"}).text
    assert "0 keys" in operator.http.get("/admin/console/keys", params={"q": "_x%"}).text
    # A prefix finds its key.
    prefix = proxy.key[:10]
    assert "1 key matching" in operator.http.get("/admin/console/keys", params={"q": prefix}).text
    # htmx asks for the table alone.
    partial = operator.http.get(
        "/admin/console/keys", params={"q": "team"}, headers={"HX-Request": "true"}
    )
    assert "<html" not in partial.text and "<table" in partial.text
