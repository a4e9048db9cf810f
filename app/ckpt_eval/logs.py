"""Logging to stderr, plain or JSON, always through the redacting filter."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .redaction import RedactingFilter
from .text import printable, printable_lines

LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has; anything else was passed through `extra=` and is kept in JSON.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class PlainFormatter(logging.Formatter):
    """One line per record: the message (which may quote registry values, file names or library
    errors) has every non-printable character escaped, so it cannot forge lines or drive the terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return printable_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return printable_lines(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:  # rendered earlier (the redaction filter): escape it as well
            record.exc_text = printable_lines(record.exc_text)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; text is escaped by the same rule as plain logs before JSON encodes it,
    so a consumer that prints a field raw (``jq -r .message``) still shows no control character."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = printable(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = printable_lines(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = printable_lines(record.exc_text)
        return json.dumps(entry, default=lambda value: printable(value))


def configure(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter at debug level is noise, and may echo connection details.
    for noisy in ("psycopg", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    logging.captureWarnings(True)
