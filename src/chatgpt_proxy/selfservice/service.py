"""Self-service keys for a community: what ``/key`` and ``/usage`` do, and blocking users.

A Discord user is a key's owner (``discord:<user id>``) and holds at most one active key with
the ``self_service`` policy. The server issues at most ``max_new_keys_per_hour`` such keys;
refusals are logged and counted for ``/metrics``::

    service = SelfService(settings, store, keys, shared, metrics)
    await service.answer(interaction)      # the reply's text, only its user sees it
    await service.block("80351110224678912")
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from chatgpt_proxy.auth import KeyCache
from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.keystore import ClientKey, KeyPolicy, KeyStore
from chatgpt_proxy.keystore.owners import Outcome
from chatgpt_proxy.metrics import Metrics
from chatgpt_proxy.selfservice.discord_api import ROTATE
from chatgpt_proxy.selfservice.interactions import Interaction
from chatgpt_proxy.selfservice.standing import Standing
from chatgpt_proxy.settings import Settings
from chatgpt_proxy.shared_state import SharedState

logger = logging.getLogger("chatgpt_proxy.selfservice")

REFUSALS = ("blocked", "capped", "user_capped", "not_in_guild", "missing_role")


def owner_of(user_id: str) -> str:
    return f"discord:{user_id}"


def is_discord_id(value: str) -> bool:
    """Whether ``value`` is a Discord id (a snowflake: up to 20 decimal digits)."""
    return 0 < len(value) <= 20 and value.isascii() and value.isdigit()


class SelfService:
    """The self-service commands, over the key store."""

    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        keys: KeyCache,
        shared: SharedState | None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._shared = shared
        self.issued_total = 0
        self.refusals: Counter[str] = Counter()
        if metrics is not None:
            self._export(metrics)

    def _export(self, metrics: Metrics) -> None:
        metrics.watch(
            "chatgpt_proxy_self_service_keys_issued_total",
            "self-service keys issued",
            lambda: float(self.issued_total),
        )
        for reason in REFUSALS:
            metrics.watch(
                f"chatgpt_proxy_self_service_refusals_{reason}_total",
                f"self-service requests refused: {reason.replace('_', ' ')}",
                functools.partial(self._refused, reason),
            )

    def _refused(self, reason: str) -> float:
        return float(self.refusals[reason])

    async def answer(self, interaction: Interaction) -> str:
        """The reply to a slash command; failures become a message, never an exception."""
        try:
            return await self._answer(interaction)
        except ProxyError as exc:
            logger.warning("self-service command %r failed: %s", interaction.command, exc.message)
            return "Something went wrong on our side; please try again in a minute."

    async def _answer(self, interaction: Interaction) -> str:
        user_id = interaction.user_id
        if user_id is None:
            return "This command needs a Discord user."
        refused = self._gate(interaction)
        if refused is not None:
            return refused
        if interaction.command == "key":
            return await self.key(user_id, rotate=interaction.option("action") == ROTATE)
        if interaction.command == "usage":
            return await self.usage(user_id)
        return "Unknown command."

    def _gate(self, interaction: Interaction) -> str | None:
        discord = self._settings.discord
        if discord.guild_id is not None and interaction.guild_id != discord.guild_id:
            return self._refuse(
                "not_in_guild", interaction, "This command works in our server only."
            )
        role = discord.required_role
        member = interaction.member
        if role is not None and (member is None or role not in member.roles):
            return self._refuse("missing_role", interaction, "You need the required role first.")
        return None

    def _refuse(self, reason: str, interaction: Interaction, message: str) -> str:
        self.refusals[reason] += 1
        logger.info("self-service refused (%s) for discord user %s", reason, interaction.user_id)
        return message

    async def key(self, user_id: str, *, rotate: bool) -> str:
        policy_settings = self._settings.self_service
        policy = KeyPolicy(
            rpm=policy_settings.rpm,
            tpm=policy_settings.tpm,
            daily_token_budget=policy_settings.daily_token_budget,
            models=policy_settings.models,
        )
        days = policy_settings.expires_days
        expires = None if days is None else datetime.now(UTC) + timedelta(days=days)
        owner = owner_of(user_id)
        issue = await self._store.owners.issue(
            owner,
            owner,
            policy,
            expires,
            rotate=rotate,
            hourly_cap=policy_settings.max_new_keys_per_hour,
            daily_cap=policy_settings.max_keys_per_user_per_day,
        )
        if issue.outcome is Outcome.BLOCKED:
            self.refusals["blocked"] += 1
            logger.info("self-service refused (blocked) for discord user %s", user_id)
            return "You cannot get a key here."
        if issue.outcome is Outcome.CAPPED:
            self.refusals["capped"] += 1
            logger.warning(
                "self-service refused (capped): %s keys issued in the last hour",
                policy_settings.max_new_keys_per_hour,
            )
            return "Too many keys were handed out in the last hour; please try again later."
        if issue.outcome is Outcome.USER_CAPPED:
            self.refusals["user_capped"] += 1
            logger.info("self-service refused (user_capped) for discord user %s", user_id)
            return "You were given enough keys for today; please try again tomorrow."
        if issue.outcome is Outcome.EXISTS:
            assert issue.key is not None
            return (
                f"You already have a key (`{issue.key.prefix}...`); it is shown only once. "
                "Lost it? `/key action:rotate` revokes it and gives you a new one."
            )
        assert issue.key is not None and issue.secret is not None
        for changed in (*issue.revoked, issue.key):
            await self._changed(changed)
        self.issued_total += 1
        logger.info("self-service key %s issued to discord user %s", issue.key.id, user_id)
        return self._issued_message(issue.secret, rotated=bool(issue.revoked))

    def _issued_message(self, secret: str, *, rotated: bool) -> str:
        lines = ["Your old key no longer works."] if rotated else []
        lines.append(f"Your key (shown only now: keep it secret): `{secret}`")
        url = self._settings.self_service.public_url
        if url is not None:
            lines.append(f"Use it with any OpenAI SDK: base_url `{url.rstrip('/')}/v1`")
        lines.append("`/usage` shows how much you have used and what is left.")
        return "\n".join(lines)

    async def usage(self, user_id: str) -> str:
        now = datetime.now(UTC)
        active = [
            key for key in await self._store.owners.keys(owner_of(user_id)) if key.is_active(now)
        ]
        if not active:
            return "You have no key yet: `/key` gets you one."
        return (await Standing.of(self._store, active[0], now)).summary()

    async def block(self, user_id: str) -> tuple[ClientKey, ...]:
        """Block a Discord user: their keys are revoked at once, and ``/key`` refuses them."""
        revoked = await self._store.owners.block(owner_of(user_id))
        for key in revoked:
            await self._changed(key)
        return revoked

    async def _changed(self, key: ClientKey) -> None:
        # As the admin API does: here at once, on the other replicas through Redis or their poll.
        self._keys.apply(key)
        if self._shared is not None:
            await self._shared.key_changed(key.id)
