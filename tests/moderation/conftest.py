"""The moderation tests' fixture: a harness over the session's fake upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moderation_harness import Harness

from fake_openai import FakeOpenAI
from servers import BackgroundLoop


@pytest.fixture
def harness(background_loop: BackgroundLoop, fake: FakeOpenAI) -> Iterator[Harness]:
    h = Harness(background_loop, fake)
    yield h
    h.close()
