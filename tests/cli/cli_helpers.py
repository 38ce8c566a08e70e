"""Running ``chatgpt-proxy`` as a user does: a subprocess with its own environment and cwd."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Variables the proxy reads: a test sets the ones it means, never inherits them.
_PROXY_VARIABLES = (
    "OPENAI_API_KEYS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CHATGPT_PROXY_ADMIN_KEY",
    "CHATGPT_PROXY_DATABASE_URL",
    "CHATGPT_PROXY_REDIS_URL",
    "CHATGPT_PROXY_CONFIG",
    "CHATGPT_PROXY_HOST",
    "CHATGPT_PROXY_PORT",
    "CHATGPT_PROXY_WORKERS",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _PROXY_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    args: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m chatgpt_proxy ARGS`` in ``cwd`` (where no config.yaml is, unless put there)."""
    return subprocess.run(
        [sys.executable, "-m", "chatgpt_proxy", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr
