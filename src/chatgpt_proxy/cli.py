"""The ``chatgpt-proxy`` command: serve, keys, check, migrate, discord.

Key commands call the same key store and request parsing as the admin API, so a key made
here and one made over HTTP are the same thing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import aiohttp
import click
import orjson

from chatgpt_proxy.console.passwords import hash_password
from chatgpt_proxy.errors import ConfigError, ProxyError
from chatgpt_proxy.keystore import ClientKey, KeyPolicy, KeyStore
from chatgpt_proxy.keystore.requests import parse_create, parse_update
from chatgpt_proxy.limits.policy import default_policy
from chatgpt_proxy.logs import configure_logging
from chatgpt_proxy.redaction import Redactor
from chatgpt_proxy.selfservice.discord_api import DiscordApi
from chatgpt_proxy.selfservice.service import is_discord_id, owner_of
from chatgpt_proxy.server import run
from chatgpt_proxy.settings import Settings, load_settings
from chatgpt_proxy.shared_state import announce_key_change
from chatgpt_proxy.upstream.prober import probe_all
from chatgpt_proxy.upstream.router import Router

P = ParamSpec("P")
T = TypeVar("T")

# Each option of `serve` (and --config of every command) may come from an environment variable
# instead: a container's command line is fixed in its image (exec form, so that SIGTERM reaches
# the proxy with no shell in between), while its environment is the operator's to set.
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="CHATGPT_PROXY_CONFIG",
    show_envvar=True,
    help="config file (default: ./config.yaml if present, else environment variables)",
)


def _friendly(function: Callable[P, T]) -> Callable[P, T]:
    """Configuration and store errors end the command with their message, not a traceback."""

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        except ProxyError as exc:
            raise click.ClickException(exc.message) from exc

    return wrapper


def _settings(config_path: str | None) -> Settings:
    return load_settings(config_path)


def _with_store(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await KeyStore.open(settings.database_url)
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chatgpt-proxy")
def main() -> None:
    """A self-hosted, OpenAI-compatible reverse proxy."""


@main.command()
@config_option
@click.option(
    "--host",
    default=None,
    envvar="CHATGPT_PROXY_HOST",
    show_envvar=True,
    help="address to bind (default from config: 127.0.0.1)",
)
@click.option(
    "--port",
    type=int,
    default=None,
    envvar="CHATGPT_PROXY_PORT",
    show_envvar=True,
    help="port to bind (default from config: 3000)",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    envvar="CHATGPT_PROXY_WORKERS",
    show_envvar=True,
    help="processes to run (default from config: 1)",
)
@_friendly
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the proxy."""
    settings = _settings(config_path)
    configure_logging(
        settings.server.log_level,
        Redactor(Router.from_settings(settings.upstreams, settings.pool).secrets()),
        json=settings.server.log_format == "json",
    )

    async def first_key(store: KeyStore) -> str | None:
        # Once, even when several replicas start together on an empty database.
        created = await store.create_if_empty("default", default_policy(settings.limits))
        return None if created is None else created[1]

    secret = _with_store(settings, first_key)
    if secret is not None:
        click.echo("No client keys yet: created one named 'default'. It is shown only now:")
        click.echo(secret)
    run(settings, host=host, port=port, workers=workers)


@main.group()
def keys() -> None:
    """Issue, list, change and revoke client keys."""


def _policy_options(function: Callable[P, T]) -> Callable[P, T]:
    options = [
        click.option("--rpm", type=int, help="requests per minute"),
        click.option("--tpm", type=int, help="tokens per minute"),
        click.option("--max-concurrency", type=int, help="requests in flight at once"),
        click.option("--daily-tokens", "daily_token_budget", type=int, help="tokens per day"),
        click.option("--total-tokens", "total_token_budget", type=int, help="tokens in total"),
        click.option("--daily-cost", "daily_cost_budget", type=float, help="USD per day"),
        click.option("--total-cost", "total_cost_budget", type=float, help="USD in total"),
        click.option("--models", help="allowed models, comma-separated globs (gpt-4o*,o3)"),
        click.option("--moderation", type=click.Choice(["exempt", "strict"]), help="policy"),
        click.option("--expires", "expires_at", help="expiry: 2027-01-31 or an ISO time"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _request_fields(fields: dict[str, Any]) -> dict[str, Any]:
    data = {name: value for name, value in fields.items() if value is not None}
    if "models" in data:
        data["models"] = [m.strip() for m in data["models"].split(",") if m.strip()]
    return data


def _show(key: ClientKey, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(key.public_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    public = key.public_dict()
    for name, value in public.items():
        if value not in (None, [], ()):
            click.echo(f"{name}: {value}")


# The audit log's actor for what the commands do.
CLI_ACTOR = "cli"


@keys.command("create")
@click.option("--name", required=True, help="who or what the key is for")
@_policy_options
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
@config_option
@_friendly
def keys_create(name: str, as_json: bool, config_path: str | None, **fields: Any) -> None:
    """Issue a client key; the key itself is printed once, as the last line."""
    settings = _settings(config_path)
    wanted = parse_create(
        {"name": name, **_request_fields(fields)}, default_policy(settings.limits)
    )
    assert wanted.policy is not None and wanted.name is not None
    expires = None if wanted.expires_at is ... else wanted.expires_at

    async def create(store: KeyStore) -> tuple[ClientKey, str]:
        created = await store.create(name, wanted.policy or KeyPolicy(), expires)
        await store.audit.record(CLI_ACTOR, "key.create", target=created[0].id)
        await announce_key_change(settings, created[0].id)
        return created

    key, secret = _with_store(settings, create)
    if as_json:
        click.echo(orjson.dumps({**key.public_dict(), "key": secret}).decode())
        return
    click.echo(f"created {key.id} ({key.name}); the key is shown only now:", err=False)
    click.echo(secret)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@config_option
@_friendly
def keys_list(as_json: bool, config_path: str | None) -> None:
    """List client keys (their prefixes, never the keys)."""
    listed = _with_store(_settings(config_path), lambda store: store.list())
    if as_json:
        click.echo(orjson.dumps([key.public_dict() for key in listed]).decode())
        return
    click.echo(f"{'ID':<22} {'NAME':<24} {'PREFIX':<12} {'STATE':<8} {'OWNER':<28} MODELS")
    for key in listed:
        public = key.public_dict()
        models = ",".join(key.policy.models) or "*"
        owner = key.owner or "-"
        click.echo(
            f"{key.id:<22} {key.name[:24]:<24} {key.prefix:<12} {public['state']:<8} "
            f"{owner:<28} {models}"
        )


@keys.command("revoke")
@click.argument("key_id")
@config_option
@_friendly
def keys_revoke(key_id: str, config_path: str | None) -> None:
    """Revoke a client key: refused by every replica at once with Redis, else within seconds."""
    settings = _settings(config_path)

    async def revoke(store: KeyStore) -> ClientKey | None:
        key = await store.revoke(key_id)
        if key is not None:
            await store.audit.record(CLI_ACTOR, "key.revoke", target=key.id)
            await announce_key_change(settings, key.id)
        return key

    key = _with_store(settings, revoke)
    if key is None:
        raise click.ClickException(f"no client key with id {key_id!r}")
    click.echo(f"revoked {key.id} ({key.name})")


@keys.command("update")
@click.argument("key_id")
@click.option("--name", default=None, help="new name")
@_policy_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@config_option
@_friendly
def keys_update(
    key_id: str, name: str | None, as_json: bool, config_path: str | None, **fields: Any
) -> None:
    """Change a client key's name, limits, models or expiry."""
    data = _request_fields({"name": name, **fields})

    async def update(store: KeyStore) -> ClientKey | None:
        key = await store.get(key_id)
        if key is None:
            return None
        change = parse_update(key, data)
        updated = await store.update(
            key.id, name=change.name, policy=change.policy, expires_at=change.expires_at
        )
        if updated is not None:
            fields = ", ".join(sorted(name for name in data if name != "name")) or "-"
            await store.audit.record(
                CLI_ACTOR, "key.update", target=updated.id, detail=f"fields: {fields}"
            )
            await announce_key_change(settings, updated.id)
        return updated

    settings = _settings(config_path)
    key = _with_store(settings, update)
    if key is None:
        raise click.ClickException(f"no client key with id {key_id!r}")
    _show(key, as_json)


@keys.command("usage")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@config_option
@_friendly
def keys_usage(key_id: str, as_json: bool, config_path: str | None) -> None:
    """Show a key's usage by day and model."""
    rows = _with_store(_settings(config_path), lambda store: store.usage.summary(key_id))
    if as_json:
        click.echo(orjson.dumps([row.to_dict() for row in rows]).decode())
        return
    click.echo(
        f"{'DAY':<11} {'MODEL':<28} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>11} "
        f"{'TOTAL':>10} {'COST USD':>10}"
    )
    for row in rows:
        click.echo(
            f"{row.day.isoformat():<11} {row.model[:28]:<28} {row.requests:>9} "
            f"{row.prompt_tokens:>10} {row.completion_tokens:>11} {row.total_tokens:>10} "
            f"{row.cost:>10.4f}"
        )


@main.command()
@config_option
@_friendly
def migrate(config_path: str | None) -> None:
    """Apply the database migrations (serve also does it at start)."""

    async def noop(store: KeyStore) -> None:
        return None

    _with_store(_settings(config_path), noop)
    click.echo("database is up to date")


@main.command()
@config_option
@_friendly
def check(config_path: str | None) -> None:
    """Validate the configuration and probe every upstream key (by alias, never the key)."""
    settings = _settings(config_path)
    click.echo(f"configuration ok: {len(settings.upstreams)} upstream(s)")
    results = asyncio.run(probe_all(settings))
    failed = False
    for alias, health in results:
        click.echo(f"{alias:<24} {health}")
        failed = failed or health != "ok"
    if failed:
        sys.exit(1)


@main.group()
def console() -> None:
    """The operator's web console at /admin/."""


@console.command("hash-password")
def console_hash_password() -> None:
    """Print the hash of a console password (asked twice, never echoed) for
    console.admin_password_hash."""
    password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise click.ClickException("use at least 12 characters")
    click.echo(hash_password(password))


@main.group()
def discord() -> None:
    """Self-service keys through a Discord application."""


@discord.command("register")
@config_option
@_friendly
def discord_register(config_path: str | None) -> None:
    """Register the /key and /usage commands (in discord.guild_id only, when set)."""
    settings = _settings(config_path)

    async def register() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            return await DiscordApi(session, settings.discord).register()

    commands = asyncio.run(register())
    where = f"guild {settings.discord.guild_id}" if settings.discord.guild_id else "every guild"
    names = ", ".join(f"/{command.get('name')}" for command in commands)
    click.echo(f"registered {names or 'no commands'} for {where}")


@discord.command("block")
@click.argument("user_id")
@config_option
@_friendly
def discord_block(user_id: str, config_path: str | None) -> None:
    """Block a Discord user: their keys are revoked and /key refuses them."""
    settings = _settings(config_path)
    _discord_user(user_id)

    async def block(store: KeyStore) -> tuple[ClientKey, ...]:
        revoked = await store.owners.block(owner_of(user_id))
        for key in revoked:
            await announce_key_change(settings, key.id)
        return revoked

    revoked = _with_store(settings, block)
    click.echo(f"blocked discord user {user_id}; revoked {len(revoked)} key(s)")


@discord.command("unblock")
@click.argument("user_id")
@config_option
@_friendly
def discord_unblock(user_id: str, config_path: str | None) -> None:
    """Let a blocked Discord user ask for a key again (revoked keys stay revoked)."""
    _discord_user(user_id)
    if not _with_store(_settings(config_path), lambda s: s.owners.unblock(owner_of(user_id))):
        raise click.ClickException(f"discord user {user_id} was not blocked")
    click.echo(f"unblocked discord user {user_id}")


def _discord_user(user_id: str) -> None:
    if not is_discord_id(user_id):
        raise click.BadParameter("a Discord user id is a number of up to 20 digits")
