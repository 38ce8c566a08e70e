"""The limits' script calls: the hand-packed round trip answers as redis-py's own pipeline does."""

from __future__ import annotations

from typing import Any

import pytest
from limits_rig import Rig
from redis.exceptions import NoScriptError, ResponseError

from chatgpt_proxy.limits.autopipe import ScriptCall, packed_round_trip, pipelined
from chatgpt_proxy.memo import Memo

# Every kind of answer a script gives: numbers, strings, nil, nested arrays, a status, an
# error; and its keys and arguments of each type echoed back.
_ANSWERS = """
local kind = ARGV[1]
if kind == 'echo' then return {KEYS[1], KEYS[2], ARGV[2], ARGV[3], #ARGV} end
if kind == 'int' then return tonumber(ARGV[2]) * 2 end
if kind == 'nil' then return false end
if kind == 'nested' then return {1, {'a', {'b', 2}}, 'c'} end
if kind == 'status' then return redis.status_reply('FINE') end
if kind == 'error' then return redis.error_reply('ERR refused by the script') end
if kind == 'count' then return redis.call('INCR', KEYS[1]) end
return ARGV[2]
"""


def _comparable(answers: list[Any]) -> list[Any]:
    return [
        (type(answer).__name__, str(answer)) if isinstance(answer, Exception) else answer
        for answer in answers
    ]


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("echo", b"bytes \x00\xff", 42), ("k1", b"k2")),
        (("int", 21), ("k1",)),
        (("nil",), ("k1",)),
        (("nested",), ()),
        (("status",), ("k1",)),
        (("error",), ("k1",)),
        (("text", "é \r\n $3 *2"), ("k1",)),
        (("count",), ("counter",)),
    ],
)
def test_the_packed_round_trip_answers_as_the_pipeline(
    redis_rig: Rig, args: tuple[str | int | bytes, ...], keys: tuple[str | bytes, ...]
) -> None:
    link = redis_rig.link
    assert link is not None
    script = link.client.register_script(_ANSWERS)
    prefixed = tuple(
        link.prefix.encode() + key if isinstance(key, bytes) else link.prefix + key for key in keys
    )

    async def both() -> tuple[list[Any], list[Any]]:
        calls = [ScriptCall(script, prefixed, args, None) for _ in range(3)]
        plain = await pipelined(link.client, calls)  # loads the script, as a pipeline does
        packed = await packed_round_trip(link.client, calls, Memo(16))
        return plain, packed

    plain, packed = redis_rig.loop.run(both())
    if args[0] == "count":  # each way ran its three calls, in order
        assert plain == [1, 2, 3]
        assert packed == [4, 5, 6]
        return
    assert _comparable(packed) == _comparable(plain)
    if args[0] == "error":
        assert all(isinstance(answer, ResponseError) for answer in packed)


def test_a_script_redis_lacks_is_no_script_packed_and_loaded_by_the_pipeline(
    redis_rig: Rig,
) -> None:
    link = redis_rig.link
    assert link is not None
    script = link.client.register_script(_ANSWERS)
    redis_rig.redis("SCRIPT", "FLUSH")
    calls = [ScriptCall(script, (link.prefix + "k",), ("text", "hello"), None)]

    async def both() -> tuple[list[Any], list[Any]]:
        packed = await packed_round_trip(link.client, calls, Memo(16))
        return packed, await pipelined(link.client, calls)

    packed, plain = redis_rig.loop.run(both())
    assert isinstance(packed[0], NoScriptError)
    assert plain == [b"hello"]
