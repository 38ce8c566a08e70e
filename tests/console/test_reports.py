"""The upstreams, usage, moderation and audit pages, and the audit of the API and CLI."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime

import openai
import pytest
from click.testing import CliRunner
from console_helpers import sign_in

from chatgpt_proxy.cli import main
from chatgpt_proxy.keystore import UsageEvent
from fake_openai import FAKE_KEYS
from harness import ADMIN_KEY, Proxy

MakeProxy = Callable[..., Proxy]


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
    proxy.loop.run(proxy.state.store.usage.record(events))
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
