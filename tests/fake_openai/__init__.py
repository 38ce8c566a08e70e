"""A fake OpenAI upstream: a real HTTP server (aiohttp) with recording and scripted faults.

Serve `FakeOpenAI().app` on a BackgroundLoop (handler_cancellation=True), point a client at
`fake.base_url`, script faults per key with `fake.script_key(key, "rate_limit", times=2)` or per
prompt with markers such as `[[fault:500]]`, `[[fault:slow:0.2]]`, `[[fault:cut:3]]`.
"""

from .faults import KEY_FAULTS, REDIRECT_TARGET, KeyFault, mask_key
from .payloads import DEFAULT_REPLY, EMBEDDING_DIMENSIONS, MODELS, ORGANIZATION, PROJECT
from .realtime import RealtimeSession
from .records import FormPart, Received
from .server import (
    AZURE_API_VERSION,
    DEPLOYMENTS,
    FAKE_KEYS,
    REALTIME_REPLY,
    TRANSCRIPT,
    FakeOpenAI,
)

__all__ = [
    "AZURE_API_VERSION",
    "DEFAULT_REPLY",
    "DEPLOYMENTS",
    "EMBEDDING_DIMENSIONS",
    "FAKE_KEYS",
    "KEY_FAULTS",
    "MODELS",
    "ORGANIZATION",
    "PROJECT",
    "REALTIME_REPLY",
    "REDIRECT_TARGET",
    "TRANSCRIPT",
    "FakeOpenAI",
    "FormPart",
    "KeyFault",
    "RealtimeSession",
    "Received",
    "mask_key",
]
