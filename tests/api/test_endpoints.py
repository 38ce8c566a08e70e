"""The endpoint table: an allowlist whose entries keep the rules the pipeline relies on."""

from __future__ import annotations

from collections import Counter

from chatgpt_proxy.api.endpoints import ENDPOINTS
from chatgpt_proxy.settings import ServerSettings


def test_names_and_routes_are_unique() -> None:
    names = Counter(endpoint.name for endpoint in ENDPOINTS)
    routes = Counter((endpoint.method, endpoint.path) for endpoint in ENDPOINTS)
    assert [name for name, count in names.items() if count > 1] == []
    assert [route for route, count in routes.items() if count > 1] == []


def test_each_path_goes_upstream_as_itself_below_v1() -> None:
    for endpoint in ENDPOINTS:
        assert endpoint.path.startswith("/v1/"), endpoint.name
        if endpoint.name == "models.retrieve":  # its route's pattern lets a model hold `/`
            assert endpoint.upstream_path == "/models/{model}"
            continue
        assert endpoint.path == "/v1" + endpoint.upstream_path, endpoint.name


def test_every_object_id_in_a_path_is_one_the_caller_must_own() -> None:
    for endpoint in ENDPOINTS:
        if "{id}" in endpoint.path:
            assert endpoint.owns is not None, endpoint.name
        if endpoint.lists is not None or endpoint.creates is not None:
            assert "{" not in endpoint.path, endpoint.name


def test_a_multipart_body_is_bounded_by_a_setting_that_exists() -> None:
    multipart = [endpoint for endpoint in ENDPOINTS if endpoint.body == "multipart"]
    assert {endpoint.name for endpoint in multipart} >= {"files.create", "audio.transcriptions"}
    for endpoint in multipart:
        assert endpoint.upload_limit in ServerSettings.model_fields, endpoint.name
