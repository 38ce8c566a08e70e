"""compose.yaml under podman-compose: the proxy alone on SQLite, and the `scale` profile's
PostgreSQL, Redis, one-off migration and two replicas sharing keys and revocations.

The images are deploy/test.sh's (tests/deploy/compose.test.yaml lays them over the official ones).
Podman 4.3 (Debian 12's) can neither wait for a container to be healthy nor start one whose
dependencies have dependencies of their own (podman-compose's ``--requires``), so the services
are started here in the order their ``depends_on`` gives, each step waiting for what Docker
Compose waits for: PostgreSQL and Redis healthy (their own health checks, run until they pass),
then the migration done (exit 0), then the proxies.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import pytest
from deploy_harness import (
    ADMIN_KEY,
    DEPLOY_TIMEOUT_S,
    IMAGE,
    PODMAN_TIMEOUT_S,
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    START_TIMEOUT_S,
    exit_code,
    first_key,
    needs_images,
    podman,
    wait_ready,
)

from fake_openai import DEFAULT_REPLY, FAKE_KEYS, FakeOpenAI
from servers import free_port, wait_for

pytestmark = [needs_images, pytest.mark.timeout(DEPLOY_TIMEOUT_S)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = (ROOT / "compose.yaml", Path(__file__).with_name("compose.test.yaml"))
PROXIES = ("proxy", "replica-1", "replica-2")
SERVICES = ("postgres", "redis", *PROXIES)
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass
class Stack:
    project: str
    urls: dict[str, str]  # proxy service -> its published URL

    def container(self, service: str) -> str:
        names = podman(
            "ps", "--all", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).split()  # fmt: skip
        assert len(names) == 1, f"{service}: {names}"
        return names[0]

    def client(self, service: str, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.urls[service] + "/v1", api_key=key, max_retries=0)

    def admin(self, service: str, method: str, path: str, **kwargs: object) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        url = self.urls[service] + path
        return httpx2.request(method, url, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def _healthy(container: str) -> bool:
    """Whether the container's own health check passes when run now."""
    done = subprocess.run(
        ["podman", "healthcheck", "run", container],
        capture_output=True,
        timeout=PODMAN_TIMEOUT_S,
        check=False,
    )
    return done.returncode == 0


def _state(container: str) -> str:
    return podman("inspect", container, "--format", "{{.State.Status}}").strip()


@pytest.fixture(scope="module")
def stack(upstream: tuple[FakeOpenAI, str]) -> Iterator[Stack]:
    _, base_url = upstream
    project = f"cgp-deploy-test-{secrets.token_hex(4)}"
    ports = {service: free_port() for service in PROXIES}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_PROXY"))},
        "OPENAI_API_KEYS": f"{FAKE_KEYS[0]},{FAKE_KEYS[1]}",
        "OPENAI_BASE_URL": base_url,
        "CHATGPT_PROXY_ADMIN_KEY": ADMIN_KEY,
        "PROXY_PORT": str(ports["proxy"]),
        "REPLICA_1_PORT": str(ports["replica-1"]),
        "REPLICA_2_PORT": str(ports["replica-2"]),
        "CHATGPT_PROXY_DEPLOY_IMAGE": IMAGE,
        "CHATGPT_PROXY_DEPLOY_POSTGRES_IMAGE": POSTGRES_IMAGE,
        "CHATGPT_PROXY_DEPLOY_REDIS_IMAGE": REDIS_IMAGE,
    }
    files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
    command = [str(Path(sys.executable).with_name("podman-compose")), "-p", project, *files]

    def compose(*args: str) -> None:
        done = subprocess.run(
            [*command, "--profile", "scale", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=PODMAN_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stderr[-3000:]}"

    stack = Stack(project, {s: f"http://127.0.0.1:{port}" for s, port in ports.items()})
    try:
        compose("up", "-d", "postgres", "redis")
        for service in ("postgres", "redis"):
            container = stack.container(service)
            wait_for(lambda c=container: _healthy(c), START_TIMEOUT_S, f"{service} never healthy")
        compose("up", "-d", "--no-deps", "migrate")
        migrate = stack.container("migrate")
        wait_for(lambda: _state(migrate) == "exited", START_TIMEOUT_S, "the migration never ended")
        compose("up", "-d", "--no-deps", *PROXIES)
        for service in PROXIES:
            wait_ready(stack.urls[service], stack.container(service))
        yield stack
    finally:
        # podman-compose removes the named volumes, not those the image's VOLUME gave a
        # container without one (the replicas' and the migration's unused /data).
        anonymous = [
            mount
            for container in podman(
                "ps", "--all", "--quiet", "--filter", f"label=io.podman.compose.project={project}"
            ).split()
            for mount in podman(
                "inspect", container, "--format", "{{range .Mounts}}{{.Name}} {{end}}"
            ).split()
            if "_" not in mount  # the named ones are PROJECT_NAME
        ]
        compose("down", "--volumes", "--timeout", "0")
        if anonymous:
            podman("volume", "rm", "--force", *anonymous, check=False)


def test_every_service_is_healthy_after_one_migration(stack: Stack) -> None:
    assert exit_code(stack.container("migrate")) == 0
    for service in SERVICES:
        assert _healthy(stack.container(service)), service


def test_the_proxy_alone_serves_on_sqlite(stack: Stack) -> None:
    with stack.client("proxy", first_key(stack.container("proxy"))) as client:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content == DEFAULT_REPLY


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(stack: Stack) -> None:
    created = stack.admin("replica-1", "POST", "/admin/keys", json={"name": "shared"})
    assert created.status_code in (200, 201), created.text
    key = created.json()["key"]
    with stack.client("replica-2", key) as client:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert answer.choices[0].message.content == DEFAULT_REPLY
        revoked = stack.admin("replica-1", "DELETE", f"/admin/keys/{created.json()['id']}")
        assert revoked.status_code in (200, 204), revoked.text

        def refused() -> bool:
            try:
                client.models.list()
            except openai.AuthenticationError:
                return True
            return False

        wait_for(refused, 10, "replica-2 still accepts a key revoked through replica-1")
