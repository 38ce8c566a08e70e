"""``selfservice/interactions.py``: the interaction shapes ``parse`` reads (fields it does not
use are ignored), the bodies it refuses with a 400, and the answers it builds."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from chatgpt_proxy.errors import InvalidRequest
from chatgpt_proxy.selfservice.interactions import (
    EPHEMERAL,
    InteractionType,
    deferred,
    ephemeral,
    parse,
    pong,
)
from selfservice.discord_helpers import APPLICATION_ID, GUILD_ID, ROLE_ID, ROTATE, Signer, command

USER = "900000000000000001"


def changed(body: bytes, **fields: Any) -> bytes:
    """``body`` with top-level ``fields`` set (``None``: removed)."""
    interaction = orjson.loads(body)
    for name, value in fields.items():
        if value is None:
            interaction.pop(name, None)
        else:
            interaction[name] = value
    return orjson.dumps(interaction)


def test_a_ping_parses() -> None:
    interaction = parse(orjson.dumps({"id": "1", "application_id": APPLICATION_ID, "type": 1}))
    assert interaction.type == InteractionType.PING
    assert interaction.token is None and interaction.user_id is None
    assert interaction.command == "" and interaction.option("action") is None


def test_a_command_in_a_server_names_its_member(signer: Signer) -> None:
    interaction = parse(command(signer, "key", USER))
    assert interaction.type == InteractionType.APPLICATION_COMMAND
    assert interaction.application_id == APPLICATION_ID and interaction.guild_id == GUILD_ID
    assert interaction.user_id == USER and interaction.command == "key"
    assert interaction.member is not None and interaction.member.roles == (ROLE_ID,)
    assert interaction.token is not None and interaction.token.startswith("tok_")


def test_a_command_in_a_direct_message_names_its_user(signer: Signer) -> None:
    interaction = parse(command(signer, "usage", USER, guild_id=None))
    assert interaction.guild_id is None and interaction.member is None
    assert interaction.user_id == USER and interaction.command == "usage"


def test_the_member_is_who_ran_a_command_in_a_server(signer: Signer) -> None:
    # Discord sends ``member`` in a server and ``user`` in a DM; were both there, the member wins.
    body = changed(command(signer, "key", USER), user={"id": "900000000000000002"})
    assert parse(body).user_id == USER


def test_options_give_their_value_a_subcommand_its_name(signer: Signer) -> None:
    assert parse(command(signer, "key", USER, options=ROTATE)).option("action") == "rotate"
    subcommand = [{"name": "show", "type": 1}]
    interaction = parse(command(signer, "key", USER, options=subcommand))
    assert interaction.option("show") == "show"
    assert interaction.option("action") is None
    numbers = [{"name": "days", "type": 4, "value": 3}, {"name": "on", "type": 5, "value": False}]
    interaction = parse(command(signer, "key", USER, options=numbers))
    assert interaction.option("days") == 3 and interaction.option("on") is False


def test_fields_it_does_not_use_are_ignored(signer: Signer) -> None:
    body = changed(
        command(signer, "key", USER),
        locale="de",
        app_permissions="8",
        channel={"id": "1", "type": 0},
        entitlements=[],
    )
    assert parse(body).user_id == USER


def test_an_interaction_is_read_only(signer: Signer) -> None:
    interaction = parse(command(signer, "key", USER))
    with pytest.raises(ValidationError):
        interaction.type = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "spoil",
    [
        {"id": None},
        {"application_id": None},
        {"type": None},
        {"type": "two"},
        {"id": "abc"},
        {"id": "1" * 21},  # longer than a snowflake
        {"id": 1400000000000000000},  # a number: Discord sends ids as strings
        {"guild_id": "-1"},
        {"token": ".."},  # a dot segment would climb the follow-up URL's path
        {"token": "../../channels/1/messages"},
        {"token": "a/b"},
        {"token": ".hidden"},
        {"token": "t" * 501},
        {"token": "tok en"},
        {"member": {"roles": []}},  # a member without its user
        {"member": {"user": {"id": USER}, "roles": ["admin"]}},
        {"data": {"options": []}},  # a command without its name
        {"data": {"name": "k" * 101}},
        {"data": {"name": "key", "options": [{"name": "x", "type": 3}] * 26}},
        {"data": {"name": "key", "options": [{"name": "x", "type": 3, "value": [1]}]}},
    ],
    ids=lambda spoil: ",".join(f"{k}={str(v)[:20]}" for k, v in spoil.items()),
)
def test_a_body_that_does_not_fit_is_a_400(signer: Signer, spoil: dict[str, Any]) -> None:
    body = changed(command(signer, "key", USER), **spoil)
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    assert raised.value.status == 400 and raised.value.code == "invalid_request"


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"null", b'"ping"', b"{", b"\xff"])
def test_what_is_not_an_interaction_object_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse(body)


@pytest.mark.parametrize("depth", [300, 1500])  # 1500 levels still fit the endpoint's 64 KiB
def test_a_deep_option_tree_is_refused_not_a_crash(signer: Signer, depth: int) -> None:
    option = '{"name":"x","type":1,"options":[' * depth + "]}" * depth
    placeholder = b'"options":[{"name":"action","type":3,"value":"rotate"}]'
    body = command(signer, "key", USER, options=ROTATE).replace(
        placeholder, b'"options":[' + option.encode() + b"]"
    )
    assert len(body) < 64 * 1024 and body.count(b'"options"') == depth + 1
    with pytest.raises(InvalidRequest):
        parse(body)


def test_the_answers_are_discords_shapes() -> None:
    assert orjson.loads(orjson.dumps(pong())) == {"type": 1}
    assert orjson.loads(orjson.dumps(ephemeral("hello"))) == {
        "type": 4,
        "data": {"content": "hello", "flags": 64},
    }
    assert orjson.loads(orjson.dumps(deferred())) == {"type": 5, "data": {"flags": 64}}
    assert EPHEMERAL == 64
