"""``api/interactions.py``: the Discord interactions endpoint's route, served at
``discord.path`` only when ``discord`` is configured (what the endpoint does with a request is
tested in ``tests/selfservice/test_endpoint.py``)."""

from __future__ import annotations

from collections.abc import Callable

from chatgpt_proxy.api.interactions import interaction_routes
from chatgpt_proxy.settings import DiscordSettings
from harness import Proxy
from selfservice.discord_helpers import APPLICATION_ID, PATH, Signer, ping


def configured(signer: Signer, **overrides: str) -> dict[str, str]:
    # No API base: answering a ping calls nothing at Discord.
    return {"application_id": APPLICATION_ID, "public_key": signer.public_key, **overrides}


def test_the_endpoint_is_off_unless_configured(proxy: Proxy) -> None:
    signer = Signer()
    body = ping(signer)
    assert proxy.http().post(PATH, content=body, headers=signer.headers(body)).status_code == 404


def test_unconfigured_the_path_is_an_unknown_url(proxy: Proxy) -> None:
    answer = proxy.http().post(PATH, content=b"{}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_url"


def test_configured_the_endpoint_answers_at_its_path(make_proxy: Callable[..., Proxy]) -> None:
    signer = Signer()
    proxy = make_proxy(discord=configured(signer))
    body = ping(signer)
    answer = proxy.http().post(PATH, content=body, headers=signer.headers(body))
    assert answer.status_code == 200 and answer.json() == {"type": 1}
    assert answer.headers["content-type"].startswith("application/json")


def test_the_endpoint_moves_with_discord_path(make_proxy: Callable[..., Proxy]) -> None:
    signer = Signer()
    proxy = make_proxy(discord=configured(signer, path="/hooks/discord"))
    body = ping(signer)
    moved = proxy.http().post("/hooks/discord", content=body, headers=signer.headers(body))
    assert moved.status_code == 200 and moved.json() == {"type": 1}
    body = ping(signer)  # a new id: the first was seen
    old = proxy.http().post(PATH, content=body, headers=signer.headers(body))
    assert old.status_code == 404


def test_the_endpoint_takes_post_only(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(discord=configured(Signer()))
    answer = proxy.http().get(PATH)
    assert answer.status_code == 405
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_interaction_routes_need_both_the_application_id_and_the_public_key() -> None:
    key = Signer().public_key
    assert interaction_routes(DiscordSettings()) == []
    assert interaction_routes(DiscordSettings(application_id=APPLICATION_ID)) == []
    assert interaction_routes(DiscordSettings(public_key=key)) == []
    [route] = interaction_routes(
        DiscordSettings(application_id=APPLICATION_ID, public_key=key, path="/hooks/discord")
    )
    assert (route.method, route.path) == ("POST", "/hooks/discord")
