"""Last line of defence for secret hygiene: scrub known secrets from every log record.

The code never logs a secret on purpose; this filter makes sure a library message that
quotes one (a driver error, a warning) cannot leak it either.
"""

from __future__ import annotations

import logging

REDACTED = "[REDACTED]"
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words and numbers

_secrets: set[str] = set()


def register_secret(value: bytes | str) -> None:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= _MIN_SECRET_LENGTH:
        _secrets.add(text)


def scrub(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Renders the message once, scrubbed, so formatters never see the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = scrub(record.getMessage())
            record.args = None
            for key, value in vars(record).items():  # fields passed with extra=
                if key not in _STANDARD_ATTRS and isinstance(value, str):
                    setattr(record, key, scrub(value))
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True
