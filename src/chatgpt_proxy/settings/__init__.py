"""The one place configuration is read: a YAML file, ``${ENV}`` interpolation, or env vars alone.

Every setting is a typed field with a default and a description; those descriptions are the
documentation, and ``config.example.yaml`` is generated from them (``example_yaml()``), so the
two cannot drift apart::

    settings = load_settings("config.yaml")      # validated once, immutable
    settings.server.port                         # 3000

Errors name the field and, for a file, the line it stands on.
"""

from chatgpt_proxy.settings.community import DiscordSettings, SelfServiceSettings
from chatgpt_proxy.settings.console import ConsoleSettings
from chatgpt_proxy.settings.example import example_yaml
from chatgpt_proxy.settings.loading import load_settings, parse_settings
from chatgpt_proxy.settings.moderation import ModerationSettings, RuleSettings
from chatgpt_proxy.settings.sections import (
    DEFAULT_BASE_URL,
    AuthSettings,
    LimitSettings,
    PoolSettings,
    PriceSettings,
    RetrySettings,
    ServerSettings,
    Settings,
    TimeoutSettings,
    UpstreamSettings,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AuthSettings",
    "ConsoleSettings",
    "DiscordSettings",
    "LimitSettings",
    "ModerationSettings",
    "PoolSettings",
    "PriceSettings",
    "RetrySettings",
    "RuleSettings",
    "SelfServiceSettings",
    "ServerSettings",
    "Settings",
    "TimeoutSettings",
    "UpstreamSettings",
    "example_yaml",
    "load_settings",
    "parse_settings",
]
