"""Signing in to the console of a test proxy, as a browser would: cookies, Origin, CSRF."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx2

from harness import ADMIN_KEY, Proxy

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass
class Operator:
    """A signed-in browser: its client (holding the session cookie) and the page's CSRF token."""

    proxy: Proxy
    http: httpx2.Client
    csrf: str

    def post(
        self, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> httpx2.Response:
        """A form posted from a console page: same Origin, the CSRF token."""
        headers = {"Origin": self.proxy.url, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        form = {"csrf": self.csrf, **(data or {})}
        return self.http.post(path, data=form, headers=headers, **kwargs)  # type: ignore[arg-type]


def login(proxy: Proxy, password: str = ADMIN_KEY) -> httpx2.Response:
    """One sign-in attempt from a fresh browser."""
    return proxy.http().post(
        "/admin/login", data={"password": password}, headers={"Origin": proxy.url}
    )


def sign_in(proxy: Proxy) -> Operator:
    http = proxy.http()
    answer = http.post("/admin/login", data={"password": ADMIN_KEY}, headers={"Origin": proxy.url})
    assert answer.status_code == 303, answer.text
    page = http.get("/admin/")
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match is not None, page.text
    return Operator(proxy, http, match.group(1))


def created_secret(html: str) -> str:
    match = re.search(r'value="(pk-[A-Za-z0-9_-]+)"', html)
    assert match is not None, html
    return match.group(1)
