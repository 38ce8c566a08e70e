"""Headers crossing the proxy: allowlists in both directions, the upstream key put in."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from chatgpt_proxy.headers import SSE_HEADERS, client_response_headers, upstream_request_headers


def _headers(**pairs: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict((k.replace("_", "-"), v) for k, v in pairs.items()))


def test_only_headers_the_api_understands_go_up_with_the_upstream_key() -> None:
    client = _headers(
        Authorization="Bearer sk-client",
        OpenAI_Organization="org-client",
        Host="proxy.example",
        Connection="keep-alive",
        Content_Type="application/json",
        OpenAI_Beta="assistants=v2",
        X_Stainless_Lang="python",
        X_Forwarded_For="10.0.0.1",
    )
    sent = upstream_request_headers(client, "sk-upstream")
    assert dict(sent) == {
        "Content-Type": "application/json",
        "OpenAI-Beta": "assistants=v2",
        "X-Stainless-Lang": "python",
        "Authorization": "Bearer sk-upstream",
    }


def test_an_api_key_upstream_gets_the_key_in_its_own_header_and_no_bearer() -> None:
    client = _headers(Authorization="Bearer pk-client", Api_Key="sk-client-sent")
    sent = upstream_request_headers(client, "sk-upstream", auth="api-key")
    assert dict(sent) == {"api-key": "sk-upstream"}


def test_the_upstream_account_is_named_only_when_configured() -> None:
    sent = upstream_request_headers(
        _headers(), "sk-upstream", organization="org-ours", project="proj_ours"
    )
    assert sent["OpenAI-Organization"] == "org-ours"
    assert sent["OpenAI-Project"] == "proj_ours"
    assert "OpenAI-Project" not in upstream_request_headers(_headers(), "sk", project="")


def test_answers_keep_the_apis_headers_and_drop_the_accounts() -> None:
    upstream = _headers(
        Content_Type="text/event-stream",
        OpenAI_Version="2020-10-01",
        OpenAI_Model="gpt-4o-mini",
        OpenAI_Organization="org-secret",
        OpenAI_Project="proj_secret",
        X_RateLimit_Remaining_Requests="99",
        Set_Cookie="session=1",
    )
    assert dict(client_response_headers(upstream)) == {
        "Content-Type": "text/event-stream",
        "OpenAI-Version": "2020-10-01",
        "OpenAI-Model": "gpt-4o-mini",
    }


def test_streams_are_neither_cached_nor_buffered() -> None:
    assert SSE_HEADERS == {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
