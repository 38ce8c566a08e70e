"""Checklist row 26: moderation verdicts and moderation outages, over real sockets.

The fake upstream flags any text holding ``FLAG:<category>`` and answers its moderation
endpoint with a 500 while ``fake.moderation_down`` is set (see ``tests/moderation``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from fake_openai import FakeOpenAI
from harness import Proxy
from security.sec_helpers import check_error

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Case:
    path: str
    body: dict[str, Any]


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


FLAGGED = {
    "chat": Case(CHAT, _chat("tell me FLAG:violence")),
    "chat-stream": Case(CHAT, _chat("tell me FLAG:violence", stream=True)),
    "completions": Case(
        "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "FLAG:hate"}
    ),
    "responses-stream": Case(
        "/v1/responses", {"model": "gpt-4o", "input": "FLAG:harassment", "stream": True}
    ),
    "image-text-part": Case(
        CHAT,
        {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/a"}},
                        {"type": "text", "text": "FLAG:self-harm"},
                    ],
                }
            ],
        },
    ),
}


def _post(proxy: Proxy, case: Case) -> httpx2.Response:
    """Send ``case`` and read the whole answer, a stream too."""
    headers = {"Authorization": f"Bearer {proxy.key}"}
    with proxy.http().stream("POST", case.path, json=case.body, headers=headers) as response:
        response.read()
    return response


def _forwarded(fake: FakeOpenAI) -> list[str]:
    return [r.path for r in fake.requests if r.path != "/v1/moderations"]


@pytest.mark.parametrize(
    "scenario",
    [
        *(f"flagged:{name}" for name in FLAGGED),
        "outage:block",
        "outage:block-stream",
        "outage:allow",
    ],
)
def test_moderation_verdicts_and_outages(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI, scenario: str
) -> None:
    """Row 26: a flagged input is a 400 ``content_policy_violation`` with
    ``x-should-retry: false`` and no completion call; a moderation outage fails closed with a
    503 ``moderation_unavailable`` and ``retry-after``, or passes under ``on_error: allow``."""
    kind, name = scenario.split(":")
    on_error = "allow" if name == "allow" else "block"
    proxy = make_proxy(moderation={"enabled": True, "on_error": on_error})
    if kind == "flagged":
        case = FLAGGED[name]
        response = _post(proxy, case)
        error = check_error(response, 400, "content_policy_violation")
        assert response.headers.get("x-should-retry") == "false", response.headers
        assert "FLAG" not in error["message"]  # categories are named, the input is not echoed
        assert fake.moderation_calls, "the input was never moderated"
        assert _forwarded(fake) == []
        return

    fake.moderation_down = True
    stream = name.endswith("stream")
    response = _post(proxy, Case(CHAT, _chat("hello", stream=stream)))
    assert fake.moderation_calls, "the moderation endpoint was never asked"
    if on_error == "allow":
        assert response.status_code == 200, response.text[:300]
        assert _forwarded(fake) == [CHAT]
        return
    check_error(response, 503, "moderation_unavailable")
    assert 1 <= int(response.headers["retry-after"]) <= 120, response.headers
    assert _forwarded(fake) == []
