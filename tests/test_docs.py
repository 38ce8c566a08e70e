"""The settings document themselves: every field has a description and is in the example."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from chatgpt_proxy.settings import Settings, UpstreamSettings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    """The pydantic models in an annotation: itself, or inside tuple[...], dict[...], X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            yield from _models_in(argument)


def _walk(
    model: type[BaseModel], path: str = "", *, as_keys: bool = True
) -> Iterator[tuple[str, str, object, bool]]:
    """(dotted path, field name, field info, shown as a YAML key) of every field, recursively.

    Fields of a model that is a section (``server:``) or the upstream example are YAML keys of
    the example; those of a model only found inside a mapping or list (a moderation rule, a
    price) are described in the prose of their container.
    """
    for name, field in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        yield dotted, name, field, as_keys
        annotation = field.annotation
        direct = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        for inner in _models_in(annotation):
            keys = as_keys and (direct or inner is UpstreamSettings)
            yield from _walk(inner, dotted, as_keys=keys)


FIELDS = list(_walk(Settings))


def test_the_walk_reaches_nested_models() -> None:
    paths = {path for path, *_ in FIELDS}
    assert {"server.port", "upstreams.keys", "moderation.rules.words", "auth.admin_key"} <= paths


@pytest.mark.parametrize(("path", "name", "field", "as_key"), FIELDS, ids=[f[0] for f in FIELDS])
def test_every_field_has_a_description(path: str, name: str, field: object, as_key: bool) -> None:
    description = getattr(field, "description", None)
    assert isinstance(description, str) and description.strip(), f"{path} has no description"


@pytest.mark.parametrize(("path", "name", "field", "as_key"), FIELDS, ids=[f[0] for f in FIELDS])
def test_every_field_is_in_the_example(path: str, name: str, field: object, as_key: bool) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    if as_key:
        pattern = rf"^\s*(- )?{re.escape(name)}:"
        assert re.search(pattern, text, re.MULTILINE), f"{path} is not a key of {EXAMPLE.name}"
    else:
        assert re.search(rf"\b{re.escape(name)}\b", text), f"{path} is not in {EXAMPLE.name}"


def test_every_key_of_the_example_is_a_field() -> None:
    names = {name for _, name, _, _ in FIELDS}
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = re.findall(r"^\s*(?:- )?([A-Za-z_][A-Za-z0-9_]*):", text, re.MULTILINE)
    assert keys
    unknown = sorted(set(keys) - names)
    assert not unknown, f"keys in {EXAMPLE.name} that are no setting: {unknown}"
