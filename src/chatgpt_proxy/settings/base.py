"""What every settings section is: frozen once validated, and closed to keys it does not know.

A misspelt key is an error naming it, not a setting silently left at its default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
