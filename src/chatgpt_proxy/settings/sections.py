"""The settings themselves: the root ``Settings`` and the sections of serving and upstreams.

With the sections in ``moderation``, ``console`` and ``community``, this is the one table of
configuration: validation, the documentation and ``config.example.yaml`` all come from it.
Reading it from files and the environment is ``loading``'s job.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from chatgpt_proxy.settings.base import _Section
from chatgpt_proxy.settings.community import DiscordSettings, SelfServiceSettings
from chatgpt_proxy.settings.console import ConsoleSettings
from chatgpt_proxy.settings.moderation import ModerationSettings

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
# One path segment, as Azure names deployments: nothing that could climb out of the path.
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(3000, ge=0, le=65535, description="port to bind")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="largest request body accepted, in bytes"
    )
    max_upload_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest multipart upload accepted (image edits, audio), in bytes",
    )
    max_file_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="largest file upload accepted (POST /v1/files), in bytes",
    )
    max_upload_part_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest part of an Upload accepted (POST /v1/uploads/{id}/parts), in bytes",
    )
    upload_memory_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="bytes of an upload held in memory while it is policed; the rest is spooled"
        " to a temporary file",
    )
    upload_spool_dir: str | None = Field(
        None, description="directory of the spooled uploads (default: the system's temp dir)"
    )
    grace_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    workers: int = Field(1, ge=1, le=64, description="processes serving the same port")
    usage_flush_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="seconds between writes of the usage summed in memory (a clean shutdown "
        "writes what is left)",
    )
    max_upstream_connections: int | None = Field(
        None,
        ge=0,
        description="open connections to all upstreams together for streams and other answers "
        "that may last (0: no cap; default: max_requests_in_flight, so that an admitted "
        "request never waits for one)",
    )
    max_short_upstream_connections: int = Field(
        500,
        ge=1,
        description="open connections to all upstreams together for short calls (moderation "
        "checks, model lists, embeddings, key probes), kept apart from those of streams so "
        "that open streams never make a new request wait for its moderation",
    )
    upstream_http: Literal["1.1", "2"] = Field(
        "1.1",
        description='"2": requests as HTTP/2 streams, up to 100 per connection (h2c to http://; '
        "pip install 'chatgpt-proxy[http2]')",
    )
    access_log: bool = Field(
        True, description="log one line per request (written in batches, at most 0.1 s late)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text lines, or one JSON object per line (time, level, logger, message; "
        "access lines also request_id, key_id, endpoint, model, upstream, status, latency_ms "
        "and, once metered, prompt_tokens, completion_tokens, total_tokens and cost)",
    )
    root_path: str = Field(
        "",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="path prefix a reverse proxy serves this proxy under (e.g. /llm): the "
        "console's links and cookie carry it",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a client may take to send a request's line and headers"
    )
    body_idle_timeout: float = Field(
        30.0, gt=0, description="seconds a request body may stay silent before a 408"
    )
    send_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds a client may leave its answer unread (a stream it stopped "
        "reading) before it is dropped, and its upstream call with it",
    )
    max_connections_per_address: int = Field(
        9000,
        ge=0,
        description="open connections from one client address, at most (0: no cap); behind a "
        "load balancer every client shares its address, so the default lets one address hold "
        "every request in flight and waiting (and leaves it short of the whole fd budget)",
    )
    max_requests_in_flight: int = Field(
        8000,
        ge=0,
        description="requests one process serves at once, open streams included (0: no cap). "
        "An HTTP/1.1 stream holds two file descriptors (client and upstream): 8,000 streams, "
        "the waiting requests and the short calls' connections fit a limit of 20,000 open "
        "files with room to spare; raise it with that limit (ulimit -n)",
    )
    max_pending_requests: int = Field(
        1000,
        ge=0,
        description="requests that may wait for one of those slots, each at most "
        "pending_timeout; past it, a 503 with retry-after at once",
    )
    pending_timeout: float = Field(
        1.0, gt=0, description="seconds a request may wait for a slot before a 503"
    )


class UpstreamSettings(_Section):
    name: str = Field(
        description="name of the upstream; its keys are known as NAME#1, NAME#2, ...",
        pattern=r"^[A-Za-z0-9_.-]{1,40}$",
    )
    base_url: str = Field(DEFAULT_BASE_URL, description="the upstream's API root, with /v1")
    keys: tuple[SecretStr, ...] = Field(min_length=1, description="upstream API keys")
    models: tuple[str, ...] = Field(("*",), description="glob patterns of the models it serves")
    strategy: Literal["round_robin", "random", "least_busy", "least_headroom"] = Field(
        "round_robin",
        description="how a key is chosen for each request: round_robin (in turn), random, "
        "least_busy (fewest requests in flight), or least_headroom (the most room left under "
        "the upstream's own x-ratelimit-* request and token limits, refilled toward the limit "
        "as their reset nears, requests not yet answered counted against it: avoids 429s)",
    )
    organization: str | None = Field(None, description="OpenAI-Organization sent upstream")
    project: str | None = Field(None, description="OpenAI-Project sent upstream")
    auth: Literal["bearer", "api-key"] = Field(
        "bearer",
        description="how a key is sent upstream: bearer (Authorization: Bearer, OpenAI and most "
        "OpenAI-style APIs) or api-key (an api-key header, Azure OpenAI)",
    )
    query: dict[str, str] = Field(
        {},
        description="fixed query parameters added to every upstream URL, over the client's own "
        'of the same name (Azure OpenAI: {api-version: "2024-10-21"})',
    )
    deployments: dict[str, str] = Field(
        {},
        description="model name -> deployment (Azure OpenAI): a request for a listed model goes "
        "to BASE_URL/deployments/DEPLOYMENT/... (base_url https://RESOURCE.openai.azure.com/"
        "openai); chat, completions, embeddings, images and audio calls only (a Realtime "
        "socket gets ?deployment=DEPLOYMENT)",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
        return value.rstrip("/")

    @field_validator("query")
    @classmethod
    def _plain_query(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _QUERY_NAME.match(name):
                raise ValueError(f"query parameter name {name!r} is not a plain name")
        return value

    @field_validator("deployments")
    @classmethod
    def _plain_deployments(cls, value: dict[str, str]) -> dict[str, str]:
        for model, deployment in value.items():
            if not _DEPLOYMENT.match(deployment):
                raise ValueError(f"deployment {deployment!r} of {model!r} is not a plain name")
        return value

    @field_validator("keys")
    @classmethod
    def _no_blank_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(not key.get_secret_value().strip() for key in value):
            raise ValueError("an upstream key is empty")
        return value


class TimeoutSettings(_Section):
    connect: float = Field(10.0, gt=0, description="seconds to open a connection upstream")
    first_byte: float = Field(
        600.0,
        gt=0,
        description="longest wait for a non-streamed answer to begin, seconds (it comes whole, "
        "so this is its generation time); shorter when the client's own timeout is",
    )
    stream_first_byte: float = Field(
        60.0, gt=0, description="longest wait for a streamed answer to begin, seconds"
    )
    client_margin: float = Field(
        1.0,
        ge=0,
        description="seconds the proxy gives up before the client's own read timeout "
        "(x-stainless-read-timeout, sent by the OpenAI SDKs), so the client gets a 504",
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
    budget_min: int = Field(
        3, ge=0, description="retries always allowed within the window, whatever the ratio"
    )
    budget_window: float = Field(
        10.0, gt=0, description="seconds of recent requests and retries the budget counts"
    )
    client_retry_after: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds a client is told to wait (retry-after) before retrying a 502 or 504",
    )


class PoolSettings(_Section):
    default_cooldown: float = Field(
        20.0, gt=0, description="seconds a key rests after a 429 that gave no reset time"
    )
    eject_after: int = Field(5, ge=1, description="consecutive failures before a key is ejected")
    eject_base: float = Field(30.0, gt=0, description="first ejection, seconds; doubles each time")
    eject_max: float = Field(300.0, gt=0, description="longest ejection, seconds")
    max_ejected_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="largest share of an upstream's keys ejected at once (at least one may be); "
        "with every other key out, an ejected key is still used",
    )
    model_refusal_seconds: float = Field(
        600.0,
        gt=0,
        le=3600,
        description="seconds a key whose account refused a model (403, or 404 model_not_found) "
        "is not used for that model",
    )
    probe_interval: float = Field(
        60.0, gt=0, description="seconds between probes of retired keys, to re-admit them"
    )


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
    failed_auth_limit: int = Field(
        20,
        ge=0,
        description="failed authentications from one client address within "
        "`failed_auth_window` before it is blocked (0: never); behind a load balancer every "
        "client shares its address",
    )
    failed_auth_window: float = Field(
        60.0, gt=0, description="seconds over which failed authentications are counted"
    )
    failed_auth_block_seconds: float = Field(
        60.0, gt=0, description="seconds a blocked address is answered 429, whatever its key"
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
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings,  # type: ignore[arg-type]
        description="the operator's web console at /admin/: sessions and sign-in",
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
    discord: DiscordSettings = Field(
        default_factory=DiscordSettings,  # type: ignore[arg-type]
        description="the Discord application whose /key and /usage commands issue self-service "
        "keys; off unless application_id and public_key are set",
    )
    self_service: SelfServiceSettings = Field(
        default_factory=SelfServiceSettings,  # type: ignore[arg-type]
        description="the policy of self-service keys, and how many may be issued",
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
