"""The fake's Realtime API: a scripted WebSocket at /v1/realtime.

On connect it sends ``session.created``; it answers ``session.update`` with ``session.updated``
and ``response.create`` with a text response that echoes the last user text it was given
(``response.created``, ``response.output_text.delta``, ``response.output_text.done``,
``response.done`` with usage counted in words). A binary frame is echoed back as binary; a
text frame that is not JSON gets an ``error`` event; ``{"type": "fake.close", "code": N}``
makes it close the socket with that code. Every session is recorded as a ``RealtimeSession``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

_ids = itertools.count(1)


@dataclass
class RealtimeSession:
    """One WebSocket session as the fake saw it."""

    key: str | None
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    protocol: str | None  # the subprotocol it agreed to
    events: list[dict[str, Any]] = field(default_factory=list)  # what the client sent, parsed
    binary: list[bytes] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None  # as the client closed it

    def texts(self) -> list[str]:
        """Every input text the client sent in conversation items."""
        found = []
        for event in self.events:
            item = event.get("item") if event.get("type") == "conversation.item.create" else None
            for part in (item or {}).get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    found.append(part["text"])
        return found


def _event(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, "event_id": f"event_{next(_ids)}", **fields}).decode()


def _session(model: str) -> dict[str, Any]:
    return {
        "id": f"sess_{next(_ids)}",
        "object": "realtime.session",
        "type": "realtime",
        "model": model,
        "output_modalities": ["text"],
        "instructions": "",
    }


async def serve_session(
    request: web.Request, session: RealtimeSession, reply_prefix: str
) -> web.WebSocketResponse:
    """Run one session to its end: the client's close, or a ``fake.close`` it asked for."""
    ws = web.WebSocketResponse(protocols=("realtime",))
    await ws.prepare(request)
    session.protocol = ws.ws_protocol
    model = request.query.get("model", "gpt-realtime")
    await ws.send_str(_event("session.created", session=_session(model)))
    last_text = ""
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                session.binary.append(message.data)
                await ws.send_bytes(message.data)
                continue
            if message.type != WSMsgType.TEXT:
                continue
            try:
                event = orjson.loads(message.data)
            except orjson.JSONDecodeError:
                await ws.send_str(_event("error", error={"type": "invalid_request_error"}))
                continue
            session.events.append(event)
            kind = event.get("type")
            if kind == "fake.close":
                await ws.close(code=int(event.get("code", 1000)), message=b"scripted")
                break
            if kind == "session.update":
                await ws.send_str(_event("session.updated", session=_session(model)))
            elif kind == "conversation.item.create":
                texts = session.texts()
                last_text = texts[-1] if texts else last_text
            elif kind == "response.create":
                await _respond(ws, f"{reply_prefix}{last_text}", last_text)
    finally:
        session.closed = True
        session.close_code = ws.close_code
    return ws


async def _respond(ws: web.WebSocketResponse, reply: str, prompt: str) -> None:
    response_id = f"resp_{next(_ids)}"
    item_id = f"item_{next(_ids)}"
    base = {"id": response_id, "object": "realtime.response", "status": "in_progress"}
    await ws.send_str(_event("response.created", response=base))
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
    await ws.send_str(_event("response.output_text.delta", **where, content_index=0, delta=reply))
    await ws.send_str(_event("response.output_text.done", **where, content_index=0, text=reply))
    input_tokens, output_tokens = len(prompt.split()), len(reply.split())
    usage = {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {"text_tokens": input_tokens, "audio_tokens": 0},
        "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0},
    }
    done = {**base, "status": "completed", "usage": usage}
    await ws.send_str(_event("response.done", response=done))
