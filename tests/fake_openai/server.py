"""The fake OpenAI upstream: an aiohttp application, its recorded state and its scripts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import hdrs, web

from . import faults
from . import payloads as p
from .objects import RECEIVED, StoredObjects
from .ratelimits import KeyLimits, limit_exceeded
from .realtime import RealtimeSession, serve_session
from .records import FormPart, Received, read_parts
from .streams import CUT_FLAG, ChunkWriter, cut_connection, open_stream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Keys the shared test fixture accepts (long and distinctive, so a leak is easy to grep for).
FAKE_KEYS: tuple[str, ...] = (
    "sk-fake-upstream-key-one-0000000000000000000001xyz",
    "sk-fake-upstream-key-two-0000000000000000000002xyz",
    "sk-fake-upstream-key-three-00000000000000000003xyz",
    "sk-fake-upstream-key-four-000000000000000000004xyz",
)
TRANSCRIPT = "Hello from fake audio."
AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
MAX_BODY = 64 * 1024 * 1024
# Azure OpenAI's shape, under /openai: deployment name -> the model it runs.
DEPLOYMENTS = {"gpt4o-deployment": "gpt-4o", "mini-deployment": "gpt-4o-mini"}
AZURE_API_VERSION = "2024-10-21"
REALTIME_REPLY = "You said: "


STARTED = web.RequestKey("fake_openai_started", float)
BODY = web.RequestKey("fake_openai_json", dict)
FAULTS = web.RequestKey("fake_openai_faults", faults.PromptFaults)
LIMIT_HEADERS = web.RequestKey("fake_openai_limit_headers", dict)


@dataclass
class _State:
    requests: list[Received] = field(default_factory=list)
    disconnects: list[tuple[str, float]] = field(default_factory=list)
    moderation_calls: list[list[object]] = field(default_factory=list)
    speech_inputs: list[str] = field(default_factory=list)
    scripts: dict[str, faults.KeyScript] = field(default_factory=dict)
    responses: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    realtime: list[RealtimeSession] = field(default_factory=list)
    open_requests: int = 0  # requests whose handler has not returned yet (streams included)
    limits: dict[str, KeyLimits] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)  # key -> 429s for its limits


def _normalize(path: str) -> str:
    return path if path.startswith("/v1/") or path == "/v1" else "/v1/" + path.lstrip("/")


class FakeOpenAI:
    """An imitation of the OpenAI API under /v1, with recording and scripted faults.

    Azure OpenAI's shape is served too, under /openai/deployments/{deployment}/...: the key
    in an ``api-key`` header, an ``api-version`` query parameter required, the model named by
    the deployment (``DEPLOYMENTS``). The Realtime API is a WebSocket at /v1/realtime
    (``realtime.py``).

    Runs on a BackgroundLoop thread; every public method is safe to call from the test thread.
    """

    def __init__(self, keys: Iterable[str] = FAKE_KEYS, *, reply: str = p.DEFAULT_REPLY) -> None:
        self._initial_keys = frozenset(keys)
        self._initial_reply = reply
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _State()
        self.keys: set[str] = set(self._initial_keys)
        self.reply_text = reply
        self.moderation_down = False
        self.moderation_delay = 0.0
        self.url: str | None = None  # set by whoever serves `.app` (see conftest)
        self.objects = StoredObjects(self._lock, lambda: self.reply_text, self._answer)
        self.app = self._build_app()

    # ------------------------------------------------------------ scripting (test thread)

    @property
    def base_url(self) -> str:
        assert self.url is not None, "FakeOpenAI is not being served"
        return self.url + "/v1"

    def script_key(
        self,
        key: str,
        fault: faults.KeyFault,
        times: int | None = None,
        *,
        retry_after: float = 20,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests made with `key` (all, if None) with `fault`;
        `headers` are set on that answer over its own (e.g. an odd `retry-after`)."""
        if fault not in faults.KEY_FAULTS:
            raise ValueError(f"unknown key fault {fault!r}; one of {sorted(faults.KEY_FAULTS)}")
        with self._lock:
            self._state.scripts[key] = faults.KeyScript(fault, times, retry_after, headers)

    def limit_key(
        self, key: str, *, requests: int, tokens: int | None = None, window: float = 60.0
    ) -> None:
        """Enforce on `key` at most `requests` requests (and `tokens` tokens: the body's bytes
        / 4 plus its max_tokens, as OpenAI estimates) per `window` seconds, refilled
        continuously; its answers tell where it stands in x-ratelimit-* headers, and a request
        past a limit gets OpenAI's 429 rate_limit_exceeded. Moderation calls are not limited."""
        with self._lock:
            self._state.limits[key] = KeyLimits.new(requests, tokens, window, time.monotonic())

    def limited(self, key: str | None = None) -> int:
        """How many requests (with `key`, or any) were refused for a key's limits."""
        with self._lock:
            counts = self._state.limited
            return counts.get(key, 0) if key is not None else sum(counts.values())

    def clear_script(self, key: str) -> None:
        with self._lock:
            self._state.scripts.pop(key, None)

    def add_key(self, key: str) -> None:
        with self._lock:
            self.keys.add(key)

    def revoke_key(self, key: str) -> None:
        """From now on `key` gets a 401 invalid_api_key, as if revoked at OpenAI."""
        with self._lock:
            self.keys.discard(key)

    def reset(self) -> None:
        """Forget every record, script and setting; accept the construction keys again."""
        with self._lock:
            self._state = _State()
            self.keys = set(self._initial_keys)
            self.reply_text = self._initial_reply
            self.moderation_down = False
            self.moderation_delay = 0.0
        self.objects.reset()

    # ------------------------------------------------------------ records (test thread)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._state.requests)

    @property
    def disconnects(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._state.disconnects)

    @property
    def moderation_calls(self) -> list[list[object]]:
        with self._lock:
            return list(self._state.moderation_calls)

    @property
    def realtime_sessions(self) -> list[RealtimeSession]:
        """Every Realtime WebSocket session so far, oldest first (live objects)."""
        with self._lock:
            return list(self._state.realtime)

    @property
    def speech_inputs(self) -> list[str]:
        with self._lock:
            return list(self._state.speech_inputs)

    @property
    def open_requests(self) -> int:
        """Requests being answered right now: a stream counts until its last byte or its cut."""
        with self._lock:
            return self._state.open_requests

    def wait_for_open_requests(self, at_most: int = 0, timeout: float = 5.0) -> bool:
        """Wait until no more than `at_most` requests are still being answered."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.open_requests <= at_most, timeout)

    def requests_to(self, path: str) -> list[Received]:
        path = _normalize(path)
        return [r for r in self.requests if r.path == path]

    def count(self, path: str) -> int:
        return len(self.requests_to(path))

    def last(self, path: str | None = None) -> Received:
        found = self.requests_to(path) if path else self.requests
        assert found, f"no request received{f' on {path}' if path else ''}"
        return found[-1]

    def keys_used(self) -> list[str]:
        return [r.key for r in self.requests if r.key is not None]

    def wait_for_requests(
        self, count: int = 1, *, path: str | None = None, timeout: float = 5.0
    ) -> bool:
        """Wait until at least `count` requests (on `path`, if given) have arrived."""
        norm = _normalize(path) if path else None

        def arrived() -> bool:
            return sum(1 for r in self._state.requests if norm in (None, r.path)) >= count

        with self._changed:
            return self._changed.wait_for(arrived, timeout)

    def wait_for_disconnect(self, timeout: float = 5.0, *, path: str | None = None) -> float | None:
        """Wait until a client has gone away mid-answer: when (monotonic), or None on timeout."""
        norm = _normalize(path) if path else None

        def first() -> float | None:
            times = [t for where, t in self._state.disconnects if norm in (None, where)]
            return min(times) if times else None

        with self._changed:
            return self._changed.wait_for(first, timeout)

    # ------------------------------------------------------------ the application

    def _build_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._middleware(request, handler)

        app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
        app.on_response_prepare.append(self._add_headers)
        r = app.router
        r.add_post("/v1/chat/completions", self._chat_completions)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/embeddings", self._embeddings)
        r.add_post("/v1/images/generations", self._images_generations)
        r.add_post("/v1/images/edits", self._images_upload)
        r.add_post("/v1/images/variations", self._images_upload)
        r.add_post("/v1/moderations", self._moderations)
        r.add_get("/v1/models", self._models)
        r.add_get("/v1/models/{model}", self._model)
        r.add_post("/v1/responses", self._responses_create)
        r.add_get("/v1/responses/{id}", self._responses_retrieve)
        r.add_delete("/v1/responses/{id}", self._responses_delete)
        r.add_post("/v1/responses/{id}/cancel", self._responses_cancel)
        r.add_get("/v1/responses/{id}/input_items", self._responses_input_items)
        r.add_post("/v1/audio/speech", self._speech)
        r.add_post("/v1/audio/transcriptions", self._transcribe)
        r.add_post("/v1/audio/translations", self._transcribe)
        r.add_get("/v1/realtime", self._realtime)
        r.add_post("/v1/realtime/client_secrets", self._client_secret)
        azure = "/openai/deployments/{deployment}"
        r.add_post(azure + "/chat/completions", self._chat_completions)
        r.add_post(azure + "/completions", self._completions)
        r.add_post(azure + "/embeddings", self._embeddings)
        self.objects.add_routes(r)
        return app

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        started = request.get(STARTED, time.monotonic())
        elapsed = max(1, int((time.monotonic() - started) * 1000))
        defaults = p.openai_headers(elapsed)
        response.headers.update(request.get(LIMIT_HEADERS) or {})
        for name, value in defaults.items():
            response.headers.setdefault(name, value)

    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        state = self._state  # a reset() while this request runs must not skew the new count
        with self._changed:
            state.open_requests += 1
        try:
            return await self._admit(request, handler)
        except asyncio.CancelledError:
            if not request.get(CUT_FLAG):
                self._record_disconnect(request.path)
            raise
        except ConnectionResetError:
            if not request.get(CUT_FLAG):
                self._record_disconnect(request.path)
            return web.Response(status=499)  # never reaches anyone: the connection is gone
        finally:
            with self._changed:
                state.open_requests -= 1
                self._changed.notify_all()

    async def _admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record the request, check its key, apply scripted faults, then call the endpoint."""
        body = await request.read()
        parts: tuple[FormPart, ...] = ()
        bad_form: str | None = None
        if request.content_type == "multipart/form-data":
            try:
                parts = await read_parts(body, request.headers[hdrs.CONTENT_TYPE])
            except Exception as exc:
                bad_form = f"Could not parse multipart form: {exc}"
        azure = request.path.startswith("/openai/")
        auth = request.headers.get(hdrs.AUTHORIZATION, "")
        if azure:
            key = request.headers.get("api-key")
        else:
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        received = Received(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            key=key,
            time=time.monotonic(),
            parts=parts,
            raw_path=request.rel_url.raw_path,
        )
        request[RECEIVED] = received
        with self._changed:
            self._state.requests.append(received)
            self._changed.notify_all()

        if bad_form is not None:
            return faults.error_response(400, bad_form, "invalid_request_error")
        if request.match_info.http_exception is not None:
            return faults.error_response(
                404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
            )
        with self._lock:
            accepted = key is not None and key in self.keys
            script = self._consume_script(key) if accepted and key else None
        if not accepted:
            return faults.invalid_key(key)
        if azure and request.query.get("api-version") != AZURE_API_VERSION:
            return faults.error_response(
                400, "Missing or unsupported api-version.", "invalid_request_error"
            )

        data: dict[str, Any] = {}
        if body and request.content_type == "application/json":
            try:
                loaded = orjson.loads(body)
            except orjson.JSONDecodeError:
                return faults.error_response(
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely means"
                    " you aren't using your HTTP library correctly.)",
                    "invalid_request_error",
                )
            data = loaded if isinstance(loaded, dict) else {}
        if azure:
            deployed = DEPLOYMENTS.get(request.match_info.get("deployment", ""))
            if deployed is None:
                return self._not_found(
                    "The API deployment for this resource does not exist.",
                    code="DeploymentNotFound",
                )
            data["model"] = deployed  # Azure answers with the deployment's model
        request[BODY] = data
        model = str(data.get("model") or received.form().get("model") or "gpt-4o-mini")

        if script is not None:
            if script.fault == "rate_limit":
                answer: web.StreamResponse = faults.rate_limited(model, script.retry_after)
            else:
                answer = await faults.answer_terminal(request, script.fault, key=key, model=model)
            if script.headers:
                answer.headers.update(script.headers)
            return answer
        if request.path != "/v1/moderations" and key in self._state.limits:
            refused = self._limit(request, key, body, data, model)
            if refused is not None:
                return refused

        # Moderation has its own switches: a marker in a prompt the proxy moderates must fault
        # the real call, not the moderation call that precedes it.
        if request.path == "/v1/moderations":
            request[FAULTS] = faults.PromptFaults()
        else:
            try:
                prompt_faults = faults.parse_markers(body.decode(errors="replace"))
            except faults.MarkerError as exc:
                return faults.error_response(400, str(exc), "invalid_request_error")
            request[FAULTS] = prompt_faults
            if prompt_faults.terminal:
                return await faults.answer_terminal(
                    request, prompt_faults.terminal, key=key, model=model
                )
        return await handler(request)

    def _limit(
        self, request: web.Request, key: str, body: bytes, data: dict[str, Any], model: str
    ) -> web.Response | None:
        """Charge the key's limits for this request: its 429 if they cannot hold it."""
        most = data.get("max_completion_tokens") or data.get("max_tokens")
        cost = len(body) // 4 + (most if isinstance(most, int) else 0)
        with self._lock:
            limits = self._state.limits.get(key)
            if limits is None:
                return None
            kind, wait, headers = limits.admit(cost, time.monotonic())
            if kind is not None:
                self._state.limited[key] = self._state.limited.get(key, 0) + 1
                return limit_exceeded(model, kind, limits, cost, wait, headers)
        request[LIMIT_HEADERS] = headers
        return None

    def _consume_script(self, key: str) -> faults.KeyScript | None:
        script = self._state.scripts.get(key)
        if script is not None and script.remaining is not None:
            script.remaining -= 1
            if script.remaining <= 0:
                del self._state.scripts[key]
        return script

    def _record_disconnect(self, path: str) -> None:
        with self._changed:
            self._state.disconnects.append((path, time.monotonic()))
            self._changed.notify_all()

    # ------------------------------------------------------------ answer helpers

    @staticmethod
    def _faults(request: web.Request) -> faults.PromptFaults:
        return request.get(FAULTS) or faults.PromptFaults()

    def _reply(self, request: web.Request) -> str:
        words = self._faults(request).long
        return p.long_reply(words) if words is not None else self.reply_text

    async def _answer(
        self, request: web.Request, data: object, *, status: int = 200
    ) -> web.StreamResponse:
        """A JSON answer, after a `slow` delay; `cut:N` sends only its first N bytes,
        `stall:N` its first N bytes, then the rest a minute later."""
        prompt_faults = self._faults(request)
        if prompt_faults.slow:
            await asyncio.sleep(prompt_faults.slow)
        body = orjson.dumps(data)
        sent = prompt_faults.cut if prompt_faults.cut is not None else prompt_faults.stall
        if sent is None:
            return web.Response(body=body, status=status, content_type="application/json")
        response = web.StreamResponse(status=status)
        response.content_type = "application/json"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:sent])
        if prompt_faults.cut is not None:
            cut_connection(request, response)
            return response
        await asyncio.sleep(60)
        await response.write(body[sent:])
        return response

    async def _stream(self, request: web.Request, content_type: str = "") -> ChunkWriter:
        prompt_faults = self._faults(request)
        kwargs: dict[str, Any] = {
            "delay": prompt_faults.slow,
            "cut_after": prompt_faults.cut,
            "stall_after": prompt_faults.stall,
            "reset_after": prompt_faults.reset,
            "line_end": prompt_faults.framing,
        }
        if content_type:
            kwargs["content_type"] = content_type
        return await open_stream(request, **kwargs)

    @staticmethod
    def _not_found(
        message: str, *, param: str | None = None, code: str | None = None
    ) -> web.Response:
        return faults.error_response(404, message, "invalid_request_error", param=param, code=code)

    # ------------------------------------------------------------ text endpoints

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        model = str(body.get("model", "gpt-4o-mini"))
        reply = self._reply(request)
        usage = p.chat_usage(p.count_words(body.get("messages", [])), len(reply.split()))
        if not body.get("stream"):
            return await self._answer(request, p.chat_completion(model, reply, usage))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        writer = await self._stream(request)
        for chunk in p.chat_chunks(model, reply, usage, include_usage=include_usage):
            await writer.event(chunk)
        await writer.done()
        return writer.response

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        model = str(body.get("model", "gpt-3.5-turbo-instruct"))
        reply = self._reply(request)
        usage = p.completion_usage(p.count_words(body.get("prompt", "")), len(reply.split()))
        if not body.get("stream"):
            return await self._answer(request, p.completion(model, reply, usage))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        writer = await self._stream(request)
        for chunk in p.completion_chunks(model, reply, usage, include_usage=include_usage):
            await writer.event(chunk)
        await writer.done()
        return writer.response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        raw = body.get("input", "")
        if isinstance(raw, list) and raw and not all(isinstance(x, int) for x in raw):
            inputs: list[object] = list(raw)
        else:
            inputs = [raw]
        encoding = str(body.get("encoding_format") or "float")
        if encoding not in ("float", "base64"):
            return faults.error_response(
                400,
                f"Invalid value for 'encoding_format': '{encoding}'.",
                "invalid_request_error",
                param="encoding_format",
            )
        dimensions = int(body.get("dimensions") or p.EMBEDDING_DIMENSIONS)
        model = str(body.get("model", "text-embedding-3-small"))
        answer = p.embeddings(model, inputs, encoding_format=encoding, dimensions=dimensions)
        return await self._answer(request, answer)

    async def _moderations(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        items = p.moderation_inputs(body.get("input", ""))
        with self._lock:
            self._state.moderation_calls.append(items)
            delay, down = self.moderation_delay, self.moderation_down
        if delay:
            await asyncio.sleep(delay)
        if down:
            return faults.server_error()
        model = str(body.get("model") or "omni-moderation-latest")
        return await self._answer(request, p.moderation(model, items))

    # ------------------------------------------------------------ models

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, p.model_list())

    async def _model(self, request: web.Request) -> web.StreamResponse:
        model_id = request.match_info["model"]
        for known, owner in p.MODELS:
            if known == model_id:
                return await self._answer(request, p.model_object(known, owner))
        return self._not_found(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )

    # ------------------------------------------------------------ images

    async def _images_generations(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        model = str(body.get("model") or "dall-e-2")
        default_format = "url" if model.startswith("dall-e") else "b64_json"
        answer = p.images(
            int(body.get("n") or 1),
            str(body.get("response_format") or default_format),
            body.get("prompt") if model == "dall-e-3" else None,
        )
        return await self._answer(request, answer)

    async def _images_upload(self, request: web.Request) -> web.StreamResponse:
        received: Received = request[RECEIVED]
        form = received.form()
        if not any(part.filename is not None for part in received.parts):
            return faults.error_response(
                400, "Missing required parameter: 'image'.", "invalid_request_error", param="image"
            )
        answer = p.images(int(form.get("n") or 1), form.get("response_format") or "url", None)
        return await self._answer(request, answer)

    # ------------------------------------------------------------ responses

    def _stored(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self._lock:
            return self._state.responses.get(request.match_info["id"])

    def _response_not_found(self, request: web.Request) -> web.Response:
        return self._not_found(f"Response with id '{request.match_info['id']}' not found.")

    async def _stream_response_events(
        self, request: web.Request, response_id: str, body: dict[str, Any], reply: str
    ) -> web.StreamResponse:
        usage = p.responses_usage(p.count_words(body.get("input", "")), len(reply.split()))
        writer = await self._stream(request)
        for name, event in p.response_events(response_id, body, reply, usage):
            await writer.event(event, event=name)
        return writer.response

    async def _responses_create(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        previous = body.get("previous_response_id")
        with self._lock:
            unknown = previous is not None and previous not in self._state.responses
        if unknown:
            # As OpenAI answers it: a 400, unlike the 404 of a path naming an unknown response.
            return faults.error_response(
                400,
                f"Previous response with id '{previous}' not found.",
                "invalid_request_error",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        reply = self._reply(request)
        response_id = p.new_id("resp_")
        usage = p.responses_usage(p.count_words(body.get("input", "")), len(reply.split()))
        item = p.output_message(p.new_id("msg_"), reply)
        stored = p.response_object(
            response_id, body, status="completed", output=[item], usage=usage
        )
        with self._lock:
            self._state.responses[response_id] = (body, stored)
        if body.get("stream"):
            return await self._stream_response_events(request, response_id, body, reply)
        return await self._answer(request, stored)

    async def _responses_retrieve(self, request: web.Request) -> web.StreamResponse:
        found = self._stored(request)
        if found is None:
            return self._response_not_found(request)
        body, stored = found
        if request.query.get("stream") == "true":
            text = stored["output"][0]["content"][0]["text"] if stored["output"] else ""
            return await self._stream_response_events(request, stored["id"], body, text)
        return await self._answer(request, stored)

    async def _responses_delete(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            found = self._state.responses.pop(request.match_info["id"], None)
        if found is None:
            return self._response_not_found(request)
        answer = {"id": found[1]["id"], "object": "response", "deleted": True}
        return await self._answer(request, answer)

    async def _responses_cancel(self, request: web.Request) -> web.StreamResponse:
        found = self._stored(request)
        if found is None:
            return self._response_not_found(request)
        with self._lock:
            found[1]["status"] = "cancelled"
        return await self._answer(request, found[1])

    async def _responses_input_items(self, request: web.Request) -> web.StreamResponse:
        found = self._stored(request)
        if found is None:
            return self._response_not_found(request)
        return await self._answer(request, p.input_items(found[0]))

    # ------------------------------------------------------------ realtime

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        received: Received = request[RECEIVED]
        session = RealtimeSession(received.key, received.query, received.headers, None)
        with self._changed:
            self._state.realtime.append(session)
            self._changed.notify_all()
        try:
            return await serve_session(request, session, REALTIME_REPLY)
        finally:
            with self._changed:
                self._changed.notify_all()

    async def _client_secret(self, request: web.Request) -> web.StreamResponse:
        session = request[BODY].get("session") or {}
        answer = {
            "value": "ek_" + p.new_id("")[:24],
            "expires_at": int(time.time()) + 600,
            "session": {"type": "realtime", "model": "gpt-realtime", **session},
        }
        return await self._answer(request, answer)

    # ------------------------------------------------------------ audio

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        text = str(body.get("input", ""))
        with self._lock:
            self._state.speech_inputs.append(text)
        audio = p.fake_mp3(text)
        content_type = AUDIO_TYPES.get(str(body.get("response_format") or "mp3"), "audio/mpeg")
        writer = await self._stream(request, content_type)
        size = len(audio) // 4
        for start in range(0, len(audio), size):
            await writer.write(audio[start : start + size])
        return writer.response

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        received: Received = request[RECEIVED]
        form = received.form()
        if not any(part.name == "file" and part.filename for part in received.parts):
            return faults.error_response(
                400, "Missing required parameter: 'file'.", "invalid_request_error", param="file"
            )
        if not form.get("model"):
            return faults.error_response(
                400, "Missing required parameter: 'model'.", "invalid_request_error", param="model"
            )
        response_format = form.get("response_format") or "json"
        usage = {"type": "duration", "seconds": 3}
        if response_format == "text":
            return web.Response(text=TRANSCRIPT + "\n", content_type="text/plain")
        if response_format in ("srt", "vtt"):
            head = "WEBVTT\n\n" if response_format == "vtt" else "1\n"
            cue = "00:00:00,000 --> 00:00:03,000\n"
            return web.Response(text=f"{head}{cue}{TRANSCRIPT}\n", content_type="text/plain")
        if response_format == "verbose_json":
            task = "translate" if request.path.endswith("translations") else "transcribe"
            answer: dict[str, Any] = {
                "task": task,
                "language": "english",
                "duration": 3.0,
                "text": TRANSCRIPT,
                "segments": [],
                "usage": usage,
            }
            return await self._answer(request, answer)
        return await self._answer(request, {"text": TRANSCRIPT, "usage": usage})
