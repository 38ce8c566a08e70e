"""Moderation through the running proxy, driven with the official SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from fake_openai import FakeOpenAI
from harness import ADMIN_KEY, Proxy

MODERATED = {"moderation": {"enabled": True}}


@pytest.fixture
def moderated(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy(**MODERATED)


def _chat(proxy: Proxy, messages: list[dict[str, Any]]) -> Any:
    return proxy.client().chat.completions.create(model="gpt-4o-mini", messages=messages)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_flagged_message_anywhere_blocks_the_chat(
    moderated: Proxy, fake: FakeOpenAI, position: int
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me a story."},
        {"role": "user", "content": "About a cat."},
    ]
    messages[position]["content"] += " FLAG:violence"
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(moderated, messages)
    error = caught.value
    assert error.code == "content_policy_violation"
    assert "violence" in error.message
    assert "FLAG" not in error.message  # the message names categories, never the text
    assert error.response.headers["x-should-retry"] == "false"
    assert fake.count("/v1/chat/completions") == 0


def test_a_flagged_text_part_in_a_content_list_blocks(moderated: Proxy, fake: FakeOpenAI) -> None:
    content = [
        {"type": "text", "text": "Look at this"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "text", "text": "FLAG:hate"},
    ]
    with pytest.raises(openai.BadRequestError):
        _chat(moderated, [{"role": "user", "content": content}])
    assert fake.count("/v1/chat/completions") == 0
    sent = [item for call in fake.moderation_calls for item in call]
    # The image goes to the moderation endpoint as given; the proxy never fetches it.
    assert any("example.invalid" in str(item) for item in sent)


def test_clean_chats_pass_and_are_checked_once(moderated: Proxy, fake: FakeOpenAI) -> None:
    reply = _chat(moderated, [{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content
    assert fake.count("/v1/moderations") == 1
    assert fake.count("/v1/chat/completions") == 1


def test_other_endpoints_are_checked(moderated: Proxy, fake: FakeOpenAI) -> None:
    client = moderated.client()
    calls: list[Callable[[], object]] = [
        lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="FLAG:hate"),
        lambda: client.images.generate(model="dall-e-3", prompt="FLAG:violence"),
        lambda: client.responses.create(model="gpt-4o", input="FLAG:harassment"),
        lambda: client.responses.create(
            model="gpt-4o", input="fine", instructions="FLAG:harassment"
        ),
        lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="FLAG:hate"),
        lambda: client.images.edit(
            model="dall-e-2", image=("a.png", b"\x89PNG....", "image/png"), prompt="FLAG:hate"
        ),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.code == "content_policy_violation"
    forwarded = [r.path for r in fake.requests if not r.path.endswith("/moderations")]
    assert forwarded == []


def test_service_down_blocks_with_503_by_default(moderated: Proxy, fake: FakeOpenAI) -> None:
    fake.moderation_down = True
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(moderated, [{"role": "user", "content": "hello"}])
    assert caught.value.status_code == 503
    assert caught.value.code == "moderation_unavailable"
    assert caught.value.response.headers["retry-after"]
    assert fake.count("/v1/chat/completions") == 0


def test_service_down_passes_under_allow(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(moderation={"enabled": True, "on_error": "allow"})
    fake.moderation_down = True
    assert _chat(proxy, [{"role": "user", "content": "hello"}]).choices
    assert fake.count("/v1/chat/completions") == 1


def test_local_rules_block_without_any_upstream_call(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(
        moderation={
            "enabled": True,
            "rules": [{"name": "no-secrets", "words": ["password"], "patterns": [r"\d{16}"]}],
        }
    )
    for text in ["my PASSWORD is x", "card 1234123412341234"]:
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(proxy, [{"role": "user", "content": text}])
        assert "no-secrets" in caught.value.message
    assert fake.requests == []


def test_a_conversation_checks_only_new_messages(moderated: Proxy, fake: FakeOpenAI) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(10):
        history.append({"role": "user", "content": f"question number {turn}"})
        reply = _chat(moderated, history)
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
    calls = fake.moderation_calls
    assert len(calls) == 10
    # Turn one sends the system prompt and the question; later turns only what is new.
    assert len(calls[0]) == 2
    for call in calls[1:]:
        texts = [str(item) for item in call]
        assert any("question number" in t for t in texts)
        assert not any("Be brief." in t for t in texts)


def test_exempt_keys_skip_moderation(moderated: Proxy, fake: FakeOpenAI) -> None:
    from chatgpt_proxy.keystore import KeyPolicy

    key = moderated.create_key("trusted", KeyPolicy(moderation="exempt"))
    moderated.client(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "FLAG:violence"}]
    )
    assert fake.count("/v1/moderations") == 0


def test_blocks_are_listed_for_the_admin(moderated: Proxy) -> None:
    with pytest.raises(openai.BadRequestError):
        _chat(moderated, [{"role": "user", "content": "FLAG:self-harm secret text"}])
    answer = moderated.http().get(
        "/admin/moderation", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert answer.status_code == 200
    blocks = answer.json()["data"]
    assert blocks[0]["key_id"] == moderated.key_id
    assert "self-harm" in blocks[0]["reasons"]
    assert "secret text" not in answer.text  # inputs are kept only with log_inputs
    metrics = moderated.http().get("/metrics").text
    assert "chatgpt_proxy_moderation_blocks_total 1.0" in metrics


def test_output_moderation_replaces_a_flagged_answer(
    make_proxy: Callable[..., Proxy], fake: FakeOpenAI
) -> None:
    proxy = make_proxy(moderation={"enabled": True, "check_output": True})
    fake.reply_text = "Here is FLAG:violence for you"
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(proxy, [{"role": "user", "content": "hello"}])
    assert caught.value.code == "content_policy_violation"
    assert "FLAG" not in caught.value.response.text
