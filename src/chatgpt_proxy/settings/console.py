"""The settings of the operator's web console: its sessions and sign-in."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from chatgpt_proxy.settings.base import _Section


class ConsoleSettings(_Section):
    enabled: bool = Field(
        True,
        description="serve the operator's web console at /admin/ (it opens only with "
        "auth.admin_key set)",
    )
    admin_password_hash: SecretStr | None = Field(
        None,
        description="sign in with this password as well as the admin key: its scrypt hash, "
        "from `chatgpt-proxy console hash-password`",
    )
    session_idle_minutes: float = Field(
        30.0, gt=0, description="a console session unused this long ends"
    )
    session_max_hours: float = Field(
        12.0, gt=0, description="a console session ends this long after sign-in, however used"
    )
    secure_cookie: bool | None = Field(
        None,
        description="mark the session cookie Secure (HTTPS only); default: when the request "
        "came over HTTPS (set true behind a reverse proxy that terminates TLS)",
    )
    failed_login_limit: int = Field(
        5, ge=1, description="failed sign-ins from one address within a minute before it waits"
    )
    failed_login_block_seconds: float = Field(
        300.0, gt=0, description="how long an address that failed too often waits to sign in"
    )

    @field_validator("admin_password_hash")
    @classmethod
    def _a_hash(cls, value: SecretStr | None) -> SecretStr | None:
        parts = value.get_secret_value().split("$") if value is not None else []
        if value is not None and (len(parts) != 6 or parts[0] != "scrypt"):
            raise ValueError("not a hash from `chatgpt-proxy console hash-password`")
        return value
