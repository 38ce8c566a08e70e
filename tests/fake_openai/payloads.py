"""Deterministic OpenAI-shaped response bodies (plain dicts, serialised by the server)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import struct
import time
from typing import Any

DEFAULT_REPLY = "Hello from fake upstream!"
EMBEDDING_DIMENSIONS = 8
ORGANIZATION = "org-FAKEORG123"
PROJECT = "proj_FAKEPROJ"

MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "system"),
    ("gpt-4o", "system"),
    ("gpt-3.5-turbo-instruct", "system"),
    ("text-embedding-3-small", "system"),
    ("dall-e-2", "system"),
    ("dall-e-3", "system"),
    ("omni-moderation-latest", "system"),
    ("whisper-1", "openai-internal"),
    ("tts-1", "openai-internal"),
    ("ft:gpt-4o:org::abc123", "org-fakeorg123"),
)
MODEL_CREATED = 1_700_000_000

MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Categories that omni-moderation also evaluates on images.
IMAGE_CATEGORIES = frozenset(
    {
        "self-harm",
        "self-harm/instructions",
        "self-harm/intent",
        "sexual",
        "violence",
        "violence/graphic",
    }
)
FLAG_MARKER = re.compile(r"FLAG:([a-z/\-]+)")

# A valid 1x1 transparent PNG.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def openai_headers(elapsed_ms: int) -> dict[str, str]:
    """The headers OpenAI puts on every answer (Cloudflare's included)."""
    return {
        "x-request-id": f"req_{secrets.token_hex(16)}",
        "openai-organization": ORGANIZATION,
        "openai-project": PROJECT,
        "openai-processing-ms": str(elapsed_ms),
        "openai-version": "2020-10-01",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-remaining-tokens": "29999990",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "0s",
        "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
        "set-cookie": "__cf_bm=fakecookie; path=/; domain=.api.openai.com; HttpOnly; Secure",
        "cf-ray": f"{secrets.token_hex(8)}-AMS",
    }


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


# ---------------------------------------------------------------- text and token counting


def collect_texts(value: object) -> list[str]:
    """Every user-visible text in a messages / prompt / input value (not URLs, not roles)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in collect_texts(item)]
    if isinstance(value, dict):
        return [
            text
            for key in ("content", "text", "input", "prompt")
            if key in value
            for text in collect_texts(value[key])
        ]
    return []


def count_words(value: object) -> int:
    """Deterministic "tokens": whitespace-separated words of every text; a token id is one."""
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return len(value)
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        return sum(count_words(item) for item in value)
    return sum(len(text.split()) for text in collect_texts(value))


def reply_words(reply: str) -> list[str]:
    """The reply split into stream deltas: "Hello", " from", " fake", ...; joined == reply."""
    return [word if i == 0 else f" {word}" for i, word in enumerate(reply.split(" "))]


def long_reply(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


# ---------------------------------------------------------------- chat completions


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(model: str, reply: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }


def chat_chunks(
    model: str, reply: str, usage: dict[str, Any], *, include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion, in order (without the final [DONE])."""
    base: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake0001",
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = {**base, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": word}, None) for word in reply_words(reply)]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


# ---------------------------------------------------------------- legacy completions


def completion_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(model: str, reply: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"text": reply, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    }


def completion_chunks(
    model: str, reply: str, usage: dict[str, Any], *, include_usage: bool
) -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": now(),
        "model": model,
    }

    def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        body = {**base, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    chunks = [chunk(word, None) for word in reply_words(reply)]
    chunks.append(chunk("", "stop"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


# ---------------------------------------------------------------- embeddings


def embedding_vector(item: object, dimensions: int) -> list[float]:
    """A deterministic vector for one input item, values exactly representable in float32."""
    digest = hashlib.sha256(repr(item).encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [(byte - 128) / 256 for byte in digest[:dimensions]]


def embeddings(
    model: str, inputs: list[object], *, encoding_format: str, dimensions: int
) -> dict[str, Any]:
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        encoded: list[float] | str = vector
        if encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_words(item) for item in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---------------------------------------------------------------- images


def images(n: int, response_format: str, prompt: str | None) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for _ in range(n):
        if response_format == "url":
            item: dict[str, Any] = {"url": f"https://fake-images.invalid/{new_id('img-')}.png"}
        else:
            item = {"b64_json": base64.b64encode(TINY_PNG).decode()}
        if prompt is not None:
            item["revised_prompt"] = prompt
        data.append(item)
    return {"created": now(), "data": data}


# ---------------------------------------------------------------- moderations


def moderation_inputs(value: object) -> list[object]:
    """The moderated items: a string is one, a list of strings is many, a multimodal list is one."""
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return [value]
        return list(value)
    return [value]


def moderation_result(item: object) -> dict[str, Any]:
    texts: list[str] = []
    has_image = False
    parts = item if isinstance(item, list) else [item]
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            has_image = True
            image = part.get("image_url")
            # Never fetched; a marker in the URL itself flags it, for tests of image moderation.
            texts.append(str(image.get("url", "")) if isinstance(image, dict) else "")
    flagged = {match for text in texts for match in FLAG_MARKER.findall(text)}
    flagged &= set(MODERATION_CATEGORIES)
    applied = {
        name: (["text", "image"] if has_image and name in IMAGE_CATEGORIES else ["text"])
        for name in MODERATION_CATEGORIES
    }
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in MODERATION_CATEGORIES},
        "category_scores": {
            name: 0.9 if name in flagged else 0.01 for name in MODERATION_CATEGORIES
        },
        "category_applied_input_types": applied,
    }


def moderation(model: str, items: list[object]) -> dict[str, Any]:
    return {
        "id": new_id("modr-"),
        "model": model,
        "results": [moderation_result(item) for item in items],
    }


# ---------------------------------------------------------------- models


def model_object(model_id: str, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": owned_by}


def model_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(mid, owner) for mid, owner in MODELS]}


# ---------------------------------------------------------------- responses


def responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_message(item_id: str, text: str | None) -> dict[str, Any]:
    """The assistant message item; `text=None` is the empty, in-progress item of a stream."""
    return {
        "id": item_id,
        "type": "message",
        "status": "in_progress" if text is None else "completed",
        "role": "assistant",
        "content": [] if text is None else [output_text_part(text)],
    }


def response_object(
    response_id: str,
    body: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": now(),
        "status": status,
        "background": bool(body.get("background", False)),
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", "gpt-4o-mini"),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def response_events(
    response_id: str, body: dict[str, Any], reply: str, usage: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a streamed response, sequence numbers from 0."""
    item_id = new_id("msg_")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    in_progress = response_object(response_id, body, status="in_progress", output=[], usage=None)
    done_item = output_message(item_id, reply)
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": in_progress}),
        ("response.in_progress", {"response": in_progress}),
        ("response.output_item.added", {"output_index": 0, "item": output_message(item_id, None)}),
        ("response.content_part.added", {**where, "part": output_text_part("")}),
    ]
    events += [
        ("response.output_text.delta", {**where, "delta": word, "logprobs": []})
        for word in reply_words(reply)
    ]
    events += [
        ("response.output_text.done", {**where, "text": reply, "logprobs": []}),
        ("response.content_part.done", {**where, "part": output_text_part(reply)}),
        ("response.output_item.done", {"output_index": 0, "item": done_item}),
        (
            "response.completed",
            {
                "response": response_object(
                    response_id, body, status="completed", output=[done_item], usage=usage
                )
            },
        ),
    ]
    return [
        (name, {"type": name, "sequence_number": number, **data})
        for number, (name, data) in enumerate(events)
    ]


def input_items(body: dict[str, Any]) -> dict[str, Any]:
    """The input of a stored response as a list of message items (newest first, like OpenAI)."""
    raw = body.get("input", "")
    messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
    items = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        items.append(
            {
                "id": new_id("msg_"),
                "type": "message",
                "role": message.get("role", "user"),
                "status": "completed",
                "content": content,
            }
        )
    items.reverse()
    return page(items)


def page(data: list[dict[str, Any]]) -> dict[str, Any]:
    """One page of a list holding ``data``, the whole of it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


# ---------------------------------------------------------------- audio


def fake_mp3(text: str, size: int = 4096) -> bytes:
    """Deterministic bytes that start like an MP3 file (ID3 tag); not playable, not needed."""
    seed = hashlib.sha256(text.encode()).digest()
    body = (seed * (size // len(seed) + 1))[: size - 10]
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + body
