"""The fake upstream the containers reach: one for the session, on the host."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from fake_openai import FakeOpenAI
from servers import BackgroundLoop

# How a container reaches the host with podman (its bridge's gateway, in /etc/hosts).
HOST_FROM_CONTAINER = "host.containers.internal"


@pytest.fixture(scope="session")
def upstream(background_loop: BackgroundLoop) -> Iterator[tuple[FakeOpenAI, str]]:
    """The fake upstream on every address (a container comes in through its bridge, not the
    loopback) and its base URL as containers see it."""
    fake = FakeOpenAI()
    fake.url = background_loop.start_app(fake.app, host="0.0.0.0")
    yield fake, f"http://{HOST_FROM_CONTAINER}:{urlsplit(fake.url).port}/v1"
    background_loop.stop_app(fake.url)
