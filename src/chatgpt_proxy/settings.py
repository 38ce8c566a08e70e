"""The one place configuration is read: a YAML file, ``${ENV}`` interpolation, or env vars alone.

Every setting is a typed field with a default and a description; those descriptions are the
documentation, and ``config.example.yaml`` is generated from them (``example_yaml()``), so the
two cannot drift apart::

    settings = load_settings("config.yaml")      # validated once, immutable
    settings.server.port                         # 3000

Errors name the field and, for a file, the line it stands on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from chatgpt_proxy.errors import ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(3000, ge=0, le=65535, description="port to bind")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="largest request body accepted, in bytes"
    )
    grace_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    workers: int = Field(1, ge=1, le=64, description="processes serving the same port")
    max_upstream_connections: int = Field(
        1000, ge=1, description="open connections to all upstreams together, at most"
    )
    access_log: bool = Field(True, description="log one line per request")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")


class UpstreamSettings(_Section):
    name: str = Field(
        description="name of the upstream; its keys are known as NAME#1, NAME#2, ...",
        pattern=r"^[A-Za-z0-9_.-]{1,40}$",
    )
    base_url: str = Field(DEFAULT_BASE_URL, description="the upstream's API root, with /v1")
    keys: tuple[SecretStr, ...] = Field(min_length=1, description="upstream API keys")
    models: tuple[str, ...] = Field(("*",), description="glob patterns of the models it serves")
    strategy: Literal["round_robin", "random", "least_busy"] = Field(
        "round_robin", description="how a key is chosen for each request"
    )
    organization: str | None = Field(None, description="OpenAI-Organization sent upstream")
    project: str | None = Field(None, description="OpenAI-Project sent upstream")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
        return value.rstrip("/")

    @field_validator("keys")
    @classmethod
    def _no_blank_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(not key.get_secret_value().strip() for key in value):
            raise ValueError("an upstream key is empty")
        return value


class TimeoutSettings(_Section):
    connect: float = Field(10.0, gt=0, description="seconds to open a connection upstream")
    first_byte: float = Field(
        300.0,
        gt=0,
        description="seconds to wait for the upstream's answer to begin (a non-streamed answer "
        "comes whole, so this is its generation time)",
    )
    stream_idle: float = Field(
        120.0, gt=0, description="seconds a stream may stay silent once it has begun"
    )
    request: float = Field(
        600.0, gt=0, description="seconds to get an answer, every retry on another key included"
    )


class RetrySettings(_Section):
    max_attempts: int = Field(3, ge=1, le=10, description="attempts per request, on different keys")
    backoff_base: float = Field(0.05, ge=0, description="first backoff before a retry, seconds")
    backoff_max: float = Field(2.0, ge=0, description="longest backoff before a retry, seconds")
    budget_ratio: float = Field(
        0.2, ge=0, description="retries allowed as a share of recent requests (retry storms)"
    )
    budget_min_per_second: float = Field(
        10.0, ge=0, description="retries always allowed per second, whatever the ratio"
    )


class PoolSettings(_Section):
    default_cooldown: float = Field(
        20.0, gt=0, description="seconds a key rests after a 429 that gave no reset time"
    )
    eject_after: int = Field(3, ge=1, description="consecutive failures before a key is ejected")
    eject_base: float = Field(1.0, gt=0, description="first ejection, seconds; doubles each time")
    eject_max: float = Field(300.0, gt=0, description="longest ejection, seconds")
    probe_interval: float = Field(
        60.0, gt=0, description="seconds between probes of retired keys, to re-admit them"
    )


class RuleSettings(_Section):
    name: str = Field(
        description="name of the rule: the reason a blocked client is told",
        pattern=r"^[A-Za-z0-9_.:/ -]{1,60}$",
    )
    # default= by keyword: rules are built in code too, and mypy reads only that spelling.
    words: tuple[str, ...] = Field(
        default=(), description="words or phrases that block, as whole words, case-insensitive"
    )
    patterns: tuple[str, ...] = Field(
        default=(), description="regular expressions (Python syntax) that block, case-insensitive"
    )

    @field_validator("words")
    @classmethod
    def _no_blank_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not word.strip() for word in value):
            raise ValueError("a word is empty")
        return value

    @model_validator(mode="after")
    def _compiles(self) -> RuleSettings:
        if not self.words and not self.patterns:
            raise ValueError(f"rule {self.name!r} has neither words nor patterns")
        for pattern in self.patterns:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad pattern {pattern!r}: {exc}") from exc
        return self


_BUILTIN_ENGINES = ("rules", "openai")
_ENGINE_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ModerationSettings(_Section):
    enabled: bool = Field(True, description="check inputs before forwarding them")
    engines: tuple[str, ...] = Field(
        ("rules", "openai"),
        description='engines in the order they run, the first block wins: "rules", "openai", '
        'or "package.module:factory" for a third-party engine',
    )
    upstream: str | None = Field(
        None,
        description="upstream whose keys serve moderation calls; null: the upstream that "
        "serves the moderation model",
    )
    model: str = Field("omni-moderation-latest", description="model of the moderation endpoint")
    timeout: float = Field(
        10.0, gt=0, description="seconds one moderation check may take, retries included"
    )
    on_error: Literal["block", "allow"] = Field(
        "block",
        description="when the moderation endpoint fails: block (503 moderation_unavailable) "
        "or allow (logged)",
    )
    retry_after: float = Field(
        5.0, gt=0, description="retry-after sent with moderation_unavailable, seconds"
    )
    categories: tuple[str, ...] | None = Field(
        None, description="categories that block; null: every category the endpoint flags"
    )
    thresholds: dict[str, float] = Field(
        {},
        description='category -> score at or above which it blocks even if not flagged; "*" '
        "for every category",
    )
    strict_thresholds: dict[str, float] = Field(
        {"*": 0.5},
        description='thresholds added for keys whose policy is moderation: strict; "*" for '
        "every category (the lower of the two thresholds applies)",
    )
    rules: tuple[RuleSettings, ...] = Field(
        (), description="local rules: each a name with words and/or regular expressions"
    )
    check_embeddings: bool = Field(False, description="also check the input of embeddings")
    check_moderations: bool = Field(
        False, description="also check the input of moderations requests themselves"
    )
    check_output: bool = Field(
        False, description="also check non-streamed answers; a flagged answer becomes a 400"
    )
    log_inputs: bool = Field(
        False, description="keep the flagged input in the block records (privacy: off)"
    )
    cache_size: int = Field(100_000, ge=0, description="verdicts cached in memory, at most")
    cache_ttl: float = Field(86400.0, gt=0, description="seconds a cached verdict is trusted")
    recent_blocks: int = Field(1000, ge=0, description="blocks kept for GET /admin/moderation")

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in _BUILTIN_ENGINES and not _ENGINE_FACTORY.match(name):
                raise ValueError(
                    f"unknown engine {name!r}: use rules, openai or package.module:factory"
                )
        if len(value) != len(set(value)):
            raise ValueError("an engine is listed twice")
        return value

    @field_validator("thresholds", "strict_thresholds")
    @classmethod
    def _scores(cls, value: dict[str, float]) -> dict[str, float]:
        for category, score in value.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"threshold of {category!r} must be between 0 and 1")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, value: tuple[RuleSettings, ...]) -> tuple[RuleSettings, ...]:
        names = [rule.name for rule in value]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        return value


class LimitSettings(_Section):
    default_rpm: int | None = Field(None, ge=1, description="requests per minute of a new key")
    default_tpm: int | None = Field(None, ge=1, description="tokens per minute of a new key")
    default_max_concurrency: int | None = Field(
        None, ge=1, description="requests a new key may have in flight at once"
    )
    default_daily_token_budget: int | None = Field(
        None, ge=0, description="tokens a new key may use per UTC day"
    )
    default_total_token_budget: int | None = Field(
        None, ge=0, description="tokens a new key may use in total"
    )
    default_daily_cost_budget: float | None = Field(
        None, ge=0, description="USD a new key may spend per UTC day (priced by `pricing`)"
    )
    default_total_cost_budget: float | None = Field(
        None, ge=0, description="USD a new key may spend in total (priced by `pricing`)"
    )
    default_models: tuple[str, ...] = Field(
        (), description="model globs a new key may use; empty: every model"
    )
    redis_prefix: str = Field(
        "cgp:",
        pattern=r"^[A-Za-z0-9_.:-]{0,40}$",
        description="prefix of every Redis key and channel (to share one Redis among proxies)",
    )
    redis_timeout: float = Field(
        0.5,
        gt=0,
        description="seconds a Redis call may take; past it, or on any Redis error, each "
        "process enforces limits on its own until Redis answers again",
    )
    redis_recheck_seconds: float = Field(
        1.0, gt=0, description="while Redis is unreachable, how often it is tried again"
    )
    concurrency_lease_seconds: float = Field(
        900.0,
        gt=0,
        description="how long a concurrency slot held by a process that died stays taken",
    )


class PriceSettings(_Section):
    prompt: float = Field(ge=0, description="USD per 1M prompt (input) tokens")
    completion: float = Field(ge=0, description="USD per 1M completion (output) tokens")


class AuthSettings(_Section):
    admin_key: SecretStr | None = Field(
        None, description="bearer token of the admin API; the admin API is off without it"
    )
    cache_refresh_seconds: float = Field(
        1.0, gt=0, description="how often client keys are reloaded from the database"
    )


class Settings(_Section):
    server: ServerSettings = Field(
        default_factory=ServerSettings,  # type: ignore[arg-type]
        description="the listening socket, request bodies, logging and worker processes",
    )
    upstreams: tuple[UpstreamSettings, ...] = Field(
        min_length=1, description="a request goes to the first upstream whose models match"
    )
    timeouts: TimeoutSettings = Field(
        default_factory=TimeoutSettings,  # type: ignore[arg-type]
        description="time limits of upstream calls, in seconds",
    )
    retries: RetrySettings = Field(
        default_factory=RetrySettings,  # type: ignore[arg-type]
        description="retries of a failed upstream call, on another key",
    )
    pool: PoolSettings = Field(
        default_factory=PoolSettings,  # type: ignore[arg-type]
        description="how upstream keys rest after a 429 and are ejected after failures",
    )
    moderation: ModerationSettings = Field(
        default_factory=ModerationSettings,  # type: ignore[arg-type]
        description="checking inputs (and optionally answers) before forwarding them",
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings,  # type: ignore[arg-type]
        description="the admin API's key and the client key cache",
    )
    database_url: str = Field(
        "sqlite:///./chatgpt-proxy.db", description="sqlite:///FILE or postgresql://..."
    )
    redis_url: str | None = Field(
        None,
        description="redis://... to share limits and state across replicas; without it, "
        "limits, cooldowns and revocations are per process (each of `server.workers` and "
        "each replica counts on its own)",
    )
    limits: LimitSettings = Field(
        default_factory=LimitSettings,  # type: ignore[arg-type]
        description="limits of new client keys, and how limits are shared through Redis",
    )
    pricing: dict[str, PriceSettings] = Field(
        {},
        description="model glob -> {prompt, completion} USD per 1M tokens, first match wins; "
        "usage of a model without a price costs 0, so cost budgets ignore it",
    )

    @field_validator("upstreams")
    @classmethod
    def _unique_names(cls, value: tuple[UpstreamSettings, ...]) -> tuple[UpstreamSettings, ...]:
        names = [upstream.name for upstream in value]
        if len(names) != len(set(names)):
            raise ValueError("upstream names must be unique")
        return value


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


def example_yaml() -> str:
    """The documented example configuration, generated from the fields' descriptions."""
    out = [
        "# chatgpt-proxy configuration. Every value may be ${ENV_VAR}.",
        "# Generated from src/chatgpt_proxy/settings.py: edit the descriptions there.",
        "",
    ]
    _describe(Settings, out, indent=0)
    return "\n".join(out) + "\n"


_EXAMPLE_VALUES: dict[str, Any] = {
    "upstreams": [
        {
            "name": "openai",
            "base_url": DEFAULT_BASE_URL,
            "keys": ["${OPENAI_API_KEY}"],
            "models": ["*"],
            "strategy": "round_robin",
        }
    ],
    "admin_key": "${CHATGPT_PROXY_ADMIN_KEY}",
}


def _describe(model: type[BaseModel], out: list[str], indent: int) -> None:
    pad = " " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append(f"{pad}# {field.description}")
            out.append(f"{pad}{name}:")
            _describe(annotation, out, indent + 2)
            continue
        if name == "upstreams":
            out.append(f"{pad}# {field.description}")
            out.append(f"{pad}upstreams:")
            for line in _upstream_example():
                out.append(f"{pad}  {line}")
            continue
        value = _EXAMPLE_VALUES.get(name, field.default)
        if isinstance(value, SecretStr) or value is None:
            value = _EXAMPLE_VALUES.get(name)
        rendered = yaml.safe_dump(value, default_flow_style=True).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip() or "null"
        out.append(f"{pad}{name}: {rendered}  # {field.description}")


def _upstream_example() -> list[str]:
    example = _EXAMPLE_VALUES["upstreams"][0]
    lines = []
    for index, (name, field) in enumerate(UpstreamSettings.model_fields.items()):
        value = example.get(name, field.default)
        rendered = yaml.safe_dump(value, default_flow_style=True).strip()
        rendered = rendered.removesuffix("...").strip() or "null"
        lead = "- " if index == 0 else "  "
        lines.append(f"{lead}{name}: {rendered}  # {field.description}")
    return lines
