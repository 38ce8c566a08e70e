"""Which upstream serves a model: the first whose glob patterns match (DESIGN §1), and where on
it a request goes (``Upstream.url``: its base URL, deployment paths and fixed query)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import unquote_plus, urlencode

from chatgpt_proxy.errors import ModelNotFound
from chatgpt_proxy.memo import Memo
from chatgpt_proxy.settings import PoolSettings, UpstreamSettings
from chatgpt_proxy.upstream.pool import KeyPool, PoolPolicy

_MAX_REMEMBERED = 4096  # model names are the client's
# The calls Azure OpenAI serves below a deployment (/openai/deployments/{deployment}/...).
_DEPLOYMENT_PATHS = ("/chat/completions", "/completions", "/embeddings", "/images/", "/audio/")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One configured upstream and the pool of its keys."""

    settings: UpstreamSettings
    pool: KeyPool

    @property
    def name(self) -> str:
        return self.settings.name

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.settings.models)

    def url(self, path: str, query: str = "", model: str | None = None) -> str:
        """The absolute URL of ``path`` (below ``base_url``) with the client's ``query``: a
        model with a deployment goes to its deployment's path, and the upstream's fixed
        query parameters replace the client's of the same name.

        >>> azure.url("/chat/completions", "", "gpt-4o")
        'https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=...'
        """
        settings = self.settings
        fixed = settings.query
        deployments = settings.deployments
        deployment = deployments.get(model) if deployments and model is not None else None
        if deployment is not None and path.startswith(_DEPLOYMENT_PATHS):
            path = f"/deployments/{deployment}{path}"
        elif deployment is not None and path == "/realtime":
            # Azure's Realtime socket names its deployment in the query instead.
            fixed = {**fixed, "deployment": deployment}
        url = settings.base_url + path
        if fixed:
            query = _with_fixed(query, fixed)
        return url + "?" + query if query else url


class Router:
    """Routes a model name to its upstream.

    >>> router = Router.from_settings(settings.upstreams, settings.pool)
    >>> router.route("gpt-4o-mini").name
    'openai'
    """

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = tuple(upstreams)
        self._by_name = {upstream.name: upstream for upstream in upstreams}
        self._by_model: Memo[str, Upstream] = Memo(_MAX_REMEMBERED)  # glob matches cost

    @classmethod
    def from_settings(
        cls,
        upstreams: Sequence[UpstreamSettings],
        pool: PoolSettings,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> Router:
        policy = PoolPolicy(
            default_cooldown=pool.default_cooldown,
            eject_after=pool.eject_after,
            eject_base=pool.eject_base,
            eject_max=pool.eject_max,
            max_ejected_share=pool.max_ejected_share,
            barred_for=pool.model_refusal_seconds,
        )
        built = []
        for upstream in upstreams:
            secrets = [key.get_secret_value() for key in upstream.keys]
            extra = {"clock": clock} if clock is not None else {}
            key_pool = KeyPool(
                upstream.name, secrets, strategy=upstream.strategy, policy=policy, rng=rng, **extra
            )
            built.append(Upstream(upstream, key_pool))
        return cls(built)

    def route(self, model: str | None) -> Upstream:
        """The upstream for ``model``; with no model (fetches by id), the first upstream."""
        if model is None:
            return self.upstreams[0]
        found = self._by_model.get(model)
        if found is not None:
            return found
        for upstream in self.upstreams:
            if upstream.serves(model):
                return self._by_model.remember(model, upstream)
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )

    def get(self, name: str) -> Upstream | None:
        return self._by_name.get(name)

    def secrets(self) -> list[str]:
        """Every upstream key, for the log redactor: the one place they are listed together."""
        return [key.secret for upstream in self.upstreams for key in upstream.pool.keys()]


def _with_fixed(query: str, fixed: Mapping[str, str]) -> str:
    """``query`` as the client sent it (its encoding kept), less the parameters ``fixed``
    sets, then ``fixed``'s: the client cannot choose another api-version."""
    kept = [
        pair
        for pair in query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]) not in fixed
    ]
    kept.append(urlencode(fixed))
    return "&".join(kept)
