"""The console behind a reverse proxy that serves the proxy under a path prefix and rewrites
Host, as nginx's ``location /llm/ { proxy_pass http://backend/; }`` does."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import httpx2
from aiohttp import web
from console_helpers import CSRF, created_secret

from harness import ADMIN_KEY, Proxy, RecordingTransport

HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


def _front(backend: str, prefix: str) -> web.Application:
    """A prefix-stripping reverse proxy in front of ``backend``."""

    async def forward(request: web.Request) -> web.Response:
        path = request.path_qs.removeprefix(prefix) or "/"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.host
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
            session.request(
                request.method,
                backend + path,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as answer,
        ):
            body = await answer.read()
            kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
            response = web.Response(status=answer.status, body=body)
            for name, value in kept:
                response.headers.add(name, value)
            return response

    app = web.Application()
    app.router.add_route("*", prefix + "/{tail:.*}", forward)
    return app


def test_sign_in_create_and_sign_out_through_a_prefixing_proxy(
    make_proxy: Callable[..., Proxy],
) -> None:
    proxy = make_proxy(server={"root_path": "/llm"})
    front = proxy.loop.start_app(_front(proxy.url, "/llm"))
    try:
        http = httpx2.Client(base_url=front, transport=RecordingTransport(proxy.recorder))
        signed = http.post(
            "/llm/admin/login", data={"password": ADMIN_KEY}, headers={"Origin": front}
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/llm/admin/"
        overview = http.get(signed.headers["location"])
        assert overview.status_code == 200 and "Overview" in overview.text
        assert 'href="/llm/admin/console/keys"' in overview.text
        assert http.get("/llm/admin/static/console.js").status_code == 200
        match = CSRF.search(overview.text)
        assert match is not None
        created = http.post(
            "/llm/admin/console/keys",
            data={"name": "via-front", "csrf": match.group(1)},
            headers={"Origin": front},
        )
        assert created.status_code == 201
        assert proxy.client(created_secret(created.text)).models.list().data
        out = http.post(
            "/llm/admin/logout", data={"csrf": match.group(1)}, headers={"Origin": front}
        )
        assert out.status_code == 303
        assert 'action="/llm/admin/login"' in http.get("/llm/admin/").text
        http.close()
    finally:
        proxy.loop.stop_app(front)
