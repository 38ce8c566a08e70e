"""Random bodies with valid signatures: refused or answered, never a 500."""

from __future__ import annotations

import json
from typing import Any

from discord_helpers import APPLICATION_ID, Signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Proxy

snowflakes = st.from_regex(r"[0-9]{1,20}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
options = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["action", "x"]) | st.text(max_size=5), "type": anything},
        optional={"value": anything, "options": anything},
    ),
    max_size=3,
)
interactions = st.fixed_dictionaries(
    {
        "id": snowflakes | anything,
        "application_id": st.just(APPLICATION_ID) | anything,
        "type": st.sampled_from([1, 2, 3, 4, 5]) | anything,
    },
    optional={
        "token": st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True) | anything,
        "guild_id": snowflakes | anything,
        "member": st.fixed_dictionaries(
            {"user": st.fixed_dictionaries({"id": snowflakes | anything})},
            optional={"roles": st.lists(snowflakes, max_size=3) | anything},
        )
        | anything,
        "user": st.fixed_dictionaries({"id": snowflakes}) | anything,
        "data": st.fixed_dictionaries(
            {"name": st.sampled_from(["key", "usage", "other"]) | anything},
            optional={"options": options | anything},
        )
        | anything,
    },
)
# The standard library's encoder: it writes integers of any size, and NaN, which JSON has not.
bodies = (
    interactions.map(lambda value: json.dumps(value).encode())
    | anything.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=200)
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_signed_random_bodies_never_cause_a_500(
    discord_proxy: Proxy, signer: Signer, body: bytes
) -> None:
    answer: Any = discord_proxy.http().post(
        "/discord/interactions", content=body, headers=signer.headers(body)
    )
    assert answer.status_code in (200, 400, 401, 413), (answer.status_code, answer.text)
    if answer.status_code == 200:
        assert answer.json()["type"] in (1, 4, 5)
    else:
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
