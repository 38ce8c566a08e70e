"""The router: a model goes to the first upstream whose globs match; names and keys are listed."""

from __future__ import annotations

import pytest

from chatgpt_proxy.errors import ModelNotFound
from chatgpt_proxy.settings import PoolSettings, UpstreamSettings
from chatgpt_proxy.upstream.router import Router, Upstream


def _router() -> Router:
    upstreams = [
        UpstreamSettings.model_validate(
            {"name": "azure", "keys": ["sk-a1"], "models": ["gpt-4o", "gpt-4o-*"]}
        ),
        UpstreamSettings.model_validate({"name": "openai", "keys": ["sk-o1", "sk-o2"]}),
    ]
    return Router.from_settings(upstreams, PoolSettings())


def test_the_first_upstream_whose_globs_match_serves_the_model() -> None:
    router = _router()
    assert router.route("gpt-4o").name == "azure"
    assert router.route("gpt-4o-mini").name == "azure"
    assert router.route("o3").name == "openai"
    assert router.route("gpt-4o").name == "azure"  # remembered, and the same


def test_fetches_by_id_go_to_the_first_upstream() -> None:
    assert _router().route(None).name == "azure"


def test_a_model_no_upstream_serves_is_model_not_found() -> None:
    only = UpstreamSettings.model_validate({"name": "x", "keys": ["k"], "models": ["gpt-*"]})
    router = Router.from_settings([only], PoolSettings())
    with pytest.raises(ModelNotFound) as caught:
        router.route("claude-3")
    assert caught.value.param == "model"
    assert "claude-3" in caught.value.message


def test_upstreams_are_found_by_name_and_their_keys_listed_for_redaction() -> None:
    router = _router()
    azure = router.get("azure")
    assert azure is not None and azure.serves("gpt-4o-2024") and not azure.serves("o3")
    assert router.get("missing") is None
    assert sorted(router.secrets()) == ["sk-a1", "sk-o1", "sk-o2"]
    assert [u.pool.name for u in router.upstreams] == ["azure", "openai"]


def _one(**settings: object) -> Upstream:
    config = {"name": "azure", "keys": ["k"], "base_url": "https://res.example/openai", **settings}
    return Router.from_settings([UpstreamSettings.model_validate(config)], PoolSettings()).route(
        None
    )


def test_a_url_is_the_base_url_and_path_with_the_clients_query() -> None:
    upstream = _one()
    assert upstream.url("/chat/completions") == "https://res.example/openai/chat/completions"
    assert upstream.url("/models", "after=m&limit=2") == (
        "https://res.example/openai/models?after=m&limit=2"
    )


@pytest.mark.parametrize(
    ("path", "model", "expected"),
    [
        ("/chat/completions", "gpt-4o", "/deployments/prod-4o/chat/completions"),
        ("/embeddings", "text-embedding-3-small", "/deployments/embed/embeddings"),
        ("/audio/transcriptions", "gpt-4o", "/deployments/prod-4o/audio/transcriptions"),
        ("/chat/completions", "o3", "/chat/completions"),  # no deployment: as it is
        ("/responses", "gpt-4o", "/responses"),  # not a call Azure serves per deployment
        ("/chat/completions", None, "/chat/completions"),
        ("/realtime", "gpt-4o", "/realtime?deployment=prod-4o"),  # Azure's Realtime shape
    ],
)
def test_a_model_with_a_deployment_goes_to_its_path(
    path: str, model: str | None, expected: str
) -> None:
    upstream = _one(deployments={"gpt-4o": "prod-4o", "text-embedding-3-small": "embed"})
    assert upstream.url(path, "", model) == "https://res.example/openai" + expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "api-version=2024-10-21"),
        ("limit=2", "limit=2&api-version=2024-10-21"),
        ("api-version=1999-01-01&x=%20y", "x=%20y&api-version=2024-10-21"),
        ("api%2Dversion=1999", "api-version=2024-10-21"),  # however it is spelt
    ],
)
def test_fixed_query_parameters_replace_the_clients_own(query: str, expected: str) -> None:
    upstream = _one(query={"api-version": "2024-10-21"})
    assert upstream.url("/models", query) == f"https://res.example/openai/models?{expected}"
