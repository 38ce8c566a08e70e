"""Running the images deploy/test.sh built, with podman, and the fake upstream they reach.

The tests here run only under ``make deploy-test`` (deploy/test.sh), which builds the images and
names them in ``CHATGPT_PROXY_DEPLOY_IMAGE`` and its siblings; ``make test`` skips them.
"""

from __future__ import annotations

import itertools
import os
import subprocess

import httpx2
import pytest

from servers import wait_for

IMAGE = os.environ.get("CHATGPT_PROXY_DEPLOY_IMAGE", "")
POSTGRES_IMAGE = os.environ.get("CHATGPT_PROXY_DEPLOY_POSTGRES_IMAGE", "")
REDIS_IMAGE = os.environ.get("CHATGPT_PROXY_DEPLOY_REDIS_IMAGE", "")
ADMIN_KEY = "deploy-test-admin-key-0123456789"
# Podman pulls, starts and stops things: slower than a process, never a hang.
PODMAN_TIMEOUT_S = 180.0
START_TIMEOUT_S = 90.0
# A test with its module's containers to start (pytest-timeout's 60 s are for processes).
DEPLOY_TIMEOUT_S = 900

needs_images = pytest.mark.skipif(
    not IMAGE, reason="run by `make deploy-test` (deploy/test.sh builds the images)"
)


def podman(*args: str, timeout: float = PODMAN_TIMEOUT_S, check: bool = True) -> str:
    """Run ``podman ARGS``; its stdout, or a failure that shows what podman said."""
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def exit_code(container: str) -> int:
    return int(podman("inspect", container, "--format", "{{.State.ExitCode}}").strip())


def ready_status(url: str) -> int | None:
    """The status of ``GET /readyz``, or None when nothing answers."""
    try:
        return httpx2.get(url + "/readyz", timeout=2).status_code
    except httpx2.HTTPError:
        return None


def wait_ready(url: str, container: str) -> None:
    def ready() -> bool:
        return ready_status(url) == 200

    try:
        wait_for(ready, START_TIMEOUT_S, f"{container} never became ready at {url}")
    except AssertionError:
        logs = podman("logs", "--tail", "40", container, check=False)
        pytest.fail(f"{container} never became ready at {url}:\n{logs}")


def first_key(container: str) -> str:
    """The client key ``serve`` printed once, on a first start with an empty database."""

    def printed() -> str | None:
        lines = podman("logs", container).splitlines()
        for line, following in itertools.pairwise(lines):
            if "created one named 'default'" in line:
                return following.strip()
        return None

    return wait_for(printed, START_TIMEOUT_S, f"{container} printed no first key")
