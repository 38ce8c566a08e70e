"""A moderation harness: moderators built from settings, calling the real fake upstream."""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from chatgpt_proxy.keystore import ClientKey, KeyPolicy
from chatgpt_proxy.moderation import Moderator, build_moderator
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.router import Router
from chatgpt_proxy.upstream.transport import AiohttpTransport
from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import BackgroundLoop

T = TypeVar("T")


def client_key(moderation: str | None = None, key_id: str = "key_test") -> ClientKey:
    now = datetime.now(UTC)
    return ClientKey(
        id=key_id,
        name="test",
        prefix="pk-test",
        key_hash="0" * 64,
        created_at=now,
        updated_at=now,
        expires_at=None,
        revoked_at=None,
        policy=KeyPolicy(moderation=moderation),
    )


class Harness:
    """Builds moderators against the fake upstream and runs their coroutines on its loop."""

    def __init__(self, loop: BackgroundLoop, fake: FakeOpenAI) -> None:
        self.loop = loop
        self.fake = fake
        self.session = loop.run(self._transport())
        self._moderators: list[Moderator] = []

    @staticmethod
    async def _transport() -> AiohttpTransport:
        return AiohttpTransport()

    def settings(
        self, upstreams: list[dict[str, Any]] | None = None, **moderation: Any
    ) -> Settings:
        upstreams = upstreams or [
            {"name": "openai", "base_url": self.fake.base_url, "keys": list(FAKE_KEYS[:2])}
        ]
        return Settings.model_validate(
            {
                "upstreams": upstreams,
                "retries": {"max_attempts": 2, "backoff_base": 0.0, "backoff_max": 0.0},
                "moderation": moderation,
            }
        )

    def moderator(self, settings: Settings | None = None, **moderation: Any) -> Moderator:
        settings = settings or self.settings(**moderation)
        router = Router.from_settings(settings.upstreams, settings.pool)
        client = UpstreamClient(self.session, settings.timeouts, settings.retries)

        async def build() -> Moderator:
            return build_moderator(settings, client, router)

        moderator = self.loop.run(build())
        self._moderators.append(moderator)
        return moderator

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    def check(
        self,
        moderator: Moderator,
        endpoint: str,
        document: dict[str, Any],
        key: ClientKey | None = None,
    ) -> None:
        self.run(moderator.check(endpoint, document, key or client_key()))

    def close(self) -> None:
        for moderator in self._moderators:
            self.run(moderator.close())
        self.run(self.session.close())
