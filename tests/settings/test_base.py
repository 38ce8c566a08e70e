"""What every settings section shares: frozen once validated, closed to keys it does not know."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import chatgpt_proxy.settings as settings_package
from chatgpt_proxy.settings import ServerSettings, Settings
from chatgpt_proxy.settings.base import _Section


class _Example(_Section):
    size: int = 1


def _settings(**data: Any) -> Settings:
    return Settings.model_validate({"upstreams": [{"name": "openai", "keys": ["sk-x"]}], **data})


def _sections() -> list[type[BaseModel]]:
    found = (getattr(settings_package, name) for name in settings_package.__all__)
    return [item for item in found if isinstance(item, type) and issubclass(item, BaseModel)]


def test_a_section_is_frozen_once_validated() -> None:
    section = _Example(size=2)
    with pytest.raises(ValidationError, match="frozen"):
        section.size = 3  # type: ignore[misc]
    assert section.size == 2
    assert hash(section) == hash(_Example(size=2))  # frozen models can key a cache


def test_a_section_refuses_a_key_it_does_not_know() -> None:
    with pytest.raises(ValidationError, match="sizee"):
        _Example.model_validate({"sizee": 2})


def test_sections_are_frozen_and_closed_to_unknown_keys() -> None:
    settings = _settings()
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="typo"):
        ServerSettings.model_validate({"typo": 1})
    with pytest.raises(ValidationError):
        _settings(sevrer={})


@pytest.mark.parametrize("section", _sections(), ids=lambda section: section.__name__)
def test_every_public_section_is_one(section: type[BaseModel]) -> None:
    assert issubclass(section, _Section)
    assert section.model_config.get("frozen") is True
    assert section.model_config.get("extra") == "forbid"
