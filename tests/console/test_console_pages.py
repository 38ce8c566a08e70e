"""Every console page and action, through a signed-in browser's requests."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime

import openai
import pytest
from click.testing import CliRunner
from console_helpers import created_secret, login, sign_in

from chatgpt_proxy.cli import main
from chatgpt_proxy.keystore import KeyPolicy, UsageEvent
from fake_openai import FAKE_KEYS
from harness import ADMIN_KEY, Proxy

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


def test_usage_by_day_model_and_key_with_csv(proxy: Proxy) -> None:
    now = datetime.now(UTC)
    common = {"key_id": proxy.key_id, "upstream": "openai#1", "endpoint": "chat.completions"}
    events = [
        UsageEvent(
            **common,
            model="gpt-4o",
            status=200,
            prompt_tokens=10,
            completion_tokens=5,
            total_tokens=15,
            latency_ms=100,
            cost=0.5,
            created_at=now,
            requests=1,
        ),
        UsageEvent(
            **common,
            model="=cmd()",
            status=500,
            prompt_tokens=1,
            completion_tokens=1,
            total_tokens=2,
            latency_ms=50,
            created_at=now,
            requests=2,
        ),
    ]
    proxy.loop.run(proxy.state.store.record_usage(events))
    operator = sign_in(proxy)
    for by, tokens in (("day", 17), ("model", 15), ("key", 17)):
        page = operator.http.get("/admin/console/usage", params={"by": by})
        assert page.status_code == 200 and f"<td>{tokens}</td>" in page.text
    exported = operator.http.get("/admin/console/usage.csv", params={"by": "model"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["group"] for row in rows} == {"gpt-4o", "'=cmd()"}  # no formula for a spreadsheet
    assert sum(int(row["requests"]) for row in rows) == 3
    assert operator.http.get("/admin/console/usage", params={"by": "nope"}).status_code == 400
    overview = operator.http.get("/admin/console/overview")
    assert "<html" not in overview.text and "Requests, last hour" in overview.text
    assert operator.http.get("/admin/").status_code == 200
    key_page = operator.http.get(f"/admin/console/keys/{proxy.key_id}")
    assert "gpt-4o" in key_page.text and "data-chart" in key_page.text


def test_upstreams_show_states_and_a_retired_key_is_readmitted(proxy: Proxy) -> None:
    [upstream] = proxy.state.router.upstreams
    key = upstream.pool.keys()[0]
    upstream.pool.report_retired(key, "invalid_api_key")
    operator = sign_in(proxy)
    page = operator.http.get("/admin/console/upstreams")
    assert "openai#1" in page.text and "retired" in page.text and "Re-admit" in page.text
    assert not any(secret in page.text for secret in FAKE_KEYS)
    answer = operator.post("/admin/console/upstreams/openai%231/readmit")
    assert answer.status_code == 303
    assert str(upstream.pool.snapshot()[0].state) == "active"
    assert operator.post("/admin/console/upstreams/nope%231/readmit").status_code == 404
    [entry, *_] = proxy.loop.run(proxy.state.store.audit.page())
    assert (entry.action, entry.target) == ("upstream.readmit", "openai#1")


def test_moderation_blocks_are_listed(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        moderation={
            "enabled": True,
            "engines": ["rules"],
            "rules": [{"name": "no-bananas", "words": ["banana"]}],
        }
    )
    with pytest.raises(openai.BadRequestError):
        proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "banana"}]
        )
    page = sign_in(proxy).http.get("/admin/console/moderation")
    assert page.status_code == 200 and "no-bananas" in page.text and proxy.key_id in page.text


def test_the_json_api_and_the_cli_are_audited(proxy: Proxy, tmp_path: object) -> None:
    http = proxy.http(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    created = http.post("/admin/keys", json={"name": "api-key"}).json()
    http.patch(f"/admin/keys/{created['id']}", json={"rpm": 5})
    http.delete(f"/admin/keys/{created['id']}")
    listed = http.get("/admin/audit", params={"limit": "2"}).json()
    assert [e["action"] for e in listed["data"]] == ["key.revoke", "key.update"]
    assert listed["has_more"] and listed["data"][0]["actor"] == "api"
    older = http.get("/admin/audit", params={"before": str(listed["data"][-1]["id"])}).json()
    assert older["data"][0]["action"] == "key.create"
    assert created["key"] not in str(listed) + str(older)
    assert http.get("/admin/audit", params={"before": "x"}).status_code == 400
    assert proxy.http().get("/admin/audit").status_code == 401
    assert (
        proxy.http()
        .get("/admin/audit", headers={"Authorization": f"Bearer {proxy.key}"})
        .status_code
        == 401
    )
    # The CLI, on the same database.
    url = proxy.state.settings.database_url
    env = {"OPENAI_API_KEYS": "sk-cli-0000000000000000000001", "CHATGPT_PROXY_DATABASE_URL": url}
    result = CliRunner().invoke(main, ["keys", "create", "--name", "cli-key", "--json"], env=env)
    assert result.exit_code == 0, result.output
    entries = proxy.loop.run(proxy.state.store.audit.page(limit=1))
    assert (entries[0].actor, entries[0].action) == ("cli", "key.create")


def test_the_console_lives_under_the_root_path(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(server={"root_path": "/llm"})
    page = proxy.http().get("/admin/")
    assert 'action="/llm/admin/login"' in page.text
    assert 'src="/llm/admin/static/vendor/htmx-2.0.11.min.js"' in page.text
    answer = login(proxy)
    assert answer.headers["location"] == "/llm/admin/"
    assert "Path=/llm/admin" in answer.headers["set-cookie"]


def test_static_files_are_served_with_their_licences(proxy: Proxy) -> None:
    http = proxy.http()
    for name in (
        "console.js",
        "console.css",
        "vendor/htmx-2.0.11.min.js",
        "vendor/htmx-2.0.11.LICENSE.txt",
        "vendor/uPlot-1.6.32.iife.min.js",
        "vendor/uPlot-1.6.32.min.css",
        "vendor/uPlot-1.6.32.LICENSE.txt",
    ):
        assert http.get(f"/admin/static/{name}").status_code == 200, name
    assert http.get("/admin/static/../templates/base.html").status_code == 404


def test_the_console_can_be_turned_off(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(console={"enabled": False})
    for path in ("/admin/", "/admin/console/keys", "/admin/static/console.js"):
        answer = proxy.http().get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
    assert login(proxy).status_code == 404
    ok = proxy.http().get("/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert ok.status_code == 200


def test_console_requests_are_counted_as_such(proxy: Proxy) -> None:
    sign_in(proxy).http.get("/admin/console/keys")
    metrics = proxy.http().get("/metrics").text
    assert 'chatgpt_proxy_requests_total{endpoint="console",status="200"}' in metrics
