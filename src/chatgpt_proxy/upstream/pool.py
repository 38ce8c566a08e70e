"""Choosing an upstream key for each attempt, and keeping bad keys out of rotation.

Each key is in one of four states::

    ACTIVE ──429──────────────────────────► COOLING ──until passes──► ACTIVE
    ACTIVE ──eject_after failures in a row─► EJECTED ──until passes──► ACTIVE (on probation)
    EJECTED ──a success────────────────────► ACTIVE
    any ──401 / out of quota───────────────► RETIRED ──readmit()────► ACTIVE

Expiry is lazy: a cooling or ejected key whose ``until`` has passed turns ACTIVE the next time the
pool looks at it, so there are no timers and no event loop. A key back from ejection keeps its
failure count, so a single further failure ejects it again for twice as long; a success forgives
everything. Ejection never takes the whole pool out (Envoy's outlier detection does the same):
at most ``max_ejected_share`` of the keys are ejected at once (always at least one may be), and
when no other key is usable the pool still hands out the ejected key due back soonest.

Apart from its state, a key may be barred from one model for a while: its account refused that
model (a 403, or a 404 ``model_not_found``) while another account may serve it. The pool is
pure logic with an injected clock and RNG; callers bracket each attempt with ``acquire()`` and
``release()``, tell ``answered()`` when the answer's headers come (or that none will), and
report what the upstream answered in between.

Which usable key takes an attempt is its strategy's choice (``upstream.strategies``:
``round_robin``, ``random``, ``least_busy``, ``least_headroom``).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field

from chatgpt_proxy.errors import (
    ModelNotFound,
    NoUpstreamKeys,
    PermissionDenied,
    ProxyError,
    ResourceUnavailable,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
)
from chatgpt_proxy.memo import Memo, key_chars
from chatgpt_proxy.upstream.headroom import Headroom
from chatgpt_proxy.upstream.strategies import Strategy, chooser_for

MIN_COOLDOWN = 0.1
MAX_COOLDOWN = 3600.0
_MAX_BARRED = 4096  # (model, key) pairs remembered; model names are the clients'
_MAX_BARRED_CHARS = 1 << 20  # and so is their length

logger = logging.getLogger("chatgpt_proxy.upstream")


class KeyState(enum.StrEnum):
    ACTIVE = "active"
    COOLING = "cooling"
    EJECTED = "ejected"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """How long keys stay out of rotation, in seconds.

    >>> policy = PoolPolicy(default_cooldown=30.0, eject_after=5)
    """

    default_cooldown: float = 20.0
    eject_after: int = 3
    eject_base: float = 1.0
    eject_max: float = 300.0
    max_ejected_share: float = 0.5
    barred_for: float = 600.0  # seconds a key refused a model stays barred from it

    def __post_init__(self) -> None:
        if not 0 < self.default_cooldown <= MAX_COOLDOWN:
            raise ValueError(f"default_cooldown must be in (0, {MAX_COOLDOWN:g}]")
        if self.eject_after < 1:
            raise ValueError("eject_after must be at least 1")
        if not 0 < self.eject_base <= self.eject_max:
            raise ValueError("eject_base must be positive and at most eject_max")
        if not 0 < self.max_ejected_share <= 1:
            raise ValueError("max_ejected_share must be in (0, 1]")
        if not 0 < self.barred_for <= MAX_COOLDOWN:
            raise ValueError(f"barred_for must be in (0, {MAX_COOLDOWN:g}]")


DEFAULT_POLICY = PoolPolicy()


@dataclass(slots=True, eq=False, repr=False)
class UpstreamKey:
    """One upstream key and its health; only its pool changes it.

    ``secret`` is for the upstream client's ``Authorization`` header and nothing else: it is
    kept out of ``repr``/``str`` so a stray log line or traceback shows the alias alone. ``state``
    may be stale for a key whose cooldown has passed; ``KeyPool.snapshot()`` gives the fresh view.
    """

    alias: str
    secret: str
    state: KeyState = KeyState.ACTIVE
    until: float = 0.0  # clock time at which COOLING or EJECTED ends
    inflight: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    retired_reason: str | None = None
    requests: int = 0
    failures: int = 0
    room: Headroom = field(default_factory=Headroom)  # its rate limits, for least_headroom

    def __repr__(self) -> str:
        return f"<UpstreamKey {self.alias} {self.state}>"


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """A read-only view of one key for the admin API, metrics and ``check``: never the secret."""

    alias: str
    state: KeyState
    until: float | None  # seconds from now until COOLING or EJECTED ends
    inflight: int
    requests: int
    failures: int
    reason: str | None


def model_refused(model: str | None, statuses: set[int]) -> ProxyError:
    """The answer when the upstream accounts refused a model (or, with no model, a request):
    told in the proxy's own words, since the upstream's name the account."""
    if model is None:
        return PermissionDenied("The upstream refused this request.")
    if statuses == {403}:
        return PermissionDenied(f"No upstream key may use the model `{model}`.", param="model")
    return ModelNotFound(
        f"The model `{model}` does not exist or you do not have access to it.", param="model"
    )


def _usable(key: UpstreamKey, now: float) -> bool:
    state = key.state
    if state is KeyState.ACTIVE:
        return True
    if state is KeyState.RETIRED or now < key.until:
        return False
    key.state = KeyState.ACTIVE
    key.until = 0.0
    return True


def _clamp_cooldown(seconds: float | None, default: float) -> float:
    # Retry hints come from upstream headers: never trust them to be finite or sane.
    if seconds is None or not math.isfinite(seconds):
        seconds = default
    return min(max(seconds, MIN_COOLDOWN), MAX_COOLDOWN)


class KeyPool:
    """The keys of one upstream, and the choice among them for each attempt.

    >>> pool = KeyPool("openai", ["sk-a", "sk-b"])
    >>> key = pool.acquire()
    >>> key.alias
    'openai#1'
    >>> pool.report_rate_limited(key, retry_after=30.0)  # a 429: cool it, retry elsewhere
    >>> pool.release(key)
    >>> pool.acquire(exclude={key.alias}).alias
    'openai#2'
    """

    def __init__(
        self,
        name: str,
        secrets: Sequence[str],
        *,
        strategy: Strategy = "round_robin",
        policy: PoolPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._chooser = chooser_for(strategy, _usable, rng if rng is not None else random.Random())
        self.name = name
        self.policy = policy
        self.strategy: Strategy = strategy
        self._weighs_room = strategy == "least_headroom"  # the others keep no Headroom
        self._keys = tuple(UpstreamKey(f"{name}#{i}", s) for i, s in enumerate(secrets, 1))
        self._by_alias = {key.alias: key for key in self._keys}
        self._clock = clock
        # (model, alias) -> (until, status): the keys whose account refused a model.
        self._barred: Memo[tuple[str, str], tuple[float, int]] = Memo(
            _MAX_BARRED, max_bytes=_MAX_BARRED_CHARS, weigh=key_chars
        )

    @classmethod
    def alone(cls, name: str, key: UpstreamKey) -> KeyPool:
        """A fresh pool of ``key`` alone, under its own alias: to try that key apart from its
        pool, as probes do, with every line logged about it naming the right key."""
        pool = cls(name, [])
        copy = UpstreamKey(key.alias, key.secret)
        pool._keys = (copy,)
        pool._by_alias = {copy.alias: copy}
        return pool

    def acquire(
        self, exclude: Container[str] = (), model: str | None = None, tokens: int = 0
    ) -> UpstreamKey:
        """Choose a usable key whose alias is not in ``exclude`` (the keys this request tried).

        Keys barred from ``model`` are passed over. ``tokens`` is the request's estimated
        size, which ``least_headroom`` weighs (and counts against the key until ``answered``).
        (A request about a stored object goes to the key holding it, through ``acquire_exact``.)
        """
        now = self._clock()
        barred = self._barred_from(model, now) if model is not None and self._barred else ()
        if barred:
            exclude = {*barred, *(key.alias for key in self._keys if key.alias in exclude)}
        key = self._chooser.pick(self._keys, now, exclude, tokens)
        if key is None and not self._in_play(now, barred):
            key = self._back_soonest(now, exclude)
        if key is None:
            raise self._unavailable(now, exclude, barred, model)
        self._take(key, tokens)
        return key

    def acquire_exact(self, alias: str, tokens: int = 0) -> UpstreamKey:
        """The key ``alias`` itself, for a request about an object that only its account holds.

        Never another key: a retired or unknown one is a ``ResourceUnavailable`` (409), a
        cooling one an ``UpstreamRateLimited`` until its cooldown ends, an ejected one an
        ``UpstreamError``; the client retries the last two, and only this key can answer.
        """
        now = self._clock()
        key = self._by_alias.get(alias)
        if key is None or key.state is KeyState.RETIRED:
            raise ResourceUnavailable(
                f"The upstream key {alias} holding this object is out of service; "
                "it is reachable again only if an operator brings that key back."
            )
        if not _usable(key, now):
            if key.state is KeyState.COOLING:
                raise UpstreamRateLimited(
                    f"The upstream key {alias} holding this object is rate limited; retry later.",
                    retry_after=key.until - now,
                )
            raise UpstreamError(
                f"The upstream key {alias} holding this object is failing; retry shortly."
            )
        self._take(key, tokens)
        return key

    def _take(self, key: UpstreamKey, tokens: int) -> None:
        key.inflight += 1
        key.requests += 1
        if self._weighs_room:
            key.room.send(tokens)

    def answered(
        self, key: UpstreamKey, headers: Mapping[str, str] | None = None, tokens: int = 0
    ) -> None:
        """The attempt on ``key`` (acquired with ``tokens``) has its answer's ``headers``, or
        will have none (``None``): it no longer counts as unanswered, and the rate limits those
        headers tell are kept when the strategy weighs them."""
        if self._weighs_room:
            key.room.answered(headers, tokens, self._clock())

    def release(self, key: UpstreamKey) -> None:
        if key.inflight > 0:
            key.inflight -= 1
        if key.inflight == 0 and self._weighs_room:
            key.room.forget_pending()  # nothing in flight: nothing unanswered, whatever was told

    def report_success(self, key: UpstreamKey) -> None:
        key.consecutive_failures = 0
        key.ejections = 0
        if key.state is KeyState.EJECTED:
            key.state = KeyState.ACTIVE
            key.until = 0.0
            logger.info("upstream key %s recovered", key.alias)

    def report_rate_limited(self, key: UpstreamKey, retry_after: float | None) -> None:
        if key.state is KeyState.RETIRED:
            return
        now = self._clock()
        until = now + _clamp_cooldown(retry_after, self.policy.default_cooldown)
        was_usable = _usable(key, now)
        # Concurrent 429s on one key: the longest hint wins, and a 429 never shortens an ejection.
        if not was_usable and key.until >= until:
            return
        key.state = KeyState.COOLING
        key.until = until
        if was_usable:
            logger.info("upstream key %s rate limited for %.1fs", key.alias, until - now)

    def report_retired(self, key: UpstreamKey, reason: str) -> None:
        if key.secret:
            reason = reason.replace(key.secret, "[redacted]")
        was = key.state
        key.state = KeyState.RETIRED
        key.until = 0.0
        key.retired_reason = reason
        if was is not KeyState.RETIRED:
            logger.warning("upstream key %s retired: %s", key.alias, reason)

    def report_failure(self, key: UpstreamKey) -> None:
        key.failures += 1
        key.consecutive_failures += 1
        now = self._clock()
        # Requests already in flight on a dead key fail together; only the first failure of an
        # episode ejects, so ejections grow per episode rather than per request.
        if key.consecutive_failures < self.policy.eject_after or not _usable(key, now):
            return
        if not self._may_eject(now):
            return  # stays in play, failing: the share of keys out of the pool is full
        policy = self.policy
        length = min(policy.eject_base * 2.0 ** min(key.ejections, 32), policy.eject_max)
        key.ejections += 1
        key.state = KeyState.EJECTED
        key.until = now + length
        logger.warning("upstream key %s failing: ejected for %.1fs", key.alias, length)

    def report_refused_model(self, key: UpstreamKey, model: str, status: int) -> None:
        """The key's account refused ``model`` (``status`` 403 or 404): bar it from the model."""
        now = self._clock()
        pair = (model, key.alias)
        barred = self._barred.get(pair)
        if barred is None or barred[0] <= now:
            logger.warning("upstream key %s may not use model %r (%d)", key.alias, model, status)
        self._barred.remember(pair, (now + self.policy.barred_for, status))

    def readmit(self, key: UpstreamKey) -> None:
        """Put a key back in rotation, e.g. when the periodic probe finds a retired key works."""
        was = key.state
        self._reset(key)
        if was is not KeyState.ACTIVE:
            logger.info("upstream key %s readmitted", key.alias)

    def apply_remote_state(
        self,
        alias: str,
        state: KeyState,
        until_epoch_remaining: float | None,
        reason: str | None,
    ) -> None:
        """Mirror a state another replica observed; the replica that observed it has logged it."""
        key = self._by_alias.get(alias)
        if key is None:  # replicas may briefly run different configurations
            return
        if state is KeyState.ACTIVE:
            self._reset(key)
        elif state is KeyState.RETIRED:
            key.state = KeyState.RETIRED
            key.until = 0.0
            key.retired_reason = reason
        elif key.state is not KeyState.RETIRED:
            now = self._clock()
            default = self.policy.default_cooldown
            if state is KeyState.EJECTED:
                default = self.policy.eject_base
            until = now + _clamp_cooldown(until_epoch_remaining, default)
            if _usable(key, now) or key.until < until:
                key.state = state
                key.until = until

    def retired(self) -> list[UpstreamKey]:
        return [key for key in self._keys if key.state is KeyState.RETIRED]

    def keys(self) -> Sequence[UpstreamKey]:
        return self._keys

    def by_alias(self, alias: str) -> UpstreamKey | None:
        return self._by_alias.get(alias)

    def snapshot(self) -> list[KeyStatus]:
        now = self._clock()
        statuses = []
        for key in self._keys:
            waiting = not _usable(key, now) and key.state is not KeyState.RETIRED
            statuses.append(
                KeyStatus(
                    alias=key.alias,
                    state=key.state,
                    until=key.until - now if waiting else None,
                    inflight=key.inflight,
                    requests=key.requests,
                    failures=key.failures,
                    reason=key.retired_reason if key.state is KeyState.RETIRED else None,
                )
            )
        return statuses

    @staticmethod
    def _reset(key: UpstreamKey) -> None:
        key.state = KeyState.ACTIVE
        key.until = 0.0
        key.consecutive_failures = 0
        key.ejections = 0
        key.retired_reason = None

    def _barred_from(self, model: str, now: float) -> set[str]:
        barred = set()
        for key in self._keys:
            entry = self._barred.get((model, key.alias))
            if entry is not None and now < entry[0]:
                barred.add(key.alias)
        return barred

    def _may_eject(self, now: float) -> bool:
        keys = self._keys
        allowed = max(1, math.floor(self.policy.max_ejected_share * len(keys)))
        ejected = sum(1 for k in keys if k.state is KeyState.EJECTED and now < k.until)
        return ejected < allowed

    def _in_play(self, now: float, barred: Container[str]) -> bool:
        return any(key.alias not in barred and _usable(key, now) for key in self._keys)

    def _back_soonest(self, now: float, exclude: Container[str]) -> UpstreamKey | None:
        """With no usable key left, the ejected key due back first: the pool stays in play.

        Only then: while another key is usable, a retry does not go to an ejected one.
        """
        ejected = [
            key
            for key in self._keys
            if key.state is KeyState.EJECTED and key.alias not in exclude and now < key.until
        ]
        return min(ejected, key=lambda key: key.until) if ejected else None

    def _unavailable(
        self, now: float, exclude: Container[str], barred: Container[str], model: str | None
    ) -> ProxyError:
        # Only called after a pick scanned every candidate, so expired states are refreshed.
        # Candidates are the keys not barred from the model that this request has not tried.
        candidates = [key for key in self._keys if key.alias not in exclude]
        refused = [key for key in self._keys if key.alias in barred]
        if self._keys and not candidates and not refused:
            return UpstreamError(f"all upstream keys of {self.name} failed for this request")
        cooling = [key for key in candidates if key.state is KeyState.COOLING]
        if cooling:
            earliest = min(key.until for key in cooling)
            return UpstreamRateLimited(
                f"every upstream key of {self.name} is rate limited; retry later",
                retry_after=earliest - now,
            )
        if refused and model is not None:
            statuses = {bar[1] for key in refused if (bar := self._barred.get((model, key.alias)))}
            return model_refused(model, statuses)
        if any(key.state is KeyState.EJECTED for key in candidates):
            return UpstreamError(f"every upstream key of {self.name} is failing; retry shortly")
        if candidates and all(key.retired_reason == "no_quota" for key in candidates):
            return UpstreamQuotaExhausted(f"every upstream key of {self.name} is out of quota")
        return NoUpstreamKeys(
            f"every upstream key of {self.name} is out of service (invalid or out of quota)"
        )
