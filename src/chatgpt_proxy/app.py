"""Builds the server from settings: resources, routes, their wrapper, start-up and shutdown.

Wiring only. Everything that lives as long as the server is created here, kept on one
``AppState`` (``state``; no module-level state), and closed in reverse order on shutdown::

    app = await create_app(load_settings("config.yaml"))
"""

from __future__ import annotations

import contextlib
import sys
from typing import TextIO

from aiohttp import web

from chatgpt_proxy.api import add_routes
from chatgpt_proxy.auth import FailedAuthThrottle, KeyCache
from chatgpt_proxy.catalog import ModelCatalog
from chatgpt_proxy.keystore import KeyStore
from chatgpt_proxy.keystore.objects import ObjectOwners
from chatgpt_proxy.limits import Limiter
from chatgpt_proxy.limits.fallback import FallbackLimiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.logs import AccessLog, access_log_enabled
from chatgpt_proxy.metering import Meter
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.moderation import build_moderator
from chatgpt_proxy.periodic import TaskErrors
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.redis_link import RedisLink
from chatgpt_proxy.selfservice.endpoint import InteractionEndpoint
from chatgpt_proxy.selfservice.service import SelfService
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.shared_state import SharedState
from chatgpt_proxy.state import STATE, AppState
from chatgpt_proxy.upstream.client import UpstreamClient
from chatgpt_proxy.upstream.idle import IdleWatch
from chatgpt_proxy.upstream.prober import Prober
from chatgpt_proxy.upstream.router import Router
from chatgpt_proxy.upstream.sockets import SocketOpener
from chatgpt_proxy.upstream.transport import AiohttpTransport


async def create_app(
    settings: Settings, *, store: KeyStore | None = None, log_stream: TextIO | None = None
) -> web.Application:
    """Create the resources and the app.

    ``store`` lets a caller share an open key store; access lines go to ``log_stream``
    (standard error by default), where ``configure_logging`` sends the other logs.
    """
    stack = contextlib.AsyncExitStack()
    try:
        state = await _open_state(settings, stack, store)
        if settings.server.access_log and access_log_enabled():
            json = settings.server.log_format == "json"
            state.access_log = AccessLog(log_stream or sys.stderr, state.redactor, json=json)
            stack.callback(state.access_log.flush)  # closed first: the last lines written
    except BaseException:
        await stack.aclose()
        raise
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[STATE] = state

    async def close(_: web.Application) -> None:
        state.ready = False
        await stack.aclose()

    app.on_cleanup.append(close)
    add_routes(app)
    state.ready = True
    return app


async def _open_state(
    settings: Settings, stack: contextlib.AsyncExitStack, store: KeyStore | None
) -> AppState:
    router = Router.from_settings(settings.upstreams, settings.pool)
    redactor = Redactor(router.secrets())
    task_errors = TaskErrors()  # failed runs of the background tasks below, for /metrics
    server = settings.server
    lasting = server.max_upstream_connections
    transport = AiohttpTransport(
        max_connections=server.max_requests_in_flight if lasting is None else lasting,
        short_connections=server.max_short_upstream_connections,
    )
    stack.push_async_callback(transport.close)
    idle = IdleWatch(settings.timeouts.stream_idle, errors=task_errors)
    idle.start()
    stack.push_async_callback(idle.stop)
    client = UpstreamClient(transport, settings.timeouts, settings.retries, idle=idle)
    if store is None:
        store = await KeyStore.open(settings.database_url)
        stack.push_async_callback(store.close)
        await store.migrate()
    auth = settings.auth
    throttle = (
        FailedAuthThrottle(
            auth.failed_auth_limit, auth.failed_auth_window, auth.failed_auth_block_seconds
        )
        if auth.failed_auth_limit
        else None
    )
    keys = KeyCache(
        store, refresh_seconds=auth.cache_refresh_seconds, throttle=throttle, errors=task_errors
    )
    await keys.start()
    stack.push_async_callback(keys.stop)
    pricing = Pricing(settings.pricing)
    meter = Meter(
        store,
        interval=settings.server.usage_flush_seconds,
        pricing=pricing,
        errors=task_errors,
    )
    meter.start()
    stack.push_async_callback(meter.close)
    link = RedisLink.open(settings) if settings.redis_url is not None else None
    limiter: Limiter = MemoryLimiter(store, pricing)
    shared = None
    if link is not None:
        stack.push_async_callback(link.close)  # closed last: the others below still use it
        shared_limiter = RedisLimiter(
            link, store, pricing, lease_seconds=settings.limits.concurrency_lease_seconds
        )
        limiter = FallbackLimiter(shared_limiter, MemoryLimiter(store, pricing), link)
        shared = SharedState(link, router, keys, errors=task_errors)
        await shared.start()
        stack.push_async_callback(shared.stop)
    stack.push_async_callback(limiter.close)
    moderator = build_moderator(settings, client, router)
    stack.push_async_callback(moderator.close)
    prober = Prober(client, router, interval=settings.pool.probe_interval, errors=task_errors)
    prober.start()
    stack.push_async_callback(prober.stop)
    metrics = Metrics(router.upstreams)
    metrics.watch_tasks(task_errors)
    meter.export(metrics)
    metrics.watch(
        "chatgpt_proxy_moderation_blocks_total",
        "requests blocked by moderation",
        lambda: float(moderator.blocks_total),
    )
    catalog = ModelCatalog(client, router)
    state = AppState(
        settings,
        router,
        client,
        store,
        keys,
        limiter,
        moderator,
        meter,
        metrics,
        redactor,
        catalog,
        objects=ObjectOwners(store),
        sockets=SocketOpener(transport, settings.timeouts, settings.retries),
    )
    state.redis = link.client if link is not None else None
    state.shared = shared
    state.self_service = SelfService(settings, store, keys, shared, metrics)
    if settings.discord.enabled:
        state.interactions = InteractionEndpoint(settings.discord, store, state.self_service)
        stack.push_async_callback(state.interactions.close)
    return state
