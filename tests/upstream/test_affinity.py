"""Follow-up calls on a stored response reach the key (account) that created it."""

from __future__ import annotations

from chatgpt_proxy.upstream.affinity import Affinity, Holder
from fake_openai import FakeOpenAI
from harness import Proxy


def test_the_map_is_bounded_and_keeps_the_recently_used() -> None:
    affinity = Affinity(capacity=2)
    affinity.remember("a", Holder("openai", "openai#1"))
    affinity.remember("b", Holder("openai", "openai#2"))
    assert affinity.holder("a") == Holder("openai", "openai#1")  # "a" is now the most recent
    affinity.remember("c", Holder("openai", "openai#1"))
    assert affinity.holder("b") is None
    assert affinity.holder("a") is not None
    assert affinity.holder("c") is not None


def _key_of_last(fake: FakeOpenAI, path: str) -> str | None:
    return fake.last(path).key


def test_retrieve_and_continue_use_the_creating_key(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    for stream in (False, True):
        if stream:
            events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
            created = events[0].response.id  # type: ignore[union-attr]
        else:
            created = client.responses.create(model="gpt-4o", input="hi").id
        creator = _key_of_last(fake, "/v1/responses")
        # Round robin would move on to the other key for each of these without affinity.
        for _ in range(2):
            client.responses.retrieve(created)
            assert _key_of_last(fake, f"/v1/responses/{created}") == creator
        client.responses.create(model="gpt-4o", input="more", previous_response_id=created)
        assert _key_of_last(fake, "/v1/responses") == creator


def test_a_holder_that_is_out_of_service_gives_way(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client()
    created = client.responses.create(model="gpt-4o", input="hi").id
    creator = _key_of_last(fake, "/v1/responses")
    assert creator is not None
    fake.script_key(creator, "rate_limit", retry_after=30)
    client.responses.retrieve(created)  # the other key answers (the fake shares its store)
    assert _key_of_last(fake, f"/v1/responses/{created}") != creator
