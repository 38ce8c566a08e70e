"""The allowlist of OpenAI endpoints the proxy serves: each one's route here, its path
upstream, what its body is, and which stored objects it creates, owns or lists.

Only what is declared here is forwarded; ``api.proxy`` builds one pipeline per endpoint::

    chat = next(e for e in ENDPOINTS if e.name == "chat.completions")
    chat.path, chat.upstream_path   # "/v1/chat/completions", "/chat/completions"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chatgpt_proxy.keystore.references import (
    BATCH,
    CONVERSATION,
    FILE,
    RESPONSE,
    UPLOAD,
    VECTOR_STORE,
)

BodyKind = Literal["json", "multipart", "none"]
# The setting that bounds a multipart endpoint's body.
UploadLimit = Literal["max_upload_bytes", "max_file_bytes", "max_upload_part_bytes"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI endpoint: its route here, its path upstream, and what its body is."""

    name: str
    method: str
    path: str
    upstream_path: str
    body: BodyKind = "json"
    accepts_json: bool = False  # a multipart endpoint that also takes a JSON body
    model_in: str | None = None  # the body's object that names the model, if not the body
    upload_limit: UploadLimit = "max_upload_bytes"
    owns: str | None = None  # the kind of stored object its path's {id} names
    creates: str | None = None  # the kind of stored object its answer creates
    lists: str | None = None  # the kind of stored object it lists (from the records)
    watches: bool = False  # its answers show objects the upstream made (a batch's files)
    deletes: bool = False  # it deletes the object its path names


def _on(name: str, method: str, path: str, body: BodyKind = "none", **kind: Any) -> Endpoint:
    """An endpoint whose path upstream is its path here, below /v1."""
    return Endpoint(name, method, "/v1" + path, path, body, **kind)


# The stored objects' endpoints: every {id} is one the caller must own (DESIGN §3.8).
_OBJECT_ENDPOINTS = (
    _on("files.create", "POST", "/files", "multipart", upload_limit="max_file_bytes", creates=FILE),
    _on("files.list", "GET", "/files", lists=FILE),
    _on("files.retrieve", "GET", "/files/{id}", owns=FILE),
    _on("files.delete", "DELETE", "/files/{id}", owns=FILE, deletes=True),
    _on("files.content", "GET", "/files/{id}/content", owns=FILE),
    _on("uploads.create", "POST", "/uploads", "json", creates=UPLOAD),
    _on(
        "uploads.parts",
        "POST",
        "/uploads/{id}/parts",
        "multipart",
        upload_limit="max_upload_part_bytes",
        owns=UPLOAD,
    ),
    _on("uploads.complete", "POST", "/uploads/{id}/complete", "json", owns=UPLOAD, watches=True),
    _on("uploads.cancel", "POST", "/uploads/{id}/cancel", owns=UPLOAD),
    _on("batches.create", "POST", "/batches", "json", creates=BATCH),
    _on("batches.list", "GET", "/batches", lists=BATCH),
    _on("batches.retrieve", "GET", "/batches/{id}", owns=BATCH, watches=True),
    _on("batches.cancel", "POST", "/batches/{id}/cancel", owns=BATCH, watches=True),
    _on("vector_stores.create", "POST", "/vector_stores", "json", creates=VECTOR_STORE),
    _on("vector_stores.list", "GET", "/vector_stores", lists=VECTOR_STORE),
    _on("vector_stores.retrieve", "GET", "/vector_stores/{id}", owns=VECTOR_STORE),
    _on("vector_stores.update", "POST", "/vector_stores/{id}", "json", owns=VECTOR_STORE),
    _on("vector_stores.delete", "DELETE", "/vector_stores/{id}", owns=VECTOR_STORE, deletes=True),
    _on("vector_stores.search", "POST", "/vector_stores/{id}/search", "json", owns=VECTOR_STORE),
    _on(
        "vector_stores.files.create", "POST", "/vector_stores/{id}/files", "json", owns=VECTOR_STORE
    ),
    _on("vector_stores.files.list", "GET", "/vector_stores/{id}/files", owns=VECTOR_STORE),
    _on(
        "vector_stores.files.retrieve",
        "GET",
        "/vector_stores/{id}/files/{file_id}",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.files.update",
        "POST",
        "/vector_stores/{id}/files/{file_id}",
        "json",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.files.delete",
        "DELETE",
        "/vector_stores/{id}/files/{file_id}",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.files.content",
        "GET",
        "/vector_stores/{id}/files/{file_id}/content",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.file_batches.create",
        "POST",
        "/vector_stores/{id}/file_batches",
        "json",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.file_batches.retrieve",
        "GET",
        "/vector_stores/{id}/file_batches/{batch_id}",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.file_batches.cancel",
        "POST",
        "/vector_stores/{id}/file_batches/{batch_id}/cancel",
        owns=VECTOR_STORE,
    ),
    _on(
        "vector_stores.file_batches.files",
        "GET",
        "/vector_stores/{id}/file_batches/{batch_id}/files",
        owns=VECTOR_STORE,
    ),
    _on("conversations.create", "POST", "/conversations", "json", creates=CONVERSATION),
    _on("conversations.retrieve", "GET", "/conversations/{id}", owns=CONVERSATION),
    _on("conversations.update", "POST", "/conversations/{id}", "json", owns=CONVERSATION),
    _on("conversations.delete", "DELETE", "/conversations/{id}", owns=CONVERSATION, deletes=True),
    _on(
        "conversations.items.create",
        "POST",
        "/conversations/{id}/items",
        "json",
        owns=CONVERSATION,
    ),
    _on("conversations.items.list", "GET", "/conversations/{id}/items", owns=CONVERSATION),
    _on(
        "conversations.items.retrieve",
        "GET",
        "/conversations/{id}/items/{item_id}",
        owns=CONVERSATION,
    ),
    _on(
        "conversations.items.delete",
        "DELETE",
        "/conversations/{id}/items/{item_id}",
        owns=CONVERSATION,
    ),
)

ENDPOINTS = (
    Endpoint("chat.completions", "POST", "/v1/chat/completions", "/chat/completions"),
    Endpoint("completions", "POST", "/v1/completions", "/completions"),
    Endpoint("embeddings", "POST", "/v1/embeddings", "/embeddings"),
    Endpoint("moderations", "POST", "/v1/moderations", "/moderations"),
    Endpoint("images.generations", "POST", "/v1/images/generations", "/images/generations"),
    Endpoint("images.edits", "POST", "/v1/images/edits", "/images/edits", "multipart", True),
    Endpoint(
        "images.variations", "POST", "/v1/images/variations", "/images/variations", "multipart"
    ),
    Endpoint("audio.speech", "POST", "/v1/audio/speech", "/audio/speech"),
    Endpoint(
        "audio.transcriptions",
        "POST",
        "/v1/audio/transcriptions",
        "/audio/transcriptions",
        "multipart",
    ),
    Endpoint(
        "audio.translations", "POST", "/v1/audio/translations", "/audio/translations", "multipart"
    ),
    Endpoint("responses", "POST", "/v1/responses", "/responses", creates=RESPONSE),
    Endpoint(
        "responses.input_tokens", "POST", "/v1/responses/input_tokens", "/responses/input_tokens"
    ),
    Endpoint("responses.compact", "POST", "/v1/responses/compact", "/responses/compact"),
    _on("responses.retrieve", "GET", "/responses/{id}", owns=RESPONSE),
    _on("responses.delete", "DELETE", "/responses/{id}", owns=RESPONSE, deletes=True),
    _on("responses.cancel", "POST", "/responses/{id}/cancel", owns=RESPONSE),
    _on("responses.input_items", "GET", "/responses/{id}/input_items", owns=RESPONSE),
    Endpoint("models.retrieve", "GET", "/v1/models/{model:.+}", "/models/{model}", "none"),
    Endpoint(
        "realtime.client_secrets",
        "POST",
        "/v1/realtime/client_secrets",
        "/realtime/client_secrets",
        model_in="session",
    ),
    Endpoint("realtime.sessions", "POST", "/v1/realtime/sessions", "/realtime/sessions"),
    Endpoint(
        "realtime.transcription_sessions",
        "POST",
        "/v1/realtime/transcription_sessions",
        "/realtime/transcription_sessions",
    ),
    *_OBJECT_ENDPOINTS,
)
