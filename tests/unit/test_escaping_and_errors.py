"""One escaping rule for untrusted text; one translation of database errors; every flag validated."""

from __future__ import annotations

import io
import json
import logging
import math

import psycopg
import pytest
from click.testing import CliRunner

from ckpt_eval import cli, logs
from ckpt_eval.db.errors import Transient, is_lost_race, rejected_setting, translate
from ckpt_eval.errors import (
    AuthenticationError,
    ConfigError,
    DatabasePrivilegeError,
    DatabaseRejected,
    DataError,
    SchemaMismatch,
)
from ckpt_eval.text import printable, printable_lines, quoted

CONTROL = [
    "\x1b",
    "\x07",
    "\x00",
    "\x08",
    "\r",
    "\n",
    "\t",
    "\x7f",
    "\x9b",
    "\x85",
    "\u202e",
    "\u2066",
    "\u200b",
    "\u2028",
]


# --------------------------------------------------------------------------- the escaping rule


@pytest.mark.parametrize("char", CONTROL)
def test_every_non_printable_character_is_escaped(char: str) -> None:
    shown = printable(f"a{char}b")
    assert shown.isprintable()
    assert char not in shown
    assert shown.startswith("a\\")
    assert shown.endswith("b")


@pytest.mark.parametrize("text", ["plain", "café", "模型-v2", "naïve Ω", "a'b\"c\\d", ""])
def test_printable_text_is_kept_as_it_is(text: str) -> None:
    assert printable(text) == text


def test_terminal_sequences_become_visible_text() -> None:
    assert printable("\x1b]0;title\x07\x1b[2J") == "\\x1b]0;title\\x07\\x1b[2J"
    assert printable("\u202egnp.exe") == "\\u202egnp.exe"


def test_bounded_and_quoted() -> None:
    assert printable("x" * 10, limit=4) == "xxxx..."
    assert quoted("a\x1bb") == "'a\\x1bb'"
    assert len(quoted("y" * 1000)) == 120 + 2 + 3


def test_lines_keep_their_breaks_but_not_their_controls() -> None:
    assert printable_lines("one\x1b\ntwo\r") == "one\\x1b\ntwo\\r"


def _log(fmt: str, message: str, *args: object, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.PlainFormatter() if fmt == "plain" else logs.JsonFormatter())
    logger = logging.getLogger(f"test-escaping-{fmt}")
    logger.handlers = [handler]
    logger.propagate = False
    if exc is None:
        logger.warning(message, *args)
    else:
        try:
            raise exc
        except BaseException:
            logger.exception(message, *args)
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_log_records_cannot_carry_control_characters_or_forge_lines(fmt: str) -> None:
    hostile = "x\x1b[2J\n2026-01-01 INFO forged line\u202e"
    out = _log(fmt, "checkpoint %s failed: %s", hostile, ValueError(hostile), exc=RuntimeError(hostile))
    assert out.count("\n") == (1 if fmt == "json" else out.count("\n"))
    for char in ("\x1b", "\u202e"):
        assert char not in out
    first_line = out.splitlines()[0]
    assert "forged line" in first_line  # the forged "line" stays inside the real record's line
    if fmt == "json":
        entry = json.loads(out)
        assert "\x1b" not in entry["message"]
        assert "\x1b" not in entry["exception"]
        assert "\\x1b" in entry["message"]


# --------------------------------------------------------------------------- database errors


def _error(cls: type[psycopg.Error], message: str = "boom") -> psycopg.Error:
    return cls(message)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            psycopg.errors.InsufficientPrivilege("permission denied for sequence evaluation_runs_run_id_seq"),
            DatabasePrivilegeError,
        ),
        (psycopg.errors.UndefinedTable('relation "ckpt_eval.checkpoints" does not exist'), SchemaMismatch),
        (psycopg.errors.UndefinedFunction("function ckpt_eval.next_run_id() does not exist"), SchemaMismatch),
        (psycopg.errors.UndefinedColumn('column "sha256" does not exist'), SchemaMismatch),
        (psycopg.errors.InvalidSchemaName('schema "ckpt_eval" does not exist'), SchemaMismatch),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), ConfigError),
        (psycopg.errors.FeatureNotSupported("not supported"), ConfigError),
        (psycopg.errors.InvalidPassword("password authentication failed"), AuthenticationError),
        (psycopg.errors.NumericValueOutOfRange("bigint out of range"), DataError),
        (psycopg.errors.CheckViolation("violates check constraint"), DatabaseRejected),
        (psycopg.errors.SyntaxError("syntax error at or near"), DatabaseRejected),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), Transient),
        (psycopg.errors.AdminShutdown("terminating connection"), Transient),
        (psycopg.errors.TooManyConnections("too many clients"), Transient),
        (psycopg.errors.DiskFull("no space left"), Transient),
        (psycopg.errors.DeadlockDetected("deadlock"), Transient),
        (psycopg.errors.LockNotAvailable("lock timeout"), Transient),
        (psycopg.OperationalError("server closed the connection unexpectedly"), Transient),
        (psycopg.InterfaceError("the connection is closed"), Transient),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
def test_every_database_error_has_its_meaning(error: psycopg.Error, expected: type[Exception]) -> None:
    translated = translate(error, "recording the result", "ckpt_eval_app")
    assert type(translated) is expected or isinstance(translated, expected)
    text = str(translated)
    assert "during recording the result" in text
    assert text.isprintable()


def test_a_missing_grant_names_the_object_and_what_to_do() -> None:
    error = translate(
        psycopg.errors.InsufficientPrivilege("permission denied for sequence evaluation_runs_run_id_seq"),
        "recording the result",
        "ckpt_eval_app",
    )
    assert error.exit_code == 78  # type: ignore[attr-defined]
    assert "evaluation_runs_run_id_seq" in str(error)
    assert "ckpt_eval_app" in str(error)
    assert "deploy.yml" in str(error)


def test_server_text_is_escaped_and_bounded() -> None:
    error = translate(psycopg.errors.CheckViolation("bad \x1b[2J value " + "x" * 5000), "registering", "app")
    assert "\x1b" not in str(error)
    assert len(str(error)) < 600


def test_lost_races_and_rejected_settings() -> None:
    assert is_lost_race(psycopg.errors.SerializationFailure("could not serialize"))
    assert is_lost_race(psycopg.errors.InternalError_("concurrent update of the same row is not allowed"))
    assert not is_lost_race(psycopg.errors.CheckViolation("no"))
    refused = rejected_setting('FATAL: invalid value for parameter "statement_timeout": "9999999000"')
    assert isinstance(refused, ConfigError)
    assert rejected_setting("connection refused") is None


# --------------------------------------------------------------------------- flags, in process


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--lease-seconds", "nan"],
        ["run", "--lease-seconds", "inf"],
        ["run", "--lease-seconds", "-inf"],
        ["run", "--lease-seconds", "1"],
        ["run", "--db-retry-seconds", "nan"],
        ["run", "--statement-timeout", "2147484"],
        ["run", "--checkpoint-id", str(2**63)],
        ["run", "--load-timeout", "0"],
        ["run", "--load-cpu-seconds", "1e400"],
        ["run", "--load-memory-mb", "10"],
        ["register", "x.pt", "--arch", "digits_mlp", "--dataset", "digits", "--min-accuracy", "NaN"],
        ["register", "x.pt", "--arch", "digits_mlp", "--dataset", "digits", "--min-f1", "1.0000001"],
        ["train", "--arch", "digits_mlp", "--dataset", "digits", "--out", "x.pt", "--lr", "inf"],
    ],
    ids=lambda args: "-".join(a.strip("-") for a in args if a.startswith("--"))[:40],
)
def test_bad_values_are_usage_errors_before_anything_runs(args: list[str]) -> None:
    result = CliRunner().invoke(cli.cli, args, standalone_mode=False, catch_exceptions=True)
    assert result.exception is not None
    assert getattr(result.exception, "exit_code", None) == 2


def test_finite_accepts_the_bounds_and_refuses_beyond() -> None:
    kind = cli.Finite(0, 1)
    assert kind.convert("0", None, None) == 0.0
    assert kind.convert("1", None, None) == 1.0
    assert kind.convert(0.5, None, None) == 0.5
    for bad in ("nan", "inf", "-0.0001", "1.5", "one", math.nan):
        with pytest.raises(Exception, match="not"):
            kind.convert(bad, None, None)
    open_low = cli.Finite(0, 10, low_open=True)
    with pytest.raises(Exception, match=r"not in the range \(0, 10\]"):
        open_low.convert("0", None, None)


def test_main_shows_click_errors_escaped(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_EVAL_LEASE_SECONDS", "\x1b[2J\x1b]0;t\x07")
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\\x1b[2J" in err
