"""The console in a real browser: headless Chromium from the machine's packages, driven by
Playwright (never its own browser download). Signs in, creates a key and sees it once, revokes
it, finds that in the audit log, and screenshots every page into a folder it prints.

Skipped where no Chromium is installed; with CHATGPT_PROXY_REQUIRE_SERVICES=1 (CI) that skip
is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chatgpt_proxy.keystore import KeyPolicy, UsageEvent
from harness import ADMIN_KEY, Proxy
from services import _unavailable

CHROMIUM = os.environ.get("CHATGPT_PROXY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable("Chromium", f"not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable(
            "Playwright", "the playwright package is not installed (pip install -e .[dev])"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            yield page
        finally:
            browser.close()


def _seed(proxy: Proxy) -> None:
    """A little traffic, so the charts and tables have something to show."""
    store = proxy.state.store
    for name in ("analytics", "chatbot", "ci-nightly"):
        proxy.loop.run(store.create(name, KeyPolicy(rpm=60, models=("gpt-4o*",))))
    now = datetime.now(UTC)
    events = [
        UsageEvent(
            key_id=proxy.key_id,
            model=model,
            upstream="openai#1",
            endpoint="chat.completions",
            status=status,
            prompt_tokens=100 * n,
            completion_tokens=40 * n,
            total_tokens=140 * n,
            latency_ms=300 * n,
            created_at=now,
            requests=n,
        )
        for n, model, status in ((3, "gpt-4o-mini", 200), (2, "gpt-4o", 200), (1, "gpt-4o", 502))
    ]
    proxy.loop.run(store.usage.record(events))
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )


def test_an_operator_runs_the_proxy_from_the_browser(
    make_proxy: Callable[..., Proxy], browser_page: Any, tmp_path: Path
) -> None:
    proxy = make_proxy()
    _seed(proxy)
    page = browser_page
    shots = Path(os.environ.get("CHATGPT_PROXY_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {shots}")
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    # Console errors, less the one a refused sign-in's 401 answer logs.
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and "status of 401" not in message.text
            else None
        ),
    )
    page.on("dialog", lambda dialog: dialog.accept())

    def shoot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        html = page.content()
        proxy.recorder.add_bytes(html.encode())  # into the session's leak scan
        assert ADMIN_KEY not in html

    base = proxy.url + "/admin"
    page.goto(base + "/")
    shoot("01-sign-in")
    page.fill("input[name=password]", "wrong-key")
    page.click("button[type=submit]")
    assert "not the admin key" in page.inner_text("main")
    page.fill("input[name=password]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Overview')")
    page.wait_for_selector(".chart .uplot")  # the chart library drew
    cookies = page.context.cookies()
    assert [c["httpOnly"] for c in cookies] == [True] and cookies[0]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # JavaScript cannot read the session
    shoot("02-overview")

    page.click("nav >> text=Client keys")
    page.wait_for_selector("h1:text('Client keys')")
    page.click("summary:text('Create a key')")
    page.fill(".key-form input[name=name]", "browser-made")
    page.fill(".key-form input[name=rpm]", "30")
    page.click(".key-form button[type=submit]")
    page.wait_for_selector("text=shown this once")
    secret = page.input_value("#new-key")
    assert secret.startswith("pk-")
    shoot("03-key-created")
    assert proxy.client(secret).models.list().data  # it works at once

    page.goto(base + "/console/keys")
    page.fill("input[type=search]", "browser")  # htmx swaps the table in as one types
    page.wait_for_selector("#keys-table >> text=1 key matching")
    assert secret not in page.content()
    page.click("#keys-table >> text=browser-made")
    page.wait_for_selector("h1:text('browser-made')")
    page.wait_for_selector(".chart .uplot")
    assert secret not in page.content()
    key_url = page.url
    shoot("05-key")
    page.click("button:text('Revoke this key')")
    page.wait_for_selector("text=Revoked")
    page.goto(base + "/console/keys")
    shoot("04-keys")

    page.click("nav >> text=Audit log")
    page.wait_for_selector("h1:text('Audit log')")
    key_id = key_url.rsplit("/", 1)[-1]
    first_row = page.inner_text("table.audit tbody tr:first-child")
    assert "key.revoke" in first_row and key_id in first_row
    assert secret not in page.content()
    shoot("09-audit")

    for number, (link, title) in enumerate(
        [("Upstreams", "Upstream keys"), ("Usage", "Usage"), ("Moderation", "Moderation")], 6
    ):
        page.click(f"nav >> text={link}")
        page.wait_for_selector(f"h1:text('{title}')")
        shoot(f"{number:02d}-{link.lower()}")

    page.click("button:text('Sign out')")
    page.wait_for_selector("input[name=password]")
    page.goto(key_url)
    page.wait_for_selector("input[name=password]")  # the session is gone
    assert problems == [], problems  # no script error, nothing the CSP blocked
