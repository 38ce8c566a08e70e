from __future__ import annotations

import base64
import hashlib

from chatgpt_proxy.keystore.tokens import display_prefix, hash_secret, looks_like_key, new_secret


def test_secret_shape_and_entropy() -> None:
    secret = new_secret()
    assert secret.startswith("pk-")
    raw = base64.urlsafe_b64decode(secret[3:] + "=")
    assert len(raw) * 8 >= 256  # the design's floor is 128 bits
    assert looks_like_key(secret)


def test_secrets_are_unique() -> None:
    secrets_ = {new_secret() for _ in range(2000)}
    assert len(secrets_) == 2000
    assert len({display_prefix(s) for s in secrets_}) > 1990  # prefixes tell keys apart


def test_hash_is_sha256_hex_and_not_the_secret() -> None:
    secret = new_secret()
    digest = hash_secret(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert len(digest) == 64
    assert secret not in digest
    assert hash_secret(secret) == digest  # deterministic: the lookup key
    assert hash_secret(new_secret()) != digest


def test_display_prefix_is_short() -> None:
    assert display_prefix("pk-AbC1234567890xyz") == "pk-AbC1234"


def test_looks_like_key_rejects_junk() -> None:
    good = "pk-" + "a" * 43
    assert looks_like_key(good)
    for junk in [
        "",
        "pk-",
        "sk-" + "a" * 43,
        "PK-" + "a" * 43,
        "pk-" + "a" * 16,  # 19 chars: too short
        "pk-" + "a" * 98,  # 101 chars: too long
        "pk-" + "a" * 42 + "=",
        "pk-" + "a" * 42 + " ",
        good + "\n",
        "pk-' OR 1=1 --aaaaaaaaaaaa",
        "pk-" + "é" * 43,
    ]:
        assert not looks_like_key(junk), junk
    assert looks_like_key("pk-" + "a" * 17)  # 20 chars: the shortest accepted
    assert looks_like_key("pk-" + "-_" * 48 + "a")  # 100 chars: the longest accepted
