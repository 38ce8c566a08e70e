"""``chatgpt-proxy check``, configuration errors, env-only mode, and ``serve`` end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from cli_helpers import clean_env, output, run_cli

from fake_openai import FAKE_KEYS, FakeOpenAI
from servers import free_port, wait_until_serving

UNKNOWN_KEY = "sk-unknown-to-the-fake-000000000000000000000009zz"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _assert_no_secret(text: str) -> None:
    for secret in (*FAKE_KEYS, UNKNOWN_KEY):
        assert secret not in text
        assert secret[-12:] not in text


def test_check_reports_each_key_by_alias(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.script_key(FAKE_KEYS[1], "invalid")
    config = _write(
        tmp_path / "config.yaml",
        "upstreams:\n"
        "  - name: openai\n"
        f"    base_url: {fake.base_url}\n"
        f'    keys: ["{FAKE_KEYS[0]}", "${{SECOND_KEY}}", "{UNKNOWN_KEY}"]\n'
        f"database_url: sqlite:///{tmp_path / 'check.db'}\n",
    )
    result = run_cli(
        ["check", "--config", str(config)], cwd=tmp_path, env={"SECOND_KEY": FAKE_KEYS[1]}
    )
    assert result.returncode != 0, output(result)
    assert "Traceback" not in result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if "#" in line}
    assert set(lines) == {"openai#1", "openai#2", "openai#3"}, result.stdout
    assert lines["openai#1"].split()[-1] == "ok"
    assert "invalid" in lines["openai#2"]
    assert "invalid" in lines["openai#3"]
    _assert_no_secret(output(result))
    probed = {request.key for request in fake.requests}
    assert probed == {FAKE_KEYS[0], FAKE_KEYS[1], UNKNOWN_KEY}


def test_check_passes_when_every_key_is_good(tmp_path: Path, fake: FakeOpenAI) -> None:
    config = _write(
        tmp_path / "good.yaml",
        "upstreams:\n"
        "  - name: main\n"
        f"    base_url: {fake.base_url}\n"
        f"    keys: [{FAKE_KEYS[0]}]\n"
        "  - name: backup\n"
        f"    base_url: {fake.base_url}\n"
        f"    keys: [{FAKE_KEYS[2]}]\n",
    )
    result = run_cli(["check", "--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert "main#1" in result.stdout and "backup#1" in result.stdout
    assert result.stdout.count(" ok") >= 2
    _assert_no_secret(output(result))


def test_check_reports_an_unreachable_upstream(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {"OPENAI_API_KEYS": FAKE_KEYS[0], "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    result = run_cli(["check"], cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "openai#1" in result.stdout and "unreachable" in result.stdout
    assert "Traceback" not in result.stderr
    _assert_no_secret(output(result))


def test_env_only_mode(tmp_path: Path, fake: FakeOpenAI) -> None:
    env = {
        "OPENAI_API_KEYS": f"{FAKE_KEYS[0]}, {FAKE_KEYS[2]}",
        "OPENAI_BASE_URL": fake.base_url,
        "CHATGPT_PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}",
    }
    result = run_cli(["check"], cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert "openai#1" in result.stdout and "openai#2" in result.stdout
    assert {request.key for request in fake.requests} == {FAKE_KEYS[0], FAKE_KEYS[2]}
    _assert_no_secret(output(result))
    result = run_cli(["keys", "create", "--name", "env"], cwd=tmp_path, env=env)
    assert result.returncode == 0, output(result)
    assert (tmp_path / "env.db").exists()


def test_no_configuration_at_all_is_explained(tmp_path: Path) -> None:
    result = run_cli(["check"], cwd=tmp_path)
    assert result.returncode != 0
    assert "OPENAI_API_KEYS" in result.stderr and "config.yaml" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams:\n  - name: openai\n    keys: [sk-a]\nserver:\n  port: lots\n",
            ["server.port", "line 5"],
        ),
        (
            "upstreams:\n  - name: openai\n    keys: [sk-a]\n    strategy: fastest\n",
            ["upstreams[0].strategy", "line 4"],
        ),
        (
            "upstreams:\n  - name: openai\n    keys: [sk-a]\n    base_url: ftp://x\n",
            ["upstreams[0].base_url", "line 4"],
        ),
        (
            "upstreams:\n  - name: openai\n    keys: [sk-a]\nmoderation:\n  enabeld: true\n",
            ["moderation.enabeld", "line 5"],
        ),
        ("server:\n  port: 3000\n", ["upstreams"]),
        ("upstreams: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_the_field_and_line(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    config = _write(tmp_path / "bad.yaml", text)
    result = run_cli(["check", "--config", str(config)], cwd=tmp_path)
    assert result.returncode != 0, output(result)
    assert "Traceback" not in result.stderr, result.stderr
    for part in expected:
        assert part in result.stderr, result.stderr
    assert "sk-a" not in output(result)


@pytest.mark.parametrize("command", [["keys", "list"], ["serve"], ["migrate"]])
def test_every_command_reports_a_bad_config(tmp_path: Path, command: list[str]) -> None:
    config = _write(
        tmp_path / "bad.yaml",
        "upstreams:\n  - name: openai\n    keys: [sk-a]\nserver:\n  port: lots\n",
    )
    result = run_cli([*command, "--config", str(config)], cwd=tmp_path)
    assert result.returncode != 0, output(result)
    assert "Traceback" not in result.stderr, result.stderr
    assert "server.port" in result.stderr and "line 5" in result.stderr


def test_unset_env_variable_is_named(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "env.yaml",
        "upstreams:\n  - name: openai\n    keys: ['${MISSING_UPSTREAM_KEY}']\n",
    )
    result = run_cli(["check", "--config", str(config)], cwd=tmp_path)
    assert result.returncode != 0
    assert "MISSING_UPSTREAM_KEY" in result.stderr
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = run_cli(["check", "--config", str(tmp_path / "nope.yaml")], cwd=tmp_path)
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_end_to_end(tmp_path: Path, fake: FakeOpenAI) -> None:
    port = free_port()
    env = clean_env(
        {
            "OPENAI_API_KEYS": f"{FAKE_KEYS[0]},{FAKE_KEYS[1]}",
            "OPENAI_BASE_URL": fake.base_url,
            "CHATGPT_PROXY_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
            "CHATGPT_PROXY_ADMIN_KEY": "serve-admin-key-0123456789",
            # The port as the container image sets it: an option's environment variable.
            "CHATGPT_PROXY_PORT": str(port),
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "chatgpt_proxy", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "default" in first, first
        key = process.stdout.readline().strip()
        assert key.startswith("pk-")
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process)
        with httpx2.Client(base_url=url, timeout=10) as http:
            answer = http.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 200, answer.text
            bad = http.post(
                "/v1/chat/completions/",
                headers={"Authorization": f"Bearer {key}"},
                json={},
            )
            assert bad.status_code == 404 and bad.json()["error"]["code"]
            raw = http.post(
                "/v1/chat/completions",
                content=b"{bad",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            assert raw.status_code == 400
            metrics = http.get("/metrics").text
            upstreams = http.get(
                "/admin/upstreams",
                headers={"Authorization": "Bearer serve-admin-key-0123456789"},
            )
            assert upstreams.status_code == 200
            _assert_no_secret(answer.text + metrics + upstreams.text + str(answer.headers))
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        _assert_no_secret(stdout + stderr)
        assert "/v1/chat/completions" in stderr  # the access log
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
