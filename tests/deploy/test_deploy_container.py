"""The image as an operator runs it (podman here, Docker alike): configured by environment
variables alone, published on a port, SQLite in a volume, driven with the official SDK.

One container serves the module, in this order: ready, healthy and unprivileged; chat and stream
through it to the fake upstream on the host; its data kept across a restart; and last, a stream
in flight finishing while ``podman stop`` waits (SIGTERM reached the proxy, not a shell).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import openai
import pytest
from deploy_harness import (
    ADMIN_KEY,
    DEPLOY_TIMEOUT_S,
    IMAGE,
    exit_code,
    first_key,
    needs_images,
    podman,
    ready_status,
    wait_ready,
)

from fake_openai import DEFAULT_REPLY, FAKE_KEYS, FakeOpenAI
from fake_openai.payloads import long_reply
from servers import free_port, wait_for

pytestmark = [needs_images, pytest.mark.timeout(DEPLOY_TIMEOUT_S)]

MODEL = "gpt-4o-mini"
STOP_TIMEOUT_S = 60  # podman's SIGKILL comes this long after SIGTERM: far past the drain
# The processes in the container and the user each runs as (PID, UID), from /proc.
PROCESSES = (
    "import os\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    uid = open(f'/proc/{pid}/status').read().split('Uid:')[1].split()[0]\n"
    "    print(pid, uid)\n"
)


@dataclass
class Served:
    name: str
    url: str
    key: str
    upstream: FakeOpenAI

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0)


@pytest.fixture(scope="module")
def served(upstream: tuple[FakeOpenAI, str]) -> Iterator[Served]:
    fake, base_url = upstream
    name = f"cgp-deploy-test-{secrets.token_hex(4)}"
    volume = f"{name}-data"
    port = free_port()
    podman(
        "run", "--detach", "--name", name,
        "--publish", f"127.0.0.1:{port}:3000",
        "--volume", f"{volume}:/data",
        "--env", f"OPENAI_API_KEYS={FAKE_KEYS[0]},{FAKE_KEYS[1]}",
        "--env", f"OPENAI_BASE_URL={base_url}",
        "--env", f"CHATGPT_PROXY_ADMIN_KEY={ADMIN_KEY}",
        "--env", "CHATGPT_PROXY_WORKERS=2",
        IMAGE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, name)
        yield Served(name, url, first_key(name), fake)
    finally:
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False)
        podman("volume", "rm", "--force", volume, check=False)


def test_it_is_ready_healthy_and_runs_as_no_root(served: Served) -> None:
    assert ready_status(served.url) == 200
    podman("healthcheck", "run", served.name)  # the image's HEALTHCHECK, as the engine runs it
    listed = podman("exec", served.name, "python", "-c", PROCESSES).split()
    uids = dict(zip(listed[::2], listed[1::2], strict=True))
    assert "0" not in uids.values(), uids
    assert len(uids) >= 3, uids  # `serve` and its two workers (CHATGPT_PROXY_WORKERS=2)


def test_the_sdk_chats_and_streams_through_it(served: Served) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"}
    ]
    with served.client() as client:
        answer = client.chat.completions.create(model=MODEL, messages=messages)
        assert answer.choices[0].message.content == DEFAULT_REPLY
        stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == DEFAULT_REPLY
    assert served.upstream.count("/v1/chat/completions") >= 2


def test_keys_survive_a_restart(served: Served) -> None:
    created = httpx2.post(
        served.url + "/admin/keys",
        json={"name": "kept"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert created.status_code in (200, 201), created.text
    podman("restart", "--time", str(STOP_TIMEOUT_S), served.name)
    wait_ready(served.url, served.name)
    for key in (created.json()["key"], served.key):
        with served.client(key) as client:
            assert client.models.list().data


def test_stop_lets_a_running_stream_finish(served: Served) -> None:
    words = 30
    prompt = f"[[fault:slow:0.2]] [[fault:long:{words}]]"
    with served.client() as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
        )
        chunks = iter(stream)
        text = next(chunks).choices[0].delta.content or ""
        stopping = threading.Thread(
            target=podman, args=("stop", "--time", str(STOP_TIMEOUT_S), served.name)
        )
        stopping.start()
        # SIGTERM reached the proxy: it stops taking requests while the stream goes on.
        wait_for(lambda: ready_status(served.url) != 200, 30, "the proxy never began to stop")
        text += "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    stopping.join(STOP_TIMEOUT_S + 30)
    assert text == long_reply(words)
    assert not stopping.is_alive()
    assert exit_code(served.name) == 0  # it ended on its own, not by podman's SIGKILL
