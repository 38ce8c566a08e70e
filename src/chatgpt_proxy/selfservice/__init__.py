"""Self-service keys for a community: Discord's ``/key`` and ``/usage`` slash commands over
signed HTTP interactions, the abuse cap, and blocking users.

``signature`` checks a request before ``interactions`` parses it; ``service`` does what the
commands ask; ``endpoint`` answers within Discord's 3 seconds (deferring when slower);
``discord_api`` registers the commands and sends follow-ups; ``standing`` is a key's usage
and what its limits leave, also behind ``GET /me``.
"""
