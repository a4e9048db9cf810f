"""The one escaping rule for untrusted text (registry values, file names, library error messages).

Every character that is not printable is shown as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``):
C0 and C1 controls, DEL, line and paragraph separators, and format characters such as bidi
overrides. Printable non-ASCII text (accents, CJK) is kept as it is. Nothing that reaches a
terminal or a log line through this function can move the cursor, retitle a window, forge a
second log line or reorder what is shown.
"""

from __future__ import annotations

ELLIPSIS = "..."


def _escape_char(char: str) -> str:
    return ascii(char)[1:-1]


def printable(value: object, limit: int | None = None) -> str:
    """``value`` as text with every non-printable character escaped, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + ELLIPSIS
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


def quoted(value: object, limit: int | None = 120) -> str:
    """``printable`` in single quotes: for naming an untrusted value inside a message."""
    return f"'{printable(value, limit)}'"


def printable_lines(text: str) -> str:
    """Escape each line of a multi-line text (a traceback) but keep the line breaks themselves."""
    return "\n".join(printable(line) for line in text.split("\n"))
