"""chatgpt-proxy: a self-hosted, OpenAI-compatible reverse proxy."""

__version__ = "0.1.0"
