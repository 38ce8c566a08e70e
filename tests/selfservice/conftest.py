"""Fixtures of the self-service tests: the test key pair, the fake Discord API, a proxy with
the interactions endpoint configured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import Proxy
from selfservice.discord_helpers import FakeDiscord, Signer, discord_settings
from servers import BackgroundLoop


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def fake_discord(background_loop: BackgroundLoop) -> Iterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.url = background_loop.start_app(fake.app())
    yield fake
    background_loop.stop_app(fake.url)


@pytest.fixture
def make_discord_proxy(
    make_proxy: Callable[..., Proxy], signer: Signer, fake_discord: FakeDiscord
) -> Callable[..., Proxy]:
    """A proxy with the interactions endpoint; keyword arguments override ``discord``, and
    ``self_service={...}`` that section."""

    def make(self_service: dict[str, Any] | None = None, **discord: Any) -> Proxy:
        return make_proxy(
            discord=discord_settings(signer, fake_discord, **discord),
            self_service={"public_url": "https://proxy.example", **(self_service or {})},
        )

    return make


@pytest.fixture
def discord_proxy(make_discord_proxy: Callable[..., Proxy]) -> Proxy:
    return make_discord_proxy()
