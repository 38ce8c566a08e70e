"""What is moderated: the items extracted from each endpoint's request, and from answers."""

from __future__ import annotations

from typing import Any

import pytest

from chatgpt_proxy.moderation import moderation_items, output_items


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# ---------------------------------------------------------------- chat completions


def test_chat_every_message_of_every_role_in_order() -> None:
    document = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "first"},
            {"role": "user", "content": "middle"},
            {"role": "assistant", "content": "an answer"},
            {"role": "developer", "content": "dev note"},
            {"role": "user", "content": "last"},
        ],
    }
    assert moderation_items("chat.completions", document) == [
        "first",
        "middle",
        "an answer",
        "dev note",
        "last",
    ]


@pytest.mark.parametrize("position", [0, 2, 4])
def test_chat_a_flagged_message_anywhere_is_checked(position: int) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    messages[position]["content"] = "needle"
    assert "needle" in moderation_items("chat.completions", {"messages": messages})


def test_chat_content_parts_texts_and_images_as_given() -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    document = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at this"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {"type": "text", "text": "and this"},
                ],
            }
        ]
    }
    assert moderation_items("chat.completions", document) == [
        "look at this",
        image("https://x.test/a.png"),
        image(data_url),
        "and this",
    ]


def test_chat_tool_calls_refusals_and_tool_results() -> None:
    document = {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "weather"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't"}]},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        ]
    }
    assert moderation_items("chat.completions", document) == [
        '{"q": "weather"}',
        "sunny",
        "I can't",
        "{}",
    ]


def test_blank_and_malformed_inputs_are_skipped() -> None:
    document = {"messages": ["not a dict", {"role": "user", "content": "  "}, {"content": 3}]}
    assert moderation_items("chat.completions", document) == []
    assert moderation_items("chat.completions", {"messages": "nope"}) == []
    assert moderation_items("chat.completions", {}) == []
    assert moderation_items("unknown.endpoint", {"prompt": "x"}) == []


# ---------------------------------------------------------------- other endpoints


def test_completions_prompt_strings_but_not_token_arrays() -> None:
    assert moderation_items("completions", {"prompt": "once"}) == ["once"]
    assert moderation_items("completions", {"prompt": ["a", "b"]}) == ["a", "b"]
    assert moderation_items("completions", {"prompt": [1, 2, 3]}) == []
    assert moderation_items("completions", {"prompt": [[1, 2], [3]]}) == []
    assert moderation_items("completions", {"prompt": "p", "suffix": "s"}) == ["p", "s"]


def test_embeddings_and_moderations_only_when_enabled() -> None:
    assert moderation_items("embeddings", {"input": ["a", "b"]}) == []
    assert moderation_items("embeddings", {"input": ["a", "b"]}, embeddings=True) == ["a", "b"]
    assert moderation_items("embeddings", {"input": [1, 2]}, embeddings=True) == []
    assert moderation_items("moderations", {"input": "x"}) == []
    assert moderation_items("moderations", {"input": "x"}, moderations=True) == ["x"]
    multimodal = [
        {"type": "text", "text": "t"},
        {"type": "image_url", "image_url": {"url": "https://x.test/i.png"}},
    ]
    assert moderation_items("moderations", {"input": multimodal}, moderations=True) == [
        "t",
        image("https://x.test/i.png"),
    ]


@pytest.mark.parametrize("endpoint", ["images.generations", "images.edits"])
def test_images_prompt(endpoint: str) -> None:
    assert moderation_items(endpoint, {"prompt": "a cat", "n": "2"}) == ["a cat"]


def test_image_variations_have_no_text() -> None:
    assert moderation_items("images.variations", {"n": "1", "size": "256x256"}) == []


def test_audio_speech_input_and_instructions() -> None:
    document = {"model": "tts-1", "input": "say this", "instructions": "cheerfully"}
    assert moderation_items("audio.speech", document) == ["say this", "cheerfully"]


@pytest.mark.parametrize("endpoint", ["audio.transcriptions", "audio.translations"])
def test_transcription_prompt(endpoint: str) -> None:
    assert moderation_items(endpoint, {"model": "whisper-1", "prompt": "names: Zoë"}) == [
        "names: Zoë"
    ]
    assert moderation_items(endpoint, {"model": "whisper-1"}) == []


# ---------------------------------------------------------------- responses


def test_responses_string_input_and_instructions() -> None:
    document = {"instructions": "be terse", "input": "hello"}
    assert moderation_items("responses", document) == ["be terse", "hello"]
    assert moderation_items("responses.input_tokens", document) == ["be terse", "hello"]


def test_responses_items_and_parts() -> None:
    document = {
        "input": [
            {"role": "user", "content": "plain"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "part"},
                    {"type": "input_image", "image_url": "https://x.test/r.png", "detail": "auto"},
                    {"type": "input_image", "file_id": "file-abc"},
                    {"type": "input_file", "file_id": "file-def"},
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "said before"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "result text"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "item_reference", "id": "msg_1"},
        ]
    }
    assert moderation_items("responses", document) == [
        "plain",
        "part",
        image("https://x.test/r.png"),
        "said before",
        '{"a": 1}',
        "result text",
    ]


def test_responses_prompt_template_variables() -> None:
    document = {
        "prompt": {
            "id": "pmpt_1",
            "variables": {"name": "Ada", "photo": {"type": "input_image", "image_url": "u"}},
        }
    }
    assert moderation_items("responses", document) == ["Ada", image("u")]


# ---------------------------------------------------------------- answers


def test_realtime_client_events_text_and_instructions() -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]}
    assert moderation_items("realtime", {"type": "conversation.item.create", "item": item}) == ["a"]
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "b"}}
    assert moderation_items("realtime", update) == ["b"]
    create = {"type": "response.create", "response": {"instructions": "c", "input": [item]}}
    assert moderation_items("realtime", create) == ["c", "a"]
    audio = {"type": "input_audio_buffer.append", "audio": "UklGRg=="}
    assert moderation_items("realtime", audio) == []  # audio passes as it is
    assert moderation_items("realtime", {"type": "session.update", "session": "x"}) == []


def test_realtime_sessions_made_for_a_client_their_instructions() -> None:
    secret = {"session": {"type": "realtime", "model": "gpt-realtime", "instructions": "d"}}
    assert moderation_items("realtime.client_secrets", secret) == ["d"]
    assert moderation_items("realtime.sessions", {"instructions": "e"}) == ["e"]


def test_output_items_of_each_answer_shape() -> None:
    chat = {"choices": [{"message": {"role": "assistant", "content": "chat says"}}]}
    assert output_items("chat.completions", chat) == ["chat says"]
    completion = {"choices": [{"text": "legacy says"}, {"text": ""}]}
    assert output_items("completions", completion) == ["legacy says"]
    response = {
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "responses says"}],
            },
        ]
    }
    assert output_items("responses", response) == ["responses says"]
    assert output_items("embeddings", {"data": []}) == []
