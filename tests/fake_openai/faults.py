"""Scripted faults: per-key scripts, per-prompt `[[fault:NAME]]` markers, OpenAI error bodies."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aiohttp import web

from .payloads import ORGANIZATION, PROJECT

KeyFault = Literal[
    "rate_limit",
    "invalid",
    "no_quota",
    "server_error",
    "hang",
    "html",
    "redirect",
    # The key's account may not use the model (403), or does not see it (404 model_not_found).
    "forbidden",
    "model_not_found",
    "unavailable",  # 503
    "plain",  # a 200 text/plain page
    "garbage",  # a 200 said to be JSON that is not
]
KEY_FAULTS: frozenset[str] = frozenset(get_args(KeyFault))

# Faults that replace the whole answer; the others (slow, cut, long...) modify a normal answer.
TERMINAL_MARKERS = frozenset(
    {"500", "429", "400", "hang", "html", "redirect", "503", "plain", "garbage", "422"}
)
MODIFIER_MARKERS = frozenset({"slow", "cut", "long", "framing", "reset"})
FRAMINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}  # `framing:NAME`: SSE line ends
MARKER = re.compile(r"\[\[fault:([a-z0-9_]+)(?::([^\]]*))?\]\]")

REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/"
# [[fault:echo_key]]: a 401 whose message holds the whole key it was sent (a gateway that
# echoes it). Terminal, like those above.
ECHO_KEY_MARKER = "echo_key"


class MarkerError(ValueError):
    """A `[[fault:...]]` marker the fake does not understand (answered with a 400)."""


@dataclass
class KeyScript:
    fault: KeyFault
    remaining: int | None  # None: forever
    retry_after: float = 20
    headers: dict[str, str] | None = None  # set on the fault's answer, over its own


@dataclass
class PromptFaults:
    """What the `[[fault:...]]` markers of one request ask for."""

    terminal: str | None = None
    slow: float | None = None
    cut: int | None = None
    stall: int | None = None
    long: int | None = None
    framing: bytes = b"\n"  # the line end of streamed events
    reset: int | None = None  # streams: reset the connection (RST) after that many chunks
    markers: list[str] = field(default_factory=list)


def parse_markers(text: str) -> PromptFaults:
    faults = PromptFaults()
    for name, arg in MARKER.findall(text):
        faults.markers.append(f"{name}:{arg}" if arg else name)
        try:
            if name in TERMINAL_MARKERS or name == ECHO_KEY_MARKER:
                faults.terminal = faults.terminal or name
            elif name == "slow":
                faults.slow = float(arg)
            elif name == "cut":
                faults.cut = int(arg)
            elif name == "stall":
                faults.stall = int(arg)
            elif name == "long":
                faults.long = int(arg)
            elif name == "framing":
                if arg not in FRAMINGS:
                    raise ValueError(arg)
                faults.framing = FRAMINGS[arg]
            elif name == "reset":
                faults.reset = int(arg)
            else:
                raise MarkerError(f"unknown fault marker [[fault:{name}]]")
        except ValueError as exc:
            if isinstance(exc, MarkerError):
                raise
            raise MarkerError(f"bad argument in [[fault:{name}:{arg}]]") from exc
    return faults


# ---------------------------------------------------------------- OpenAI error bodies


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(message, type_, param=param, code=code), status=status, headers=headers
    )


def mask_key(key: str) -> str:
    """How OpenAI echoes a wrong key: "sk-ab***********xyz"."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:5]}{'*' * (len(key) - 8)}{key[-3:]}"


def invalid_key(key: str | None) -> web.Response:
    if not key:
        return error_response(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization"
            " header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password"
            " field (with blank username) if you're accessing the API from your browser and are"
            " prompted for a username. You can obtain an API key from"
            " https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
        )
    return error_response(
        401,
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at"
        " https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    )


def key_echoed(key: str | None) -> web.Response:
    return error_response(
        401,
        f"Incorrect API key provided: {key}. You can find your API key at"
        " https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    )


def rate_limited(model: str, retry_after: float) -> web.Response:
    seconds = f"{retry_after:g}"
    return error_response(
        429,
        f"Rate limit reached for {model} in organization {ORGANIZATION} on requests per min"
        f" (RPM): Limit 3, Used 3, Requested 1. Please try again in {seconds}s. Visit"
        " https://platform.openai.com/account/rate-limits to learn more.",
        "requests",
        param=None,
        code="rate_limit_exceeded",
        headers={
            "retry-after": seconds,
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{seconds}s",
        },
    )


def no_quota() -> web.Response:
    return error_response(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more"
        " information on this error, read the docs:"
        " https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        code="insufficient_quota",
    )


def server_error() -> web.Response:
    return error_response(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


def bad_request(param: str = "temperature") -> web.Response:
    return error_response(
        400,
        f"Invalid value for '{param}': expected a number between 0 and 2.",
        "invalid_request_error",
        param=param,
        code="invalid_value",
    )


def html_page(key: str | None) -> web.Response:
    """A 200 HTML page (a captive portal, a misconfigured gateway) that leaks the key it got."""
    return web.Response(
        status=200,
        content_type="text/html",
        text=f"<html><body><h1>Gateway</h1><p>evil {key or 'sk-none'}</p></body></html>",
    )


def forbidden(model: str) -> web.Response:
    """What OpenAI answers a project without access to a model; it names the project."""
    return error_response(
        403,
        f"Project `{PROJECT}` of organization {ORGANIZATION} does not have access to model"
        f" `{model}`",
        "invalid_request_error",
        code="model_not_found",
    )


def model_not_found(model: str) -> web.Response:
    return error_response(
        404,
        f"The model `{model}` does not exist or you do not have access to it"
        f" (organization {ORGANIZATION}).",
        "invalid_request_error",
        code="model_not_found",
    )


def unavailable() -> web.Response:
    return error_response(
        503, "The engine is currently overloaded, please try again later.", "server_error"
    )


def plain_page(key: str | None) -> web.Response:
    return web.Response(status=200, content_type="text/plain", text=f"upstream says {key}")


def garbage(key: str | None) -> web.Response:
    return web.Response(
        status=200, content_type="application/json", text=f"OK ok {key} }}{{ not json"
    )


def redirect() -> web.Response:
    return web.Response(status=302, headers={"Location": REDIRECT_TARGET})


async def hang(request: web.Request) -> web.StreamResponse:
    """Never answer; end (by a ConnectionResetError) only once the client has gone away.

    With handler_cancellation the handler is cancelled instead: both are recorded as disconnects.
    """
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.05)
    raise ConnectionResetError("client went away")


async def answer_terminal(
    request: web.Request, name: str, *, key: str | None, model: str
) -> web.StreamResponse:
    """The response for a terminal fault (key script name or prompt marker name)."""
    match name:
        case "echo_key":
            return key_echoed(key)
        case "500" | "server_error":
            return server_error()
        case "429":
            return rate_limited(model, 20)
        case "400":
            return bad_request()
        case "invalid":
            return invalid_key(key or "sk-unknown")
        case "no_quota":
            return no_quota()
        case "hang":
            return await hang(request)
        case "html":
            return html_page(key)
        case "redirect":
            return redirect()
        case "forbidden":
            return forbidden(model)
        case "model_not_found":
            return model_not_found(model)
        case "422":
            return error_response(
                422,
                f"Unprocessable request for organization {ORGANIZATION}: 'n' must be at most 128.",
                "invalid_request_error",
                param="n",
            )
        case "503" | "unavailable":
            return unavailable()
        case "plain":
            return plain_page(key)
        case "garbage":
            return garbage(key)
    raise AssertionError(f"not a terminal fault: {name}")
