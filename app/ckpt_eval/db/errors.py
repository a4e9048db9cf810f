"""The one translation of database errors into ckpt-eval's errors (and so into exit codes).

Every psycopg error that leaves ``db/`` passes through :func:`translate`: what a retry may fix
becomes ``Transient`` (retried, then exit 75), what the operator must fix becomes a
configuration or authentication error naming the object and what to do, and only what points
at a defect in ckpt-eval itself keeps exit 70. The server's text is escaped and bounded: it may
quote values from the registry.
"""

from __future__ import annotations

import psycopg

from ..errors import (
    AuthenticationError,
    CkptEvalError,
    ConfigError,
    DatabasePrivilegeError,
    DatabaseRejected,
    DataError,
    SchemaMismatch,
)
from ..text import printable


class Transient(Exception):
    """An operation failed in a way a retry may fix (connection lost, server restarting, timeouts)."""


# SQLSTATE classes and codes: https://www.postgresql.org/docs/current/errcodes-appendix.html
_TRANSIENT_CLASSES = ("08", "53", "57", "58", "XX")  # connection, resources, operator intervention, system
_TRANSIENT_CODES = {"40001", "40P01", "55P03", "55006"}  # serialization, deadlock, lock/object in use
_SCHEMA_CODES = {"3F000", "42P01", "42883", "42703", "42704"}  # schema, table, function, column, object missing

_FIX_PRIVILEGE = (
    "the deployment grants exactly what the job needs: apply init.sql again (ansible-playbook playbooks/deploy.yml), "
    "or ask the schema owner to grant it"
)
_FIX_SCHEMA = "apply this version's init.sql to the database (ansible-playbook playbooks/deploy.yml does)"


def server_message(exc: psycopg.Error, limit: int = 300) -> str:
    """The server's primary message (one line, escaped, bounded)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = str(exc).strip().splitlines()
    text = primary or (lines[0] if lines else exc.__class__.__name__)
    return printable(" ".join(text.split()), limit)


def translate(exc: psycopg.Error, what: str, role: str) -> Exception:
    """Map an error raised while ``what`` ran as database role ``role``; the result is raised by the caller."""
    state = exc.sqlstate or ""
    detail = server_message(exc)
    if not state or isinstance(exc, psycopg.InterfaceError):
        # libpq reports a broken connection without a SQLSTATE.
        return Transient(f"database connection lost during {what}: {detail}")
    if state == "57014":
        return Transient(f"a statement ran into the statement timeout during {what} (--statement-timeout): {detail}")
    if state in _TRANSIENT_CODES or state[:2] in _TRANSIENT_CLASSES:
        return Transient(f"database unavailable during {what}: {detail} (SQLSTATE {state})")
    if state[:2] == "28":
        return AuthenticationError(f"the database refused role {role} during {what}: {detail}")
    if state == "42501":
        return DatabasePrivilegeError(
            f"database role {role} lacks a privilege during {what}: {detail}; {_FIX_PRIVILEGE}"
        )
    if state in _SCHEMA_CODES:
        return SchemaMismatch(
            f"the ckpt_eval schema does not match this version of ckpt-eval during {what}: {detail}; {_FIX_SCHEMA}"
        )
    if state == "25006":
        return ConfigError(f"the database is read-only during {what} (a standby?): {detail}; connect to the primary")
    if state == "0A000":
        return ConfigError(f"the database server does not support a feature used during {what}: {detail}")
    if state[:2] == "22":
        return DataError(f"the database refused a value during {what}: {detail} (SQLSTATE {state})")
    return DatabaseRejected(f"the database rejected ckpt-eval's statement during {what}: {detail} (SQLSTATE {state})")


def is_lost_race(exc: psycopg.Error) -> bool:
    """Greenplum with the global deadlock detector reports concurrent updates of one row as an error."""
    return exc.sqlstate in ("40001", "40P01") or "concurrent update" in str(exc).lower()


def rejected_setting(text: str) -> CkptEvalError | None:
    """A session setting refused at connection time (``options``): configuration, not an outage."""
    lowered = text.lower()
    if "invalid value for parameter" in lowered or "unrecognized configuration parameter" in lowered:
        return ConfigError(f"the database refused a session setting: {printable(' '.join(text.split()), 300)}")
    return None
