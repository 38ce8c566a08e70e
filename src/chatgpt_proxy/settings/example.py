"""``config.example.yaml``, generated from the settings' own descriptions so it cannot drift."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from chatgpt_proxy.settings.sections import DEFAULT_BASE_URL, Settings, UpstreamSettings


def example_yaml() -> str:
    """The documented example configuration, generated from the fields' descriptions."""
    out = [
        "# chatgpt-proxy configuration. Every value may be ${ENV_VAR}.",
        "# Generated from src/chatgpt_proxy/settings/: edit the descriptions there.",
        "",
    ]
    _describe(Settings, out, indent=0)
    return "\n".join(out) + "\n"


_EXAMPLE_VALUES: dict[str, Any] = {
    "upstreams": [
        {
            "name": "openai",
            "base_url": DEFAULT_BASE_URL,
            "keys": ["${OPENAI_API_KEY}"],
            "models": ["*"],
            "strategy": "round_robin",
        }
    ],
    "admin_key": "${CHATGPT_PROXY_ADMIN_KEY}",
}


def _describe(model: type[BaseModel], out: list[str], indent: int) -> None:
    pad = " " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append(f"{pad}# {field.description}")
            out.append(f"{pad}{name}:")
            _describe(annotation, out, indent + 2)
            continue
        if name == "upstreams":
            out.append(f"{pad}# {field.description}")
            out.append(f"{pad}upstreams:")
            for line in _upstream_example():
                out.append(f"{pad}  {line}")
            continue
        value = _EXAMPLE_VALUES.get(name, field.default)
        if isinstance(value, SecretStr) or value is None:
            value = _EXAMPLE_VALUES.get(name)
        out.append(f"{pad}{name}: {_render(value)}  # {field.description}")


def _upstream_example() -> list[str]:
    example = _EXAMPLE_VALUES["upstreams"][0]
    lines = []
    for index, (name, field) in enumerate(UpstreamSettings.model_fields.items()):
        value = example.get(name, field.default)
        lead = "- " if index == 0 else "  "
        lines.append(f"{lead}{name}: {_render(value)}  # {field.description}")
    return lines


def _render(value: Any) -> str:
    rendered = yaml.safe_dump(value, default_flow_style=True).strip()
    return rendered.removesuffix("...").strip() or "null"
