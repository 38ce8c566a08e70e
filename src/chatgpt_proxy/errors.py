"""The one exception tree of chatgpt-proxy, and its one renderer.

Every error a client can see is a ``ProxyError``; each class carries its HTTP status and
OpenAI's ``type``/``code``, so the whole proxy answers in OpenAI's envelope::

    ProxyError                              500 server_error / internal_error
    ├── InvalidRequest                      400 invalid_request_error
    │   ├── InvalidJSON                     400 invalid_json
    │   ├── InvalidContentType              400 invalid_content_type
    │   ├── InvalidMultipart                400 invalid_multipart
    │   ├── RequestTooLarge                 413 request_too_large
    │   ├── RequestTimeout                  408 request_timeout
    │   ├── UnsupportedEncoding             415 unsupported_content_encoding
    │   ├── ExpectationFailed               417 expectation_failed
    │   ├── VersionNotSupported             505 http_version_not_supported
    │   ├── UnknownRoute                    404 unknown_url
    │   ├── MethodNotAllowed                405 method_not_allowed
    │   ├── ModelNotFound                   404 model_not_found
    │   ├── ObjectNotFound                  404 (OpenAI's own: no code)
    │   │   └── PreviousResponseNotFound    404 previous_response_not_found
    │   └── ContentPolicyViolation          400 content_policy_violation
    ├── AuthenticationFailed                401 invalid_api_key
    │   └── InvalidSignature                401 invalid_signature (a Discord interaction's)
    ├── PermissionDenied                    403 permission_denied
    │   └── ModelNotAllowed                 403 model_not_allowed
    ├── ResourceUnavailable                 409 resource_key_unavailable (+ x-should-retry: false)
    ├── RateLimited                         429 rate_limit_exceeded      (+ retry-after)
    │   ├── QuotaExceeded                   429 insufficient_quota
    │   ├── UpstreamRateLimited             429 upstream_rate_limited    (+ retry-after <= 120 s)
    │   └── UpstreamQuotaExhausted          429 upstream_insufficient_quota
    ├── ServiceUnavailable                  503
    │   ├── ModerationUnavailable           503 moderation_unavailable   (+ retry-after)
    │   ├── NoUpstreamKeys                  503 no_upstream_keys
    │   ├── Overloaded                      503 server_overloaded        (+ retry-after)
    │   └── StoreUnavailable                503 store_unavailable
    ├── UpstreamError                       502 upstream_error           (+ retry-after)
    └── UpstreamTimeout                     504 upstream_timeout         (+ retry-after)

    ConfigError                             not an HTTP error: a bad configuration at start-up

    TransportError                          not an HTTP error: the wire to an upstream failed
    ├── ConnectFailed                       no answer began (refused, DNS, TLS, dropped early)
    │   └── SocketRefused                   a WebSocket upgrade answered with another status
    ├── TransportTimeout                    nothing arrived in time (connect, headers, body)
    └── BrokenBody                          the answer began, then broke off (reset, cut short)

A class whose error a retry cannot fix (or can) says so in ``should_retry``, which becomes the
``x-should-retry`` header the OpenAI SDKs obey before their own rules (they retry 408, 409, 429
and 5xx otherwise); errors of the upstream that a later retry may fix carry ``retry-after-ms``,
which the SDKs prefer to their own short backoff, so their retries do not pile onto an upstream
already failing.

Foreign exceptions (aiohttp, SQLAlchemy, Redis) are translated where they are caught, with
``raise ... from exc``; nothing else in the proxy invents an error body. The upstream side's
are caught in one place, the transport (``upstream/transport``), as a ``TransportError``,
which the upstream client turns into a retry on another key or a 502/504.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

MAX_UPSTREAM_RETRY_AFTER = 120.0
DEFAULT_RETRY_AFTER = 1.0  # what a 502/504 tells the SDKs to wait when nothing better is known


class ProxyError(Exception):
    """An error answered to the client in OpenAI's format.

    >>> err = ModelNotFound("The model `x` does not exist.", param="model")
    >>> err.status, err.code
    (404, 'model_not_found')
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    should_retry: bool | None = None  # the x-should-retry header, when the class knows

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        if self.should_retry is not None:
            self.headers.setdefault("x-should-retry", "true" if self.should_retry else "false")

    def advise_retry(self, seconds: float) -> None:
        """Tell the SDKs to wait ``seconds`` before retrying (``retry-after-ms`` first)."""
        self.headers.update(_retry_after_headers(seconds, MAX_UPSTREAM_RETRY_AFTER, ms=True))

    def payload(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def sse_event(self) -> bytes:
        """The error as one server-sent event, for a stream that has already begun."""
        return b"data: " + self.body() + b"\n\n"


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code: str | None = "invalid_request"
    should_retry: bool | None = False  # the same request gets the same answer


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidContentType(InvalidRequest):
    code = "invalid_content_type"


class InvalidMultipart(InvalidRequest):
    code = "invalid_multipart"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class UnsupportedEncoding(InvalidRequest):
    status = 415
    code = "unsupported_content_encoding"


class ExpectationFailed(InvalidRequest):
    status = 417
    code = "expectation_failed"


class VersionNotSupported(InvalidRequest):
    status = 505
    code = "http_version_not_supported"


class UnknownRoute(InvalidRequest):
    status = 404
    code = "unknown_url"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class ObjectNotFound(InvalidRequest):
    """A stored object (a response...) that is not the caller's, or does not exist.

    Both are told alike, in the upstream's words, so another key's ids cannot be told from
    unknown ones (DESIGN §3.8).
    """

    status = 404
    code: str | None = None


class PreviousResponseNotFound(ObjectNotFound):
    code = "previous_response_not_found"


class ContentPolicyViolation(InvalidRequest):
    code = "content_policy_violation"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # The SDKs retry on some statuses unless told not to; a blocked prompt never passes.
        super().__init__(message, param=param, headers={"x-should-retry": "false"})


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    should_retry = False


class InvalidSignature(AuthenticationFailed):
    """A signed request (a Discord interaction) whose signature, age or id does not hold."""

    code = "invalid_signature"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code: str | None = "permission_denied"
    should_retry = False


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class ResourceUnavailable(ProxyError):
    """The upstream key holding a stored object is retired or gone: no other key holds it."""

    status = 409
    type = "invalid_request_error"
    code = "resource_key_unavailable"
    should_retry = False  # the SDKs retry a 409; this one stays until the key is back


def _retry_after_headers(
    seconds: float, cap: float | None = None, *, ms: bool = False
) -> dict[str, str]:
    """``retry-after`` in whole seconds, at least 1 (as HTTP has it), and with ``ms`` the
    finer ``retry-after-ms``; a hint that is not a finite number becomes the default."""
    if not math.isfinite(seconds):
        seconds = DEFAULT_RETRY_AFTER
    seconds = max(seconds, 0.001)
    if cap is not None:
        seconds = min(seconds, cap)
    headers = {"retry-after": str(max(1, math.ceil(seconds)))}
    if ms:
        headers["retry-after-ms"] = str(max(1, round(seconds * 1000)))
    return headers


class RateLimited(ProxyError):
    status = 429
    type = "requests"
    code: str | None = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        merged = dict(headers or {})
        if retry_after is not None:
            merged.update(_retry_after_headers(retry_after))
        super().__init__(message, headers=merged)
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"
    should_retry = False


class UpstreamRateLimited(RateLimited):
    """Every upstream key is cooling: retry when the first of them is back (at most 120 s)."""

    type = "server_error"
    code = "upstream_rate_limited"
    should_retry = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        if not math.isfinite(retry_after):
            retry_after = DEFAULT_RETRY_AFTER
        capped = min(max(retry_after, 1.0), MAX_UPSTREAM_RETRY_AFTER)
        super().__init__(message, retry_after=capped)
        self.advise_retry(retry_after)  # to the millisecond: the SDKs prefer it


class UpstreamQuotaExhausted(RateLimited):
    """Every upstream key is out of quota: nothing a retry can fix until an operator acts."""

    type = "insufficient_quota"
    code = "upstream_insufficient_quota"
    should_retry = False


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code: str | None = "service_unavailable"


class ModerationUnavailable(ServiceUnavailable):
    code = "moderation_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message, headers=_retry_after_headers(retry_after))


class NoUpstreamKeys(ServiceUnavailable):
    code = "no_upstream_keys"
    should_retry = False  # every key is out of service until an operator (or a probe) acts


class Overloaded(ServiceUnavailable):
    """The proxy itself is full: more requests in flight and waiting than it is set to hold."""

    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, headers=_retry_after_headers(retry_after))


class UpstreamError(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    should_retry = True

    def __init__(self, message: str, *, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message)
        self.advise_retry(retry_after)


class UpstreamTimeout(ProxyError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    should_retry = True

    def __init__(self, message: str, *, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message)
        self.advise_retry(retry_after)


class ConfigError(Exception):
    """The configuration is invalid; the message names the field and, where known, the line."""


class StoreUnavailable(ServiceUnavailable):
    """The key store (database) could not be reached; raised at the keystore boundary."""

    code = "store_unavailable"


class TransportError(Exception):
    """The connection to an upstream failed; raised by the transport, from the HTTP client's
    own exception. Never shown to a client as such: the upstream client retries on another key
    or answers ``UpstreamError`` / ``UpstreamTimeout``. The message names the cause's class
    only: the foreign exception's text stays on ``__cause__``."""


class ConnectFailed(TransportError):
    """No answer began: the connection could not be opened (refused, DNS, TLS) or was lost
    before the answer's headers."""


class SocketRefused(ConnectFailed):
    """A WebSocket upgrade the upstream answered with an HTTP status instead (401, 429...)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class TransportTimeout(TransportError):
    """Nothing arrived in time: connecting, waiting for the headers, or for the next piece
    of the body."""


class BrokenBody(TransportError):
    """The answer began and then broke off: a reset, chunked data cut short, a closed
    connection."""
