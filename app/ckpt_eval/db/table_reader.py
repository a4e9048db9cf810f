"""The TableReader of table datasets: a table's rows as raw CSV blocks, streamed by COPY TO STDOUT.

``open_table_reader(connect, timeout_ms=...)`` returns the callable the datasets package consumes
(datasets.definition.TableReader). Each read opens its own connection (``connect``: the job's
credentials), runs one read-only transaction with exact float output and a statement timeout, and
streams ``COPY (SELECT <columns> FROM <schema.table>) TO STDOUT WITH (FORMAT csv)`` block by block:
nothing is buffered here, the consumer cuts the blocks into bounded chunks. The table and column
names come from the registry (untrusted): each is quoted with psycopg.sql.Identifier, never
interpolated. COPY (query) TO STDOUT and WITH (FORMAT csv) run on PostgreSQL 9.4 (Greenplum 6).

A missing schema, table or column, or a missing SELECT grant, is a DatasetError (exit 65) naming
the table and, for a grant, the GRANT statements the table's owner must run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import psycopg
from psycopg import sql as pgsql

from ..datasets.definition import TableReader, split_table_name
from ..errors import CkptEvalError, DatabaseUnavailable, DatasetError
from ..text import quoted
from . import sql
from .errors import Transient, server_message, translate


def fill_identifiers(template: str, **slots: pgsql.Composable) -> pgsql.Composed:
    """``template`` (from sql.py) with its %(name)s identifier slots filled by psycopg-quoted names.

    Only the named slots are filled; any other %(name)s stays a bind parameter.
    """
    for name in slots:
        template = template.replace(f"%({name})s", f"{{{name}}}")
    return pgsql.SQL(template).format(**slots)  # type: ignore[arg-type]


def copy_statement(source: str, columns: Sequence[str]) -> pgsql.Composed:
    """COPY_TABLE_CSV with its identifier slots filled: every name quoted by psycopg."""
    return fill_identifiers(
        sql.COPY_TABLE_CSV,
        columns=pgsql.SQL(", ").join(pgsql.Identifier(column) for column in columns),
        table=pgsql.Identifier(*split_table_name(source)),
    )


def grant_advice(source: str, role: str) -> str:
    parts = split_table_name(source)
    table = ".".join(pgsql.Identifier(part).as_string() for part in parts)  # type: ignore[call-arg]
    advice = f"GRANT SELECT ON {table} TO {pgsql.Identifier(role).as_string()}"  # type: ignore[call-arg]
    if len(parts) == 2:
        schema = pgsql.Identifier(parts[0]).as_string()  # type: ignore[call-arg]
        advice += f"; GRANT USAGE ON SCHEMA {schema} TO {pgsql.Identifier(role).as_string()}"  # type: ignore[call-arg]
    return advice


def dataset_error(exc: psycopg.Error, source: str, role: str, timeout_ms: int) -> CkptEvalError | None:
    state = exc.sqlstate or ""
    table = f"table {quoted(source, 120)}"
    detail = server_message(exc)
    if state == "42P01":
        return DatasetError(f"{table} does not exist (or role {role} cannot see it): {detail}")
    if state == "3F000":
        return DatasetError(f"the schema of {table} does not exist: {detail}")
    if state == "42703":
        return DatasetError(f"{table} lacks a column the dataset names: {detail}")
    if state == "42501":
        return DatasetError(
            f"role {role} may not read {table} ({detail}): the table's owner must run {grant_advice(source, role)}"
        )
    if state == "57014":
        return DatasetError(f"reading {table} took longer than the statement timeout ({timeout_ms} ms)")
    if state[:2] == "22":  # a view computing a bad value, say
        return DatasetError(f"reading {table} failed on a value: {detail} (SQLSTATE {state})")
    return None


def _role(connection: psycopg.Connection) -> str:
    try:
        return connection.info.user
    except psycopg.Error:
        return "the app role"


def open_table_reader(connect: Callable[[], psycopg.Connection], *, timeout_ms: int) -> TableReader:
    """A TableReader over connections from ``connect``; each read is one COPY in one transaction."""

    @contextmanager
    def read(source: str, columns: Sequence[str]) -> Iterator[Iterable[bytes]]:
        statement = copy_statement(source, columns)
        connection: psycopg.Connection | None = None
        role = "the app role"
        try:
            connection = connect()
            role = _role(connection)
            with connection.transaction():
                connection.execute(sql.TABLE_READ_ONLY)
                connection.execute(sql.TABLE_FLOAT_DIGITS)
                connection.execute(sql.TABLE_READ_TIMEOUT, {"timeout": str(int(timeout_ms))})
                with connection.cursor() as cursor, cursor.copy(statement) as copy:
                    yield (bytes(block) for block in copy)
        except psycopg.Error as exc:
            known = dataset_error(exc, source, role, timeout_ms)
            if known is not None:
                raise known from None
            translated = translate(exc, f"reading table {quoted(source, 120)}", role)
            if isinstance(translated, Transient):
                raise DatabaseUnavailable(str(translated)) from None
            raise translated from None
        finally:
            if connection is not None:
                connection.close()

    def reader(source: str, columns: Sequence[str]) -> AbstractContextManager[Iterable[bytes]]:
        return read(source, columns)

    return reader
