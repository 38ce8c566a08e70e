"""How the console is served: under a root path, its static files, its off switch."""

from __future__ import annotations

from collections.abc import Callable

from console_helpers import login, sign_in

from harness import ADMIN_KEY, Proxy

MakeProxy = Callable[..., Proxy]


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
