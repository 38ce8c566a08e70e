"""The admin API: client keys (create, list, get, change, revoke, usage), upstreams, moderation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import ADMIN_KEY, Proxy
from security.sec_helpers import check_error
from servers import wait_for

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
POLICY_FIELDS = {
    "rpm",
    "tpm",
    "max_concurrency",
    "daily_token_budget",
    "total_token_budget",
    "daily_cost_budget",
    "total_cost_budget",
    "models",
    "moderation",
}
MISSING_ID = "key_0123456789abcdef"


class Admin:
    """The admin API of one proxy, through a recording client."""

    def __init__(self, proxy: Proxy) -> None:
        self.http = proxy.http(headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/admin/keys", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        return self.http.request(method, path, **kwargs)


@pytest.fixture
def admin(proxy: Proxy) -> Admin:
    return Admin(proxy)


def _chat(proxy: Proxy, key: str, model: str = "gpt-4o-mini") -> httpx2.Response:
    return proxy.http().post(
        CHAT, json={**HELLO, "model": model}, headers={"Authorization": f"Bearer {key}"}
    )


def test_create_answers_the_full_key_once(admin: Admin, proxy: Proxy) -> None:
    created = admin.create(name="ci", rpm=60, models=["gpt-4o*"], moderation="strict")
    assert {"id", "name", "key", "prefix", "state", "created_at", "expires_at"} <= set(created)
    assert set(created) >= POLICY_FIELDS
    assert created["name"] == "ci"
    assert created["rpm"] == 60 and created["models"] == ["gpt-4o*"]
    assert created["moderation"] == "strict"
    assert created["tpm"] is None
    assert created["state"] == "active"
    assert created["key"].startswith("pk-") and created["key"].startswith(created["prefix"])
    assert len(created["prefix"]) < len(created["key"]) // 2
    assert "key_hash" not in created
    # The key works at once.
    assert _chat(proxy, created["key"], "gpt-4o").status_code == 200


def test_list_and_get_show_the_prefix_never_the_key(admin: Admin) -> None:
    first = admin.create(name="one")
    second = admin.create(name="two", tpm=1000)
    listing = admin.request("GET", "/admin/keys")
    assert listing.status_code == 200
    body = listing.json()
    assert body["object"] == "list"
    by_id = {item["id"]: item for item in body["data"]}
    assert {first["id"], second["id"]} <= set(by_id)
    for created in (first, second):
        item = by_id[created["id"]]
        assert "key" not in item and "key_hash" not in item
        assert item["prefix"] == created["prefix"]
        assert created["key"] not in listing.text
        one = admin.request("GET", f"/admin/keys/{created['id']}")
        assert one.status_code == 200
        assert "key" not in one.json()
        assert created["key"] not in one.text
        assert one.json() == item
    assert by_id[second["id"]]["tpm"] == 1000


def test_patch_changes_and_clears_the_policy(admin: Admin, proxy: Proxy) -> None:
    created = admin.create(name="patched", rpm=10, tpm=500, models=["gpt-4o-mini"])
    path = f"/admin/keys/{created['id']}"
    response = admin.request("PATCH", path, json={"rpm": 5, "models": ["gpt-4o", "gpt-4o-mini"]})
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["rpm"] == 5 and changed["tpm"] == 500
    assert changed["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert "key" not in changed
    assert _chat(proxy, created["key"], "gpt-4o").status_code == 200
    response = admin.request("PATCH", path, json={"rpm": None, "models": None, "name": "renamed"})
    assert response.status_code == 200, response.text
    cleared = response.json()
    assert cleared["rpm"] is None and cleared["models"] == [] and cleared["tpm"] == 500
    assert cleared["name"] == "renamed"
    assert admin.request("GET", path).json() == cleared
    # Narrowing the models applies to the next request at once.
    admin.request("PATCH", path, json={"models": ["gpt-4o-mini"]})
    check_error(_chat(proxy, created["key"], "gpt-4o"), 403, "model_not_allowed")


def test_delete_revokes_and_the_key_is_refused_within_a_second(admin: Admin, proxy: Proxy) -> None:
    created = admin.create(name="doomed")
    assert _chat(proxy, created["key"]).status_code == 200
    response = admin.request("DELETE", f"/admin/keys/{created['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked"
    assert response.json()["revoked_at"] is not None
    wait_for(
        lambda: _chat(proxy, created["key"]).status_code == 401,
        1.0,
        "still accepted a second after revocation",
    )
    check_error(_chat(proxy, created["key"]), 401, "invalid_api_key")
    shown = admin.request("GET", f"/admin/keys/{created['id']}").json()
    assert shown["state"] == "revoked"
    # Revoking again is harmless and keeps the first time.
    again = admin.request("DELETE", f"/admin/keys/{created['id']}")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == response.json()["revoked_at"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/usage")],
)
def test_unknown_id_is_404_json(admin: Admin, method: str, suffix: str) -> None:
    body = {"rpm": 5} if method == "PATCH" else None
    response = admin.request(method, f"/admin/keys/{MISSING_ID}{suffix}", json=body)
    check_error(response, 404)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "rpm": -1}, "rpm"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "rpm": "x"}, "rpm"),
        ({"name": "x", "rpm": 1.5}, "rpm"),
        ({"name": "x", "rpm": True}, "rpm"),
        ({"name": "x", "tpm": -5}, "tpm"),
        ({"name": "x", "daily_cost_budget": -1}, "daily_cost_budget"),
        ({"name": "x", "models": "gpt-4o"}, "models"),
        ({"name": "x", "models": [""]}, "models"),
        ({"name": "x", "moderation": "lenient"}, "moderation"),
        ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "x", "model": ["gpt-4o"]}, "model"),
        ({"name": "x", "unknown_field": 1}, "unknown_field"),
        ({"rpm": 5}, "name"),
        ({"name": ""}, "name"),
        ({"name": 42}, "name"),
    ],
)
def test_invalid_create_is_400_naming_the_param(
    admin: Admin, body: dict[str, Any], param: str
) -> None:
    response = admin.request("POST", "/admin/keys", json=body)
    error = check_error(response, 400)
    assert error["param"] == param, error
    assert len(admin.request("GET", "/admin/keys").json()["data"]) == 1  # only proxy.key


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": -1}, "rpm"),
        ({"rpm": "x"}, "rpm"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"name": ""}, "name"),
        ({"expires_at": 5}, "expires_at"),
    ],
)
def test_invalid_patch_is_400_naming_the_param(
    admin: Admin, body: dict[str, Any], param: str
) -> None:
    created = admin.create(name="stable", rpm=7)
    path = f"/admin/keys/{created['id']}"
    error = check_error(admin.request("PATCH", path, json=body), 400)
    assert error["param"] == param, error
    assert admin.request("GET", path).json()["rpm"] == 7


def test_admin_bodies_must_be_json_objects(admin: Admin) -> None:
    http = admin.http
    check_error(
        http.post("/admin/keys", content=b"{bad", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    check_error(
        http.post("/admin/keys", content=b"[]", headers={"Content-Type": "application/json"}),
        400,
    )
    check_error(http.post("/admin/keys", content=b"name=x"), 400)


def test_usage_by_day_and_model(admin: Admin, proxy: Proxy, fake: FakeOpenAI) -> None:
    created = admin.create(name="metered")
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        assert _chat(proxy, created["key"], model).status_code == 200
    path = f"/admin/keys/{created['id']}/usage"

    def all_metered() -> httpx2.Response | None:
        response = admin.request("GET", path)
        assert response.status_code == 200
        return response if sum(r["requests"] for r in response.json()["data"]) >= 3 else None

    response = wait_for(all_metered, 3.0, "the three requests were never all metered")
    rows = response.json()["data"]
    assert response.json()["key_id"] == created["id"]
    today = datetime.now(UTC).date().isoformat()
    by_model = {row["model"]: row for row in rows}
    assert set(by_model) == {"gpt-4o-mini", "gpt-4o"}, rows
    assert by_model["gpt-4o-mini"]["requests"] == 2
    assert by_model["gpt-4o"]["requests"] == 1
    for row in rows:
        assert row["day"] == today
        assert row["total_tokens"] > 0
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    # `since` filters by day; a future day has nothing, a bad one is a 400 naming it.
    assert admin.request("GET", path, params={"since": "2999-01-01"}).json()["data"] == []
    assert len(admin.request("GET", path, params={"since": today}).json()["data"]) == 2
    error = check_error(admin.request("GET", path, params={"since": "yesterday"}), 400)
    assert error["param"] == "since"


def test_upstreams_lists_each_key_by_alias(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    assert fake.url is not None
    proxy = make_proxy(
        upstreams=[
            {"name": "main", "base_url": fake.url + "/v1", "keys": list(FAKE_KEYS[:2])},
            {
                "name": "backup",
                "base_url": fake.url + "/v1",
                "keys": [FAKE_KEYS[2]],
                "models": ["backup-*"],
            },
        ]
    )
    fake.revoke_key(FAKE_KEYS[0])
    for _ in range(2):
        assert _chat(proxy, proxy.key).status_code == 200
    admin = Admin(proxy)
    response = admin.request("GET", "/admin/upstreams")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [(item["alias"], item["upstream"]) for item in data] == [
        ("main#1", "main"),
        ("main#2", "main"),
        ("backup#1", "backup"),
    ]
    states = {item["alias"]: item for item in data}
    assert states["main#1"]["state"] != "active"
    assert states["main#2"]["state"] == "active"
    assert states["main#2"]["requests"] >= 2
    for secret in FAKE_KEYS:
        assert secret not in response.text


def test_moderation_blocks_are_listed(make_proxy: Callable[..., Proxy], fake: FakeOpenAI) -> None:
    proxy = make_proxy(
        moderation={
            "enabled": True,
            "engines": ["rules"],
            "rules": [{"name": "no-frobnicate", "words": ["frobnicate"]}],
        }
    )
    admin = Admin(proxy)
    empty = admin.request("GET", "/admin/moderation")
    assert empty.status_code == 200
    assert empty.json() == {"object": "list", "total": 0, "data": []}
    body = {**HELLO, "messages": [{"role": "user", "content": "please frobnicate it"}]}
    response = proxy.http().post(CHAT, json=body, headers={"Authorization": f"Bearer {proxy.key}"})
    check_error(response, 400, "content_policy_violation")
    listing = admin.request("GET", "/admin/moderation").json()
    assert listing["total"] == 1
    [block] = listing["data"]
    assert block["key_id"].startswith("key_")
    assert block["endpoint"] == "chat.completions"
    assert "no-frobnicate" in str(block["reasons"])
    assert "please frobnicate it" not in str(listing)  # inputs are not kept by default
    error = check_error(admin.request("GET", "/admin/moderation", params={"limit": "x"}), 400)
    assert error["param"] == "limit"
    assert fake.count(CHAT) == 0
