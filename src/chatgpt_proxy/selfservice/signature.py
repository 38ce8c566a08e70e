"""Ed25519 signatures of Discord interactions, checked before anything in the body is read.

Discord signs ``X-Signature-Timestamp`` + the raw body with the application's key and sends
the signature in ``X-Signature-Ed25519``; the public half is in the Developer Portal::

    check = SignatureCheck("a1b2...", max_age=300.0)
    check.verify(request.headers, body)   # InvalidSignature (401) unless signed, and fresh
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chatgpt_proxy.errors import InvalidSignature

SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds, as Discord sends them


class SignatureCheck:
    """Checks that a request was signed by the application's key, and signed recently."""

    def __init__(
        self, public_key_hex: str, *, max_age: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = VerifyKey(bytes.fromhex(public_key_hex))
        self._max_age = max_age
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        signature = headers.get(SIGNATURE_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        # Shapes first: the signature check then sees only well-formed input.
        if not _SIGNATURE.fullmatch(signature) or not _TIMESTAMP.fullmatch(timestamp):
            raise InvalidSignature("Missing or malformed request signature.")
        try:
            self._key.verify(timestamp.encode() + body, bytes.fromhex(signature))
        except BadSignatureError as exc:
            raise InvalidSignature("Invalid request signature.") from exc
        # Checked after the signature, so the timestamp is Discord's, not an attacker's.
        if abs(self._clock() - int(timestamp)) > self._max_age:
            raise InvalidSignature("The request signature is too old.")
