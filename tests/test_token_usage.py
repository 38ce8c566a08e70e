"""Token usage read from every answer shape (chat, embeddings, Responses), whole or streamed."""

from __future__ import annotations

import pytest

from chatgpt_proxy.token_usage import (
    Usage,
    estimate_tokens,
    event_data,
    usage_in_document,
    usage_in_json,
)


@pytest.mark.parametrize(
    ("reported", "usage"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, Usage(3, 4, 7)),
        ({"prompt_tokens": 5, "total_tokens": 5}, Usage(5, 0, 5)),  # embeddings
        ({"input_tokens": 2, "output_tokens": 6}, Usage(2, 6, 8)),  # Responses: total derived
        ({"prompt_tokens": True, "completion_tokens": "9"}, Usage(0, 0, 0)),  # not counts
    ],
    ids=["chat", "embeddings", "responses", "junk"],
)
def test_every_shape_of_usage_becomes_one_usage(reported: dict[str, object], usage: Usage) -> None:
    assert Usage.from_mapping(reported) == usage


def test_usage_that_is_not_an_object_is_none() -> None:
    assert Usage.from_mapping([1, 2]) is None
    assert Usage.from_mapping(None) is None


def test_usage_is_found_in_an_answer_or_a_responses_event() -> None:
    assert usage_in_document({"usage": {"prompt_tokens": 1}}) == Usage(1, 0, 1)
    event = {"type": "response.completed", "response": {"usage": {"input_tokens": 4}}}
    assert usage_in_document(event) == Usage(4, 0, 4)
    assert usage_in_document({"choices": []}) is None
    assert usage_in_document("text") is None


def test_usage_in_json_bytes_tolerates_answers_without_it_or_broken() -> None:
    assert usage_in_json(b'{"usage": {"total_tokens": 9}}') == Usage(0, 0, 9)
    assert usage_in_json(b'{"choices": []}') is None
    assert usage_in_json(b'{"usage": ') is None


def test_an_events_data_lines_are_joined() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata:1}\n') == b'{"a":1}'
    assert event_data(b": comment only") == b""


def test_the_estimate_is_the_body_in_quarters_plus_the_completion_asked_for() -> None:
    assert estimate_tokens({}, 400) == 100
    assert estimate_tokens({"max_tokens": 50}, 400) == 150
    assert estimate_tokens({"max_completion_tokens": 7, "max_tokens": 50}, 40) == 17
    assert estimate_tokens({"max_output_tokens": "50"}, 40) == 10  # not a count: ignored
