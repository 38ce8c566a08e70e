"""The overview: the last hour's traffic from the database, latency from /metrics, key states."""

from __future__ import annotations

import re

from console_helpers import sign_in

from harness import Proxy


def test_the_overview_counts_the_last_hour_and_refreshes_as_a_fragment(proxy: Proxy) -> None:
    client = proxy.client()
    for _ in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    proxy.loop.run(proxy.state.meter.flush())
    operator = sign_in(proxy)
    fragment = operator.http.get("/admin/console/overview", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    tiles = dict(
        re.findall(
            r'<span class="label">([^<]+)</span><span class="value">([^<]+)</span>', fragment.text
        )
    )
    assert tiles["Requests, last hour"] == "3" and tiles["Errors, last hour"] == "0"
    assert tiles["Client keys"] == "1" and tiles["Streams open now"] == "0"
    assert tiles["Latency p50 / p95 (since start)"].startswith("≤")
    assert "active: 2" in fragment.text
    # The whole page polls the fragment.
    page = operator.http.get("/admin/")
    assert 'hx-get="/admin/console/overview" hx-trigger="every 5s"' in page.text


def test_a_poll_after_the_session_ended_sends_the_browser_to_sign_in(proxy: Proxy) -> None:
    answer = proxy.http().get("/admin/console/overview", headers={"HX-Request": "true"})
    assert answer.status_code == 204 and answer.headers["hx-redirect"] == "/admin/"
