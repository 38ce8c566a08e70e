"""The shapes of Discord interactions this proxy reads, and of the answers it sends.

Only the fields used are declared; anything else Discord sends is ignored. A body that does
not fit is refused with a 400 by ``parse``, never a 500 (the body is already known to be
Discord's: the signature is checked first). Shapes follow Discord's "Receiving and Responding"
documentation::

    interaction = parse(body)
    interaction.user_id, interaction.command, interaction.option("action")
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatgpt_proxy.errors import InvalidRequest

EPHEMERAL = 1 << 6  # message flag: only the user who ran the command sees the reply

Snowflake = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]
# Interaction tokens go into a follow-up URL's path: only characters that cannot leave it, and
# never a dot segment.
Token = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,499}$")]


class InteractionType(IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2


class ResponseType(IntEnum):
    PONG = 1
    CHANNEL_MESSAGE_WITH_SOURCE = 4
    DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5


class _Shape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class User(_Shape):
    id: Snowflake


class Member(_Shape):
    user: User
    roles: tuple[Snowflake, ...] = ()


class Option(_Shape):
    name: str = Field(max_length=100)
    type: int
    value: str | int | float | bool | None = None
    options: tuple[Option, ...] = Field((), max_length=25)


class CommandData(_Shape):
    name: str = Field(max_length=100)
    options: tuple[Option, ...] = Field((), max_length=25)


class Interaction(_Shape):
    id: Snowflake
    application_id: Snowflake
    type: int
    token: Token | None = None
    guild_id: Snowflake | None = None
    member: Member | None = None  # in a server
    user: User | None = None  # in a direct message
    data: CommandData | None = None

    @property
    def user_id(self) -> str | None:
        if self.member is not None:
            return self.member.user.id
        return None if self.user is None else self.user.id

    @property
    def command(self) -> str:
        return "" if self.data is None else self.data.name

    def option(self, name: str) -> str | int | float | bool | None:
        """The value of option ``name``, or the name itself when it is a subcommand."""
        options = () if self.data is None else self.data.options
        for option in options:
            if option.name == name:
                return option.value if option.value is not None else name
        return None


def parse(body: bytes) -> Interaction:
    try:
        return Interaction.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest("The interaction is not one this endpoint understands.") from exc


def pong() -> dict[str, Any]:
    return {"type": ResponseType.PONG}


def ephemeral(content: str) -> dict[str, Any]:
    """A reply only its user sees."""
    return {
        "type": ResponseType.CHANNEL_MESSAGE_WITH_SOURCE,
        "data": {"content": content, "flags": EPHEMERAL},
    }


def deferred() -> dict[str, Any]:
    """ "Thinking...", only to its user; the reply follows by the interaction's webhook."""
    return {"type": ResponseType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, "data": {"flags": EPHEMERAL}}
