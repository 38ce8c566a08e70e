"""Usage metering: every answered request's usage, summed in memory and written per interval.

``record`` adds a request to the tally of its group (client key, model, upstream key alias,
endpoint, status): a few additions, no allocation for a group already seen, no I/O. A
background task writes one row per group every ``interval`` seconds, so the database sees
rows per second whatever the request rate; ``close`` writes what is left, so a clean shutdown
loses nothing. If the database is down (or the write fails in any other way), tallies are kept
(up to ``_MAX_GROUPS`` groups) and written when it returns; a row the database refuses for what
it holds is set aside (logged and counted) and the others are written. ``failing`` tells
``/readyz`` when flushes keep failing. ``pricing`` is what a request's ``cost`` is computed with.
``Metering`` is the pipeline's meter stage, which records each proxied request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.exchange import CLIENT_CLOSED, Exchange, Next
from chatgpt_proxy.keystore import KeyStore, UsageEvent
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.periodic import Periodic, TaskErrors
from chatgpt_proxy.pricing import Pricing
from chatgpt_proxy.token_usage import Usage

logger = logging.getLogger("chatgpt_proxy.metering")
# Groups tallied at most while the database is away; past it new groups are dropped (counted).
_MAX_GROUPS = 100_000

Group = tuple[str, str, str, str, int]  # key id, model, upstream alias, endpoint, status

# Flushes that must fail in a row before /readyz says so: one failure is a blip, and the
# tallies are kept for the next flush anyway.
FAILING_AFTER = 3


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    latency_ms: int = 0

    def merge(self, other: _Tally) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.latency_ms += other.latency_ms
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost


class Meter:
    """Sums usage per group and writes it in batches.

    >>> meter = Meter(store, pricing=Pricing(settings.pricing))
    >>> meter.start()
    >>> meter.record("key_1", "gpt-4o", "openai#1", "chat.completions", 200, usage, 0.001, 350)
    >>> await meter.close()                # writes what is left
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        interval: float = 1.0,
        pricing: Pricing | None = None,
        errors: TaskErrors | None = None,
    ) -> None:
        self._store = store
        self.pricing = pricing if pricing is not None else Pricing({})
        self._tallies: dict[Group, _Tally] = {}
        self._flushing = asyncio.Lock()
        self._periodic = Periodic("writing usage", interval, self.flush, errors=errors)
        self.dropped = 0
        self.written = 0  # requests written, not rows
        self.set_aside = 0  # rows the database refused, logged and dropped
        self.failed_flushes = 0
        self._failures_in_a_row = 0

    def start(self) -> None:
        self._periodic.start()

    def record(
        self,
        key_id: str,
        model: str,
        upstream: str,
        endpoint: str,
        status: int,
        usage: Usage | None,
        cost: float | None,
        latency_ms: int,
    ) -> None:
        group = (key_id, model, upstream, endpoint, status)
        tally = self._tallies.get(group)
        if tally is None:
            if len(self._tallies) >= _MAX_GROUPS:
                self.dropped += 1  # bounded: a flood of new groups while the database is down
                return
            tally = self._tallies[group] = _Tally()
        tally.requests += 1
        tally.latency_ms += latency_ms
        if usage is not None:
            tally.prompt_tokens += usage.prompt_tokens
            tally.completion_tokens += usage.completion_tokens
            tally.total_tokens += usage.total_tokens
        if cost is not None:
            tally.cost = (tally.cost or 0.0) + cost

    @property
    def pending(self) -> int:
        """Requests recorded and not yet written."""
        return sum(tally.requests for tally in self._tallies.values())

    @property
    def failing(self) -> bool:
        """Whether the last ``FAILING_AFTER`` flushes all failed (usage is piling up)."""
        return self._failures_in_a_row >= FAILING_AFTER

    async def flush(self) -> None:
        """Write every request recorded so far; when it returns, they are all in the store
        (or, for a row the database refused, set aside and logged)."""
        # One flush at a time: a second caller waits for the batch the first is writing,
        # rather than return while it is still on its way.
        async with self._flushing:
            if not self._tallies:
                return
            batch, self._tallies = self._tallies, {}
            try:
                refused = await self._store.usage.record([_event(g, t) for g, t in batch.items()])
            except Exception:
                # Kept whatever the failure: the database away, or a bug that a restart fixes.
                for group, tally in batch.items():
                    self._tallies.setdefault(group, _Tally()).merge(tally)
                self.failed_flushes += 1
                self._failures_in_a_row += 1
                raise
            self._failures_in_a_row = 0
            for event in refused:
                _log_set_aside(event)
            self.set_aside += len(refused)
            written = sum(tally.requests for tally in batch.values())
            self.written += written - sum(event.requests for event in refused)

    async def close(self) -> None:
        # Holding the flush lock: a batch on its way is written, not cancelled half-way.
        async with self._flushing:
            await self._periodic.stop()
        try:
            await self.flush()
        except Exception as exc:
            reason = exc.message if isinstance(exc, ProxyError) else type(exc).__name__
            logger.error("%d requests' usage could not be written: %s", self.pending, reason)

    def export(self, metrics: Metrics) -> None:
        """Show the writer's state in ``/metrics``, so a failing one is seen before shutdown."""
        metrics.watch(
            "chatgpt_proxy_usage_pending_requests",
            "requests whose usage is recorded and not yet written",
            lambda: float(self.pending),
        )
        metrics.watch(
            "chatgpt_proxy_usage_written_requests_total",
            "requests whose usage was written",
            lambda: float(self.written),
        )
        metrics.watch(
            "chatgpt_proxy_usage_set_aside_rows_total",
            "usage rows the database refused, logged and not written",
            lambda: float(self.set_aside),
        )
        metrics.watch(
            "chatgpt_proxy_usage_dropped_requests_total",
            "requests not metered because too many groups were waiting to be written",
            lambda: float(self.dropped),
        )
        metrics.watch(
            "chatgpt_proxy_usage_failed_flushes_total",
            "usage writes that failed (their rows are kept and written later)",
            lambda: float(self.failed_flushes),
        )


def _log_set_aside(event: UsageEvent) -> None:
    # Everything needed to re-enter the row by hand; the model is the client's text, so repr().
    logger.error(
        "usage row set aside, the database refused it: key=%s model=%.200r upstream=%s "
        "endpoint=%.100r status=%d requests=%d prompt_tokens=%d completion_tokens=%d "
        "total_tokens=%d cost=%s",
        event.key_id,
        event.model,
        event.upstream,
        event.endpoint,
        event.status,
        event.requests,
        event.prompt_tokens,
        event.completion_tokens,
        event.total_tokens,
        event.cost,
    )


def _event(group: Group, tally: _Tally) -> UsageEvent:
    key_id, model, upstream, endpoint, status = group
    return UsageEvent(
        key_id=key_id,
        model=model,
        upstream=upstream,
        endpoint=endpoint,
        status=status,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        total_tokens=tally.total_tokens,
        latency_ms=tally.latency_ms,
        cost=tally.cost,
        requests=tally.requests,
    )


class Metering:
    """The pipeline's meter stage: once the stages after it end, however they end, the
    request's usage is recorded, and its tokens and cost are left on the exchange for the
    limits to settle. An answer whose usage is unknown (cut, abandoned, too large to read)
    is charged its estimate, as is a request the client left while the upstream had it."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter

    async def __call__(self, exchange: Exchange, forward: Next) -> web.StreamResponse:
        try:
            return await forward(exchange)
        finally:
            self._charge(exchange)

    def _charge(self, exchange: Exchange) -> None:
        outcome = exchange.outcome
        if outcome is not None:  # relayed: the reply is there
            status, usage = outcome.status, outcome.usage
            if usage is None and exchange.reply.response.status < 400:
                usage = exchange.estimated_usage()
        elif exchange.sent_at:  # the client left before the answer came
            status, usage = CLIENT_CLOSED, exchange.estimated_usage()
        else:
            return  # never reached the upstream: nothing to charge
        model = exchange.model
        cost = self._meter.pricing.cost(model, usage)
        latency_ms = int((time.monotonic() - exchange.sent_at) * 1000)
        self._meter.record(
            exchange.key.id,
            model or "-",
            exchange.context.upstream,
            exchange.endpoint,
            status,
            usage,
            cost,
            latency_ms,
        )
        exchange.used_tokens = usage.total_tokens if usage is not None else 0
        exchange.cost = cost or 0.0
        if usage is not None:  # for the access log
            exchange.context.usage = (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
            )
        exchange.context.cost = cost
