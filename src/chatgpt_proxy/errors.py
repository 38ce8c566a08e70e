"""The one exception tree of chatgpt-proxy, and its one renderer.

Every error a client can see is a ``ProxyError``; each class carries its HTTP status and
OpenAI's ``type``/``code``, so the whole proxy answers in OpenAI's envelope::

    ProxyError                              500 server_error / internal_error
    ├── InvalidRequest                      400 invalid_request_error
    │   ├── InvalidJSON                     400 invalid_json
    │   ├── InvalidContentType              400 invalid_content_type
    │   ├── InvalidHeader                   400 invalid_header
    │   ├── RequestTooLarge                 413 request_too_large
    │   ├── RequestTimeout                  408 request_timeout
    │   ├── UnsupportedEncoding             415 unsupported_content_encoding
    │   ├── ExpectationFailed               417 expectation_failed
    │   ├── VersionNotSupported             505 http_version_not_supported
    │   ├── UnknownRoute                    404 unknown_url
    │   ├── MethodNotAllowed                405 method_not_allowed
    │   ├── ModelNotFound                   404 model_not_found
    │   └── ContentPolicyViolation          400 content_policy_violation
    ├── AuthenticationFailed                401 invalid_api_key
    ├── PermissionDenied                    403 permission_denied
    │   └── ModelNotAllowed                 403 model_not_allowed
    ├── RateLimited                         429 rate_limit_exceeded      (+ retry-after)
    │   ├── QuotaExceeded                   429 insufficient_quota
    │   └── UpstreamRateLimited             429 upstream_rate_limited    (+ retry-after <= 120 s)
    ├── ServiceUnavailable                  503
    │   ├── ModerationUnavailable           503 moderation_unavailable   (+ retry-after)
    │   ├── NoUpstreamKeys                  503 no_upstream_keys
    │   ├── Overloaded                      503 server_overloaded        (+ retry-after)
    │   └── StoreUnavailable                503 store_unavailable
    ├── UpstreamError                       502 upstream_error
    └── UpstreamTimeout                     504 upstream_timeout

    ConfigError                             not an HTTP error: a bad configuration at start-up

Foreign exceptions (aiohttp, SQLAlchemy, Redis) are translated where they are caught, with
``raise ... from exc``; nothing else in the proxy invents an error body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

MAX_UPSTREAM_RETRY_AFTER = 120.0


class ProxyError(Exception):
    """An error answered to the client in OpenAI's format.

    >>> err = ModelNotFound("The model `x` does not exist.", param="model")
    >>> err.status, err.code
    (404, 'model_not_found')
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

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


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidContentType(InvalidRequest):
    code = "invalid_content_type"


class InvalidHeader(InvalidRequest):
    code = "invalid_header"


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


class ContentPolicyViolation(InvalidRequest):
    code = "content_policy_violation"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # The SDKs retry on some statuses unless told not to; a blocked prompt never passes.
        super().__init__(message, param=param, headers={"x-should-retry": "false"})


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code: str | None = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


def _retry_after_headers(seconds: float, cap: float | None = None) -> dict[str, str]:
    if cap is not None:
        seconds = min(seconds, cap)
    return {"retry-after": str(max(1, math.ceil(seconds)))}


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


class UpstreamRateLimited(RateLimited):
    type = "server_error"
    code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        capped = min(max(retry_after, 1.0), MAX_UPSTREAM_RETRY_AFTER)
        super().__init__(message, retry_after=capped)


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


class Overloaded(ServiceUnavailable):
    """The proxy itself is full: more requests in flight and waiting than it is set to hold."""

    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, headers=_retry_after_headers(retry_after))


class UpstreamError(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


class ConfigError(Exception):
    """The configuration is invalid; the message names the field and, where known, the line."""


class StoreUnavailable(ServiceUnavailable):
    """The key store (database) could not be reached; raised at the keystore boundary."""

    code = "store_unavailable"
