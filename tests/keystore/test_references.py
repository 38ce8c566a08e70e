"""The stored objects a request body names, wherever they sit."""

from __future__ import annotations

import orjson

from chatgpt_proxy.keystore.references import (
    CONVERSATION,
    FILE,
    RESPONSE,
    VECTOR_STORE,
    Reference,
    implied_objects,
    named_objects,
)


def _named(document: dict[str, object]) -> list[Reference]:
    return named_objects(orjson.dumps(document), document)


def test_every_field_naming_an_object_is_found_at_any_depth() -> None:
    document = {
        "model": "gpt-4o",
        "previous_response_id": "resp_1",
        "conversation": {"id": "conv_1"},
        "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}],
        "input_file_id": "file-2",
        "file_ids": ["file-3", 7],
    }
    assert sorted(_named(document), key=lambda r: r.object_id) == [
        Reference("conversation", CONVERSATION, "conv_1"),
        Reference("file_id", FILE, "file-1"),
        Reference("input_file_id", FILE, "file-2"),
        Reference("file_ids", FILE, "file-3"),
        Reference("previous_response_id", RESPONSE, "resp_1"),
        Reference("vector_store_ids", VECTOR_STORE, "vs_1"),
        Reference("vector_store_ids", VECTOR_STORE, "vs_2"),
    ]


def test_a_body_naming_nothing_is_not_walked() -> None:
    # The document says otherwise, the bytes do not: only bytes with a field name are walked.
    assert named_objects(b'{"model": "gpt-4o"}', {"file_id": "file-1"}) == []
    assert named_objects(b'{"tool_call_id": "x"}', {"tool_call_id": "x"}) == []
    replayed = {"content": [{"type": "output_text", "annotations": [{"file_id": "cfile_1"}]}]}
    assert _named({"input": [replayed]}) == []
    assert _named({"conversation": 5, "messages": [{"content": "file_id"}]}) == []
    assert _named({"conversation": "conv_9"}) == [Reference("conversation", CONVERSATION, "conv_9")]


def test_objects_the_upstream_makes_on_its_own_are_found_in_its_answers() -> None:
    batch = {"object": "batch", "id": "batch_1", "output_file_id": "file-o", "error_file_id": None}
    assert implied_objects(batch) == [(FILE, "file-o")]
    upload = {"object": "upload", "id": "upload_1", "file": {"id": "file-u"}}
    assert implied_objects(upload) == [(FILE, "file-u")]
    assert implied_objects({"object": "upload", "file": None}) == []
    assert implied_objects({"object": "file", "id": "file-1"}) == []
