"""Client key secrets: how they are made, hashed and recognised.

A client key is ``pk-`` followed by 43 URL-safe base64 characters (256 random bits). The proxy
stores only its hash and a short display prefix; the plaintext is shown once, at creation::

    secret = new_secret()           # "pk-AbC1234..."; give it to the client, then forget it
    stored = hash_secret(secret)    # what the database keeps
    shown = display_prefix(secret)  # "pk-AbC1234", safe to list
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "pk-"
DISPLAY_PREFIX_LENGTH = 10
_SECRET_BYTES = 32  # 256 bits: far beyond the 128-bit floor of the security invariants.

# Syntax only, so junk is rejected before it costs a cache lookup or a hash. The bounds leave room
# for keys a future version makes longer, while refusing megabyte-long "keys".
_KEY_SYNTAX = re.compile(r"pk-[A-Za-z0-9_-]{17,97}")


def new_secret() -> str:
    """A fresh client key from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up.

    A fast hash is right here, unlike for passwords: keys carry 256 random bits, so guessing the
    input is hopeless however cheap each guess is, and slow KDFs (bcrypt, argon2) exist only to
    stretch low-entropy secrets. A fast, unsalted hash also lets the hot path find a key by its
    hash in one dictionary lookup, with no per-request milliseconds spent on key stretching.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """The first characters of a key, enough for a human to tell keys apart in a listing."""
    return secret[:DISPLAY_PREFIX_LENGTH]


def looks_like_key(candidate: str) -> bool:
    """Whether ``candidate`` has the shape of a client key (not whether such a key exists)."""
    return _KEY_SYNTAX.fullmatch(candidate) is not None
