"""The stored objects a request names: in its path, and anywhere in its JSON body.

A body may name objects held upstream in many places: ``input_file_id`` of a batch,
``file_id`` in a chat message's file part or a Responses ``input_file``, ``file_ids`` of a
vector store, ``vector_store_ids`` of a ``file_search`` tool, ``previous_response_id``, the
``conversation`` of a Responses call. Every one must be the caller's (DESIGN §3.8), so every
one is found, at any depth::

    named_objects(b'{"input_file_id": "file-1"}', {"input_file_id": "file-1"})
    # [Reference("input_file_id", "file", "file-1")]

A body without ``_id`` in its bytes (every field name above has it) costs one byte search
and no walk; the ``conversation`` is looked up at the top level only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESPONSE = "response"
FILE = "file"
UPLOAD = "upload"
BATCH = "batch"
VECTOR_STORE = "vector_store"
CONVERSATION = "conversation"

# How a path's id or a body field is told "not found", in the upstream's words.
NOT_FOUND = {
    RESPONSE: "Response with id '{id}' not found.",
    FILE: "No such File object: {id}",
    UPLOAD: "No such Upload object: {id}",
    BATCH: "No such Batch object: {id}",
    VECTOR_STORE: "No such vector store: {id}",
    CONVERSATION: "Conversation with id '{id}' not found.",
}

# Body fields, at any depth, whose value (a string, or a list of strings) names objects.
_FIELDS = {
    "file_id": FILE,
    "file_ids": FILE,
    "input_file_id": FILE,
    "vector_store_ids": VECTOR_STORE,
    "previous_response_id": RESPONSE,
}
# Citations in a replayed answer name files of the upstream's own (a code interpreter's
# container files) as well as the client's: they are the answer's words, not a request for them.
_NOT_WALKED = frozenset({"annotations"})
# Every field name above holds this: a body without it is not walked.
_MARKER = b"_id"


@dataclass(frozen=True, slots=True)
class Reference:
    """One id a request names: where (the field, or ``id`` for the path), and its kind."""

    field: str
    kind: str
    object_id: str


def named_objects(raw: bytes, document: Mapping[str, Any]) -> list[Reference]:
    """The objects the JSON body ``raw`` (parsed: ``document``) names, in the order found."""
    found: list[Reference] = []
    if raw.find(_MARKER) >= 0:  # `in` would first try, and fail, to read it as a byte
        _walk(document, found)
    # Top level only: the Responses API's `conversation`, an id or {"id": ...}.
    conversation = document.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        found.append(Reference("conversation", CONVERSATION, conversation))
    return found


def _walk(value: object, found: list[Reference]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            kind = _FIELDS.get(name)
            if kind is None:
                if name not in _NOT_WALKED:
                    _walk(item, found)
            elif isinstance(item, str):
                found.append(Reference(name, kind, item))
            elif isinstance(item, list):
                found += (Reference(name, kind, v) for v in item if isinstance(v, str))
    elif isinstance(value, list):
        for item in value:
            _walk(item, found)


def implied_objects(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Objects an answer shows that the upstream made on its own: a batch's output and error
    files, the file a completed upload became. They are the owner's as the batch is."""
    kind = document.get("object")
    if kind == "batch":
        ids = (document.get("output_file_id"), document.get("error_file_id"))
        return [(FILE, file_id) for file_id in ids if isinstance(file_id, str)]
    if kind == "upload" and isinstance(file := document.get("file"), dict):
        file_id = file.get("id")
        return [(FILE, file_id)] if isinstance(file_id, str) else []
    return []
