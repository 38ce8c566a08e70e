"""Client keys, their usage and the owners of stored objects: SQLite by default, PostgreSQL at
scale, one schema, migrations."""

from chatgpt_proxy.keystore.engine import async_database_url
from chatgpt_proxy.keystore.store import KeyStore, migrate
from chatgpt_proxy.keystore.tokens import display_prefix, hash_secret, looks_like_key, new_secret
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy, UsageEvent, UsageRow

__all__ = [
    "ClientKey",
    "KeyPolicy",
    "KeyStore",
    "UsageEvent",
    "UsageRow",
    "async_database_url",
    "display_prefix",
    "hash_secret",
    "looks_like_key",
    "migrate",
    "new_secret",
]
