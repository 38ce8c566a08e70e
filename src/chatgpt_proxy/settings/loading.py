"""Reading the settings: a YAML file with ``${ENV}`` interpolation, or environment variables alone.

Errors name the field and, for a file, the line it stands on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from chatgpt_proxy.errors import ConfigError
from chatgpt_proxy.settings.sections import DEFAULT_BASE_URL, Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_settings(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (``./config.yaml`` if present and none given) or the environment."""
    env = os.environ if environ is None else environ
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    if path is None:
        return _from_environment(env)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    return parse_settings(text, env, source=str(file))


def parse_settings(text: str, environ: Mapping[str, str], *, source: str = "<config>") -> Settings:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if node is None:
        raise ConfigError(f"{source}: the file is empty")
    lines: dict[tuple[str | int, ...], int] = {}
    data = _node_value(node, (), lines, environ, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return _validate(data, source, lines)


def _node_value(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    environ: Mapping[str, str],
    source: str,
) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            result[key] = _node_value(value_node, (*path, key), lines, environ, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _node_value(item, (*path, index), lines, environ, source)
            for index, item in enumerate(node.value)
        ]
    assert isinstance(node, yaml.ScalarNode)
    if isinstance(node.value, str) and "${" in node.value:
        return _interpolate(node.value, environ, _where(source, path, lines[path]))
    # Resolve plain scalars as YAML would (numbers, booleans, null) without losing line numbers.
    return yaml.safe_load(yaml.serialize(node))


def _interpolate(value: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(replace, value)


def _where(source: str, path: tuple[str | int, ...], line: int | None) -> str:
    dotted = ".".join(f"[{part}]" if isinstance(part, int) else part for part in path)
    dotted = dotted.replace(".[", "[")
    at = f" (line {line})" if line else ""
    return f"{source}: {dotted or '<top>'}{at}"


def _validate(
    data: dict[str, Any], source: str, lines: Mapping[tuple[str | int, ...], int]
) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        paths = [tuple(error["loc"]) for error in exc.errors()]
        for error in exc.errors():
            path = tuple(error["loc"])
            if any(other[: len(path)] == path and other != path for other in paths):
                continue  # a container's complaint about its own bad item says nothing more
            line = next(
                (lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None
            )
            problems.append(f"{_where(source, path, line)}: {error['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from exc


def _from_environment(environ: Mapping[str, str]) -> Settings:
    keys = [key.strip() for key in environ.get("OPENAI_API_KEYS", "").split(",") if key.strip()]
    if not keys:
        raise ConfigError(
            "no configuration: write config.yaml (see config.example.yaml) or set "
            "OPENAI_API_KEYS (comma-separated upstream keys)"
        )
    data: dict[str, Any] = {
        "upstreams": [
            {
                "name": "openai",
                "base_url": environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL),
                "keys": keys,
            }
        ]
    }
    if admin_key := environ.get("CHATGPT_PROXY_ADMIN_KEY"):
        data["auth"] = {"admin_key": admin_key}
    if database_url := environ.get("CHATGPT_PROXY_DATABASE_URL"):
        data["database_url"] = database_url
    if redis_url := environ.get("CHATGPT_PROXY_REDIS_URL"):
        data["redis_url"] = redis_url
    return _validate(data, "environment", {})
