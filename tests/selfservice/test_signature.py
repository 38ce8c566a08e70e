"""``selfservice/signature.py``: Ed25519 signatures of interactions, checked with a test key pair
and a clock the test sets: valid, tampered, stale or early, malformed."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from chatgpt_proxy.errors import InvalidSignature
from chatgpt_proxy.selfservice.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureCheck
from selfservice.discord_helpers import Signer, ping

NOW = 1_800_000_000
MAX_AGE = 300.0


def check(signer: Signer, now: float = NOW) -> SignatureCheck:
    return SignatureCheck(signer.public_key, max_age=MAX_AGE, clock=lambda: now)


def refusal(check: SignatureCheck, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(InvalidSignature) as raised:
        check.verify(headers, body)
    assert raised.value.status == 401 and raised.value.code == "invalid_signature"
    return raised.value.message


def test_a_fresh_signature_of_the_body_holds(signer: Signer) -> None:
    body = ping(signer)
    check(signer).verify(signer.headers(body, timestamp=NOW), body)


def test_headers_are_read_case_insensitively_from_a_request(signer: Signer) -> None:
    body = ping(signer)
    lowered = {name.lower(): value for name, value in signer.headers(body, NOW).items()}
    check(signer).verify(CIMultiDict(lowered), body)


def test_an_upper_case_signature_holds(signer: Signer) -> None:
    body = ping(signer)
    headers = signer.headers(body, timestamp=NOW)
    headers[SIGNATURE_HEADER] = headers[SIGNATURE_HEADER].upper()
    check(signer).verify(headers, body)


@pytest.mark.parametrize("age", [MAX_AGE, -MAX_AGE, 0.0])
def test_a_signature_within_max_age_either_way_holds(signer: Signer, age: float) -> None:
    body = ping(signer)
    check(signer, now=NOW + age).verify(signer.headers(body, timestamp=NOW), body)


@pytest.mark.parametrize("age", [MAX_AGE + 1, -(MAX_AGE + 1), 86_400.0])
def test_a_signature_too_old_or_from_the_future_is_refused(signer: Signer, age: float) -> None:
    body = ping(signer)
    message = refusal(check(signer, now=NOW + age), signer.headers(body, timestamp=NOW), body)
    assert message == "The request signature is too old."


def test_a_tampered_body_is_refused(signer: Signer) -> None:
    body = ping(signer)
    headers = signer.headers(body, timestamp=NOW)
    assert refusal(check(signer), headers, body + b" ") == "Invalid request signature."
    assert refusal(check(signer), headers, body.replace(b'"type":1', b'"type":2')) == (
        "Invalid request signature."
    )


def test_a_tampered_timestamp_is_refused(signer: Signer) -> None:
    # The timestamp is signed too: it cannot be moved to make an old request look fresh.
    body = ping(signer)
    headers = signer.headers(body, timestamp=NOW - 3600)
    headers[TIMESTAMP_HEADER] = str(NOW)
    assert refusal(check(signer), headers, body) == "Invalid request signature."


def test_a_signature_by_another_key_is_refused(signer: Signer) -> None:
    body = ping(signer)
    other = Signer()
    assert refusal(check(signer), other.headers(body, timestamp=NOW), body) == (
        "Invalid request signature."
    )


def test_a_stale_signature_says_invalid_when_it_is_forged_as_well(signer: Signer) -> None:
    # Age is judged only once the signature holds: a forged timestamp learns nothing.
    body = ping(signer)
    headers = Signer().headers(body, timestamp=NOW - 3600)
    assert refusal(check(signer), headers, body) == "Invalid request signature."


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (SIGNATURE_HEADER, None),
        (TIMESTAMP_HEADER, None),
        (SIGNATURE_HEADER, ""),
        (SIGNATURE_HEADER, "zz" * 64),  # not hex
        (SIGNATURE_HEADER, "00" * 63),  # too short
        (SIGNATURE_HEADER, "00" * 65),  # too long
        (SIGNATURE_HEADER, " " + "00" * 64),
        (TIMESTAMP_HEADER, ""),
        (TIMESTAMP_HEADER, "-1"),
        (TIMESTAMP_HEADER, "1.5"),
        (TIMESTAMP_HEADER, "1" * 13),  # more digits than Unix seconds will have
        (TIMESTAMP_HEADER, "\u0661\u0662"),  # digits, but not ASCII ones
        (TIMESTAMP_HEADER, "2026-11-30T07:00:00Z"),
    ],
)
def test_missing_or_malformed_headers_are_refused_before_any_check(
    signer: Signer, header: str, value: str | None
) -> None:
    body = ping(signer)
    headers = signer.headers(body, timestamp=NOW)
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    assert refusal(check(signer), headers, body) == "Missing or malformed request signature."


def test_a_public_key_that_is_not_one_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        SignatureCheck("not hex", max_age=MAX_AGE)
