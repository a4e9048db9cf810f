"""``COPY ... TO STDOUT`` read straight from libpq, a block of rows at a time.

The server sends one message per row, and psycopg's ``Copy`` iterator hands each one over through its
generic wait machinery: about 12 µs a row here, most of the time of scoring a table of narrow rows.
This reads the same messages with libpq's non-blocking calls on the connection's own ``PGconn`` and
waits for the socket with ``select`` (which, unlike libpq's blocking calls, lets other threads run:
the lease heartbeat must), joining rows into blocks of about ``BLOCK_BYTES``.

The statement runs on a connection psycopg manages, in the caller's transaction, with nothing else in
flight on it. An error of the statement is raised as the psycopg error of its result (so the one
translation in db/errors.py applies); a consumer that stops early (a bad row, an interrupt) closes the
generator, which reads the rest of the rows so that the connection is usable again.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result

BLOCK_BYTES = 1 << 20
_POLL_SECONDS = 1.0


def _wait_readable(pgconn: pq.abc.PGconn) -> None:
    select.select([pgconn.socket], [], [], _POLL_SECONDS)
    pgconn.consume_input()


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    pgconn.consume_input()
    while pgconn.is_busy():
        _wait_readable(pgconn)
    return pgconn.get_result()


def _finish(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The statement's final result, after which the connection is idle again."""
    final = _next_result(pgconn)
    while _next_result(pgconn) is not None:
        pass
    return final


def copy_out(conn: psycopg.Connection, statement: bytes) -> Iterator[bytes]:
    """The rows of ``statement`` (a complete ``COPY ... TO STDOUT``), in blocks of whole rows."""
    pgconn = conn.pgconn
    encoding = conn.info.encoding
    pgconn.send_query(statement)
    first = _next_result(pgconn)
    if first is None or first.status != pq.ExecStatus.COPY_OUT:
        _finish(pgconn)
        if first is not None and first.status == pq.ExecStatus.FATAL_ERROR:
            raise error_from_result(first, encoding=encoding)
        raise psycopg.ProgrammingError("the statement is not a COPY TO STDOUT")
    done = False
    try:
        parts: list[bytes] = []
        size = 0
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                parts.append(bytes(data))
                size += nbytes
                if size >= BLOCK_BYTES:
                    yield b"".join(parts)
                    parts, size = [], 0
            elif nbytes == 0:
                _wait_readable(pgconn)
            else:  # -1: the end of the rows; -2: an error, reported by the final result
                break
        done = True
        if parts:
            yield b"".join(parts)
    finally:
        while not done:  # stopped early: the rest of the rows, unread
            nbytes, _ = pgconn.get_copy_data(1)
            if nbytes == 0:
                _wait_readable(pgconn)
            done = nbytes < 0
        final = _finish(pgconn)
    if final is not None and final.status == pq.ExecStatus.FATAL_ERROR:
        raise error_from_result(final, encoding=encoding)
