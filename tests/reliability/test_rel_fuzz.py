"""Fuzzing the running proxy: generated bodies for every route, odd headers, paths, methods
and multipart bodies, sent as raw bytes over sockets (strategies in ``tests/fuzzing.py``).

The property: every answer is OpenAI-shaped (a 2xx, or a non-2xx JSON error envelope),
never a 500, never a redirect, never a connection closed without an answer, no upstream key
in it; and the proxy still serves ``/healthz`` afterwards. A few hundred derandomized
examples run here; ``bench/fuzz.py`` runs tens of thousands and prints counts.

Requests of the input classes the fuzzer once found answered wrongly are kept as fixed
examples (``fuzzing.REGRESSIONS``), one test each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fake_openai import FAKE_KEYS, FakeOpenAI
from fuzzing import (
    KINDS,
    REGRESSIONS,
    Credentials,
    Probe,
    probes,
    send,
    unthrottled,
)
from harness import ADMIN_KEY, Proxy, Recorder, proxy_settings, start_proxy
from servers import BackgroundLoop, is_serving

EXAMPLES_PER_KIND = 100


@pytest.fixture(scope="module")
def fuzzed(
    background_loop: BackgroundLoop,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
    recorder: Recorder,
) -> Iterator[Proxy]:
    """One proxy for the module (hypothesis calls the property many times in one test)."""
    fake_openai.reset()
    # Moderated, inputs and outputs: odd bodies go through the policing code too.
    moderation = {"enabled": True, "check_output": True}
    tmp_path = Path(tmp_path_factory.mktemp("fuzz"))
    settings_ = proxy_settings(fake_openai, tmp_path, moderation=moderation, **unthrottled())
    proxy = start_proxy(background_loop, settings_, recorder)
    yield proxy
    proxy.close()


def _check(proxy: Proxy, probe: Probe) -> None:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    outcome = send(host, int(port), probe)
    proxy.recorder.add_bytes(outcome.body)  # scanned for upstream keys at the session's end
    assert outcome.ok, f"{outcome.label}: {outcome.detail!r}\n{probe.describe()}"
    for key in FAKE_KEYS:
        assert key.encode() not in outcome.body, probe.describe()


@pytest.mark.parametrize("kind", KINDS)
def test_every_answer_is_openai_shaped(fuzzed: Proxy, kind: str) -> None:
    """Generated requests of one input class (bodies for every route, odd headers, paths,
    methods, multipart bodies) all get an OpenAI-shaped answer, and the proxy still serves."""
    credentials = Credentials(client_key=fuzzed.key, admin_key=ADMIN_KEY)

    @settings(
        max_examples=EXAMPLES_PER_KIND,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(probe=probes(credentials, kind))
    def answer_is_openai_shaped(probe: Probe) -> None:
        _check(fuzzed, probe)

    answer_is_openai_shaped()
    assert is_serving(fuzzed.url), f"the proxy stopped serving after the {kind} examples"


@pytest.mark.parametrize("name", REGRESSIONS)
def test_inputs_once_answered_wrongly(fuzzed: Proxy, name: str) -> None:
    """One request of each class the fuzzer found answered wrongly (see REGRESSIONS)."""
    authorization = (b"Authorization", b"Bearer " + fuzzed.key.encode())
    probe = REGRESSIONS[name]
    _check(fuzzed, replace(probe, headers=(*probe.headers, authorization)))
    assert is_serving(fuzzed.url)
