"""Redaction: configured secrets and anything shaped like a key or an account id are scrubbed."""

from __future__ import annotations

from chatgpt_proxy.redaction import Redactor

SECRET = "local-upstream-secret-0123"


def test_configured_secrets_are_replaced_longest_first() -> None:
    redactor = Redactor([SECRET, SECRET[:10], ""])
    assert redactor.scrub(f"failed with {SECRET}.") == "failed with ***."
    assert redactor.scrub(f"prefix {SECRET[:10]} only") == "prefix *** only"


def test_key_and_account_shapes_are_replaced_without_configuration() -> None:
    scrubbed = Redactor().scrub("key sk-ab***xyz1 of org-AbCd1234 in proj_Zz99yy")
    assert scrubbed == "key sk-*** of org-*** in proj_***"


def test_text_with_nothing_to_hide_is_returned_as_it_is() -> None:
    text = "POST /v1/chat/completions 200 key=key_1 model=gpt-4o-mini"
    assert Redactor([SECRET]).scrub(text) is text


def test_bytes_are_scrubbed_like_text() -> None:
    redactor = Redactor([SECRET])
    body = f'{{"error": "bad key {SECRET} for org-AbCd1234"}}'.encode()
    assert redactor.scrub_bytes(body) == b'{"error": "bad key *** for org-***"}'
    assert Redactor().scrub_bytes(b"nothing here") == b"nothing here"
