"""Which headers cross the proxy, in each direction: allowlists, never denylists.

Upstream requests carry only what the API needs (DESIGN §3.3): the client's ``Authorization``,
``OpenAI-Organization``, ``Host`` and hop-by-hop headers never go up. Answers carry only what
the SDKs read: upstream account identifiers (``openai-organization``, ``openai-project``) and
the upstream key's own rate-limit headers never come down.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

# Headers a client may send that the upstream API understands.
_CLIENT_TO_UPSTREAM = frozenset(
    {
        "accept",
        "content-type",
        "openai-beta",
        "idempotency-key",
        "x-stainless-lang",
        "x-stainless-package-version",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
    }
)

# Headers of an upstream answer that are the API's own and say nothing about the account.
_UPSTREAM_TO_CLIENT = frozenset(
    {
        "content-type",
        "content-disposition",
        "content-language",
        "openai-version",
        "openai-model",
    }
)

SSE_HEADERS: Mapping[str, str] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    secret: str,
    *,
    organization: str | None = None,
    project: str | None = None,
    auth: str = "bearer",
) -> CIMultiDict[str]:
    """The headers of a request upstream: the client's that the API understands, then the
    upstream key, as ``auth`` says (``bearer``, or Azure's ``api-key`` header)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in client_headers.items():
        if name.lower() in _CLIENT_TO_UPSTREAM:
            headers.add(name, value)
    if auth == "api-key":
        headers["api-key"] = secret
    else:
        headers["Authorization"] = f"Bearer {secret}"
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers.items():
        if name.lower() in _UPSTREAM_TO_CLIENT:
            headers.add(name, value)
    return headers
