"""What is moderated: every piece of a request that would reach the upstream, as a list of items.

An ``Item`` is a text (``str``) or an image part in the moderation endpoint's own shape,
``{"type": "image_url", "image_url": {"url": ...}}``, carrying the URL exactly as the client gave
it: the proxy never fetches it (DESIGN §3.2); the moderation endpoint does::

    moderation_items("chat.completions", {"messages": [{"role": "user", "content": "hi"}]})
    # ["hi"]
    moderation_items("responses", {"instructions": "be brief", "input": "hi"})
    # ["be brief", "hi"]
    moderation_items("realtime", {"type": "session.update", "session": {"instructions": "hi"}})
    # ["hi"]: one Realtime client event (its audio is not text, and passes as it is)

Multipart endpoints (image edits, transcriptions) pass their text fields as a plain mapping.
Anything malformed is skipped rather than refused: the upstream judges the request's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Item = str | dict[str, Any]


def image_item(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def moderation_items(
    endpoint: str,
    document: Mapping[str, Any],
    *,
    embeddings: bool = False,
    moderations: bool = False,
) -> list[Item]:
    """The items of one request to ``endpoint`` ("chat.completions", "responses", ...)."""
    items: list[Item] = []
    if endpoint == "chat.completions":
        _chat(document, items)
    elif endpoint == "completions":
        _strings(document.get("prompt"), items)
        _strings(document.get("suffix"), items)
    elif endpoint in ("images.generations", "images.edits"):
        _strings(document.get("prompt"), items)
    elif endpoint == "audio.speech":
        _strings(document.get("input"), items)
        _strings(document.get("instructions"), items)
    elif endpoint in ("audio.transcriptions", "audio.translations"):
        # The prompt steers the transcription; it is text that reaches the model.
        _strings(document.get("prompt"), items)
    elif endpoint == "responses" or endpoint.startswith("responses."):
        _responses(document, items)
    elif endpoint == "embeddings" and embeddings:
        _strings(document.get("input"), items)
    elif endpoint == "moderations" and moderations:
        _moderation_input(document.get("input"), items)
    elif endpoint == "realtime":
        _realtime_event(document, items)
    elif endpoint.startswith("realtime."):  # a session made for a client: its instructions
        session = document.get("session")
        _strings((session if isinstance(session, dict) else document).get("instructions"), items)
    # images.variations carries an image file only; the multipart upload is not inspected.
    return _nonblank(items)


def output_items(endpoint: str, answer: Mapping[str, Any]) -> list[Item]:
    """The texts of a non-streamed answer: what the model wrote, for output moderation."""
    items: list[Item] = []
    choices = answer.get("choices")
    if endpoint == "chat.completions" and isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                _message(choice["message"], items)
    elif endpoint == "completions" and isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                _strings(choice.get("text"), items)
    elif endpoint == "responses" and isinstance(answer.get("output"), list):
        for entry in answer["output"]:
            if isinstance(entry, dict):
                _response_item(entry, items)
    return _nonblank(items)


def _nonblank(items: list[Item]) -> list[Item]:
    return [item for item in items if not isinstance(item, str) or item.strip()]


def _strings(value: object, items: list[Item]) -> None:
    """A string, or a list of strings; token arrays (lists of ints) carry no text to check."""
    if isinstance(value, str):
        items.append(value)
    elif isinstance(value, list):
        items.extend(entry for entry in value if isinstance(entry, str))


def _chat(document: Mapping[str, Any], items: list[Item]) -> None:
    messages = document.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                _message(message, items)
    prediction = document.get("prediction")
    if isinstance(prediction, dict):
        _content(prediction.get("content"), items)


def _message(message: Mapping[str, Any], items: list[Item]) -> None:
    """Every role's content; resent tool-call arguments reach the upstream as well."""
    _content(message.get("content"), items)
    _strings(message.get("refusal"), items)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                _strings(call["function"].get("arguments"), items)
    function_call = message.get("function_call")  # the legacy single-function form
    if isinstance(function_call, dict):
        _strings(function_call.get("arguments"), items)


def _content(content: object, items: list[Item]) -> None:
    if isinstance(content, str):
        items.append(content)
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            _strings(part.get("text"), items)
        elif kind == "refusal":
            _strings(part.get("refusal"), items)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                items.append(image_item(url))
        # "input_audio" and "file" parts are skipped: the moderation endpoint takes text and
        # images only, and transcribing or parsing them ourselves would mean a second model.


def _responses(document: Mapping[str, Any], items: list[Item]) -> None:
    _strings(document.get("instructions"), items)
    value = document.get("input")
    if isinstance(value, str):
        items.append(value)
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict):
                _response_item(entry, items)
    prompt = document.get("prompt")  # a stored prompt template: its variables are filled in
    if isinstance(prompt, dict) and isinstance(prompt.get("variables"), dict):
        for variable in prompt["variables"].values():
            if isinstance(variable, str):
                items.append(variable)
            elif isinstance(variable, dict):
                _response_parts([variable], items)


def _response_item(entry: Mapping[str, Any], items: list[Item]) -> None:
    kind = entry.get("type", "message")
    if kind == "message":
        content = entry.get("content")
        if isinstance(content, str):
            items.append(content)
        elif isinstance(content, list):
            _response_parts(content, items)
    elif kind in ("function_call", "custom_tool_call"):
        _strings(entry.get("arguments"), items)
        _strings(entry.get("input"), items)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = entry.get("output")
        if isinstance(output, list):
            _response_parts(output, items)
        else:
            _strings(output, items)
    # reasoning items are encrypted or the model's own; item references are ids, not text.


def _response_parts(parts: list[Any], items: list[Item]) -> None:
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            _strings(part.get("text"), items)
        elif kind == "refusal":
            _strings(part.get("refusal"), items)
        elif kind == "input_image":
            # By URL or data URL only: a file_id names an upload the endpoint cannot see.
            url = part.get("image_url")
            if isinstance(url, str) and url:
                items.append(image_item(url))
        # input_file and input_audio: not text nor image, see _content.


def _realtime_event(event: Mapping[str, Any], items: list[Item]) -> None:
    """The text of one Realtime client event: a conversation item's, the instructions of a
    session or a response, and the items a response is given as its input."""
    kind = event.get("type")
    if kind == "conversation.item.create":
        item = event.get("item")
        if isinstance(item, dict):
            _response_item(item, items)
    elif kind in ("session.update", "response.create"):
        body = event.get("session" if kind == "session.update" else "response")
        if not isinstance(body, dict):
            return
        _strings(body.get("instructions"), items)
        entries = body.get("input")
        if isinstance(entries, list):
            for entry in entries:
                if isinstance(entry, dict):
                    _response_item(entry, items)


def _moderation_input(value: object, items: list[Item]) -> None:
    if isinstance(value, str):
        items.append(value)
    elif isinstance(value, list):
        _strings(value, items)
        _content([part for part in value if isinstance(part, dict)], items)
