"""The moderation step: every input is checked before it is forwarded (DESIGN §2).

Engines run in the order of ``moderation.engines``; the first that blocks wins and the client gets
400 ``content_policy_violation`` naming the categories or rules. Two engines are built in:
``"rules"`` (local words and regular expressions) and ``"openai"`` (the upstream moderations
endpoint, through the key pool, with verdicts cached per item). A third-party engine is named
``"package.module:factory"``; ``factory(settings.moderation)`` returns an ``Engine``, and plugs
in exactly as the built-ins do::

    # mycompany/moderation.py
    from chatgpt_proxy.moderation import Verdict

    class NoTicketNumbers:
        name = "tickets"

        async def judge(self, items, context):
            hit = any(isinstance(i, str) and "TICKET-" in i for i in items)
            return Verdict(hit, ("ticket numbers",) if hit else (), self.name)

    def build(settings):            # in config.yaml:
        return NoTicketNumbers()    # engines: [rules, "mycompany.moderation:build", openai]

An engine that cannot judge raises ``errors.ModerationUnavailable`` to fail closed, or returns an
allowing verdict to fail open. It may define ``async close()``, awaited at shutdown.
"""

from chatgpt_proxy.moderation.cache import (
    ItemResult,
    MemoryVerdictCache,
    RedisVerdictCache,
    VerdictCache,
    cache_key,
)
from chatgpt_proxy.moderation.engines import Engine, ModerationContext, Verdict, load_engine
from chatgpt_proxy.moderation.inputs import Item, moderation_items, output_items
from chatgpt_proxy.moderation.moderator import Moderator, build_moderator
from chatgpt_proxy.moderation.openai_engine import OpenAIModerationEngine
from chatgpt_proxy.moderation.rules_engine import RulesEngine

__all__ = [
    "Engine",
    "Item",
    "ItemResult",
    "MemoryVerdictCache",
    "ModerationContext",
    "Moderator",
    "OpenAIModerationEngine",
    "RedisVerdictCache",
    "RulesEngine",
    "Verdict",
    "VerdictCache",
    "build_moderator",
    "cache_key",
    "load_engine",
    "moderation_items",
    "output_items",
]
