"""Connecting to PostgreSQL/Greenplum with bounded retries, and classifying what went wrong."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

import psycopg
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from ..credentials import DbCredentials
from ..errors import AuthenticationError, ConfigError, DatabaseUnavailable
from ..text import printable
from .errors import Transient, rejected_setting

log = logging.getLogger(__name__)

# libpq reports these without a SQLSTATE; retrying them cannot help.
_AUTH_MARKERS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects connection",  # an explicit "reject" line, common on administered clusters
    "authentication failed",
    "does not support password authentication",
    "server did not complete authentication",
    "certificate verify failed",
    'server certificate for "',  # the server's certificate names another host
    "no password supplied",
)
# Local problems: checked first, because libpq's advice on them mentions server certificates too.
_CLIENT_CONFIG_MARKERS = ("root certificate file", "could not read root certificate", "invalid sslmode")
_CONFIG_MARKERS = ("does not exist", "invalid connection option")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a database that is down: at most ``attempts`` tries within ``max_seconds``."""

    attempts: int = 5
    max_seconds: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 8.0

    def retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_seconds),
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait) + wait_random(0, self.initial_wait),
            retry=retry_if_exception_type(Transient),
            reraise=False,
        )


def classify_connect_error(exc: psycopg.Error, creds: DbCredentials) -> Exception:
    """Map a connection failure to our error types; the message never carries the password."""
    text = str(exc)
    where = printable(f"{creds.user}@{creds.host}:{creds.port}/{creds.dbname}")
    lowered = text.lower()
    setting = rejected_setting(text)
    if setting is not None:
        return setting
    if any(marker in lowered for marker in _CLIENT_CONFIG_MARKERS):
        return ConfigError(f"cannot connect to {where}: {_last_line(text)}")
    unknown_role = 'role "' in lowered and "does not exist" in lowered
    if unknown_role or any(marker in lowered for marker in _AUTH_MARKERS):
        return AuthenticationError(f"database refused {where}: {_last_line(text)}")
    if any(marker in lowered for marker in _CONFIG_MARKERS):
        return ConfigError(f"cannot connect to {where}: {_last_line(text)}")
    return Transient(f"database {where} unavailable: {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    detail = lines[0] if lines else "unknown error"
    # libpq prefixes each attempt; keep the server's reason.
    for marker in ("FATAL:", "failed:"):
        if marker in detail:
            detail = detail.rsplit(marker, 1)[1].strip()
    return printable(detail, 300)


def check_ca_file(path: str | None) -> None:
    """libpq reads the CA file itself: make sure it is a regular file first, so a FIFO cannot hang it."""
    if not path or path == "system":
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f'root certificate file "{printable(path)}" does not exist') from None
    except OSError as exc:
        raise ConfigError(f"root certificate file {printable(path)} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"root certificate file {printable(path)} is not a regular file")


def connect(
    creds: DbCredentials,
    policy: RetryPolicy,
    *,
    statement_timeout_ms: int = 60_000,
    lock_timeout_ms: int = 30_000,
    application_name: str = "ckpt-eval",
) -> psycopg.Connection:
    """Open an autocommit connection, retrying transient failures; exit 75 when they persist."""
    check_ca_file(creds.sslrootcert)
    kwargs = creds.connect_kwargs()
    kwargs.setdefault("connect_timeout", 10)
    kwargs["application_name"] = application_name
    kwargs["options"] = f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms}"
    log.debug(
        "connecting to %s@%s:%s/%s (sslmode %s, connect_timeout %ss)",
        creds.user,
        creds.host,
        creds.port,
        creds.dbname,
        creds.sslmode or "prefer",
        kwargs["connect_timeout"],
    )
    last: Exception | None = None
    try:
        for attempt in policy.retrying():
            with attempt:
                try:
                    return psycopg.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
                except psycopg.OperationalError as exc:
                    error = classify_connect_error(exc, creds)
                    if not isinstance(error, Transient):
                        raise error from None
                    last = error
                    log.warning("%s (attempt %d of %d)", error, attempt.retry_state.attempt_number, policy.attempts)
                    raise error from None
    except RetryError:
        pass
    raise DatabaseUnavailable(f"{last} (gave up after {policy.attempts} attempts or {policy.max_seconds:g}s)")
