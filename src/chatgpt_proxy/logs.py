"""Logging set-up, with every record scrubbed of upstream keys before it is written.

The proxy never formats a key into a message on purpose; the filter is the second line of
defence for what libraries put in exception texts (DESIGN §3.1).
"""

from __future__ import annotations

import logging
import sys

from chatgpt_proxy.redaction import Redactor


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self._redactor.scrub(message)
        record.args = None
        return True


def configure_logging(level: str, redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by the proxy's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
