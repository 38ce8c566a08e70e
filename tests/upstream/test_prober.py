"""Probing keys: ``chatgpt-proxy check`` and the periodic re-admission of retired keys."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from chatgpt_proxy.settings import Settings
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.prober import Health, Prober, probe_all
from chatgpt_proxy.upstream.router import Router
from chatgpt_proxy.upstream.transport import AiohttpTransport
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import proxy_settings

ALIAS = re.compile(r"openai#\d+")


def _three_keys(fake: FakeOpenAI, tmp_path: Path) -> Settings:
    upstream = {"name": "openai", "base_url": fake.base_url, "keys": list(FAKE_KEYS[:3])}
    return proxy_settings(fake, tmp_path, upstreams=[upstream])


def test_check_names_the_key_it_probes(
    fake: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 12: a line about the 3rd key names openai#3, never another key's alias."""
    caplog.set_level(logging.DEBUG, logger="chatgpt_proxy")
    fake.script_key(FAKE_KEYS[2], "invalid")
    settings = _three_keys(fake, tmp_path)
    results = asyncio.run(probe_all(settings))
    assert results == [
        ("openai#1", Health.OK),
        ("openai#2", Health.OK),
        ("openai#3", Health.INVALID),
    ]
    lines = [r.getMessage() for r in caplog.records if ALIAS.search(r.getMessage())]
    assert lines, "the invalid key was never reported"
    for line in lines:
        assert set(ALIAS.findall(line)) == {"openai#3"}, line


def test_the_periodic_probe_names_the_key_it_probes(
    fake: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _three_keys(fake, tmp_path)
    router = Router.from_settings(settings.upstreams, settings.pool)
    pool = router.upstreams[0].pool
    third = pool.keys()[2]
    pool.report_retired(third, "invalid")
    fake.script_key(FAKE_KEYS[2], "invalid", times=1)
    caplog.set_level(logging.DEBUG, logger="chatgpt_proxy")
    caplog.clear()

    async def probe_twice() -> None:
        transport = AiohttpTransport()
        try:
            client = UpstreamClient(transport, settings.timeouts, settings.retries)
            prober = Prober(client, router, interval=60)
            await prober.run_once()  # refused: stays retired
            await prober.run_once()  # accepted: back in use
        finally:
            await transport.close()

    asyncio.run(probe_twice())
    assert pool.retired() == []
    lines = [r.getMessage() for r in caplog.records if ALIAS.search(r.getMessage())]
    assert any("recovered" in line or "readmitted" in line for line in lines)
    for line in lines:
        assert set(ALIAS.findall(line)) == {"openai#3"}, line
