"""Secret redaction and the stderr log formats (plain and JSON)."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from ckpt_eval import logs, redaction
from ckpt_eval.redaction import REDACTED, RedactingFilter, register_secret, scrub

SECRET = "hunter2-but-longer"
NOISY = ("psycopg", "urllib3", "matplotlib", "PIL")


@pytest.fixture(autouse=True)
def _clear_secrets() -> Iterator[None]:
    redaction._secrets.clear()
    yield
    redaction._secrets.clear()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure replaces the root handlers and levels; put everything back afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    noisy_levels = {name: logging.getLogger(name).level for name in NOISY}
    yield
    logging.captureWarnings(False)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in noisy_levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def filtered_logger() -> Iterator[logging.Logger]:
    """A logger with the redacting filter on it; records still propagate to caplog's root handler."""
    logger = logging.getLogger("ckpt_eval.tests.redaction")
    flt = RedactingFilter()
    logger.addFilter(flt)
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.removeFilter(flt)
    logger.setLevel(logging.NOTSET)


def json_lines(err: str) -> list[dict[str, object]]:
    lines = err.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


# --------------------------------------------------------------------------- register_secret / scrub


def test_registered_secret_is_scrubbed() -> None:
    register_secret(SECRET)
    assert scrub(f"password={SECRET}; again {SECRET}") == f"password={REDACTED}; again {REDACTED}"


def test_bytes_secret_is_registered_as_text() -> None:
    register_secret(SECRET.encode())
    assert scrub(f"[{SECRET}]") == f"[{REDACTED}]"


def test_non_utf8_bytes_secret_does_not_crash() -> None:
    register_secret(b"\xff\xfeabcdef")
    assert scrub("\ufffd\ufffdabcdef") == REDACTED


@pytest.mark.parametrize("short", ["", "a", "ab", "abc", b"abc"])
def test_short_secrets_are_not_registered(short: str | bytes) -> None:
    register_secret(short)
    assert redaction._secrets == set()
    assert scrub("abc abcd ab a") == "abc abcd ab a"


def test_four_characters_is_enough_to_register() -> None:
    register_secret("abcd")
    assert scrub("xabcdx") == f"x{REDACTED}x"


def test_longest_secret_is_replaced_first() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    assert scrub("abcdefgh abcd") == f"{REDACTED} {REDACTED}"


def test_scrub_without_secrets_is_identity() -> None:
    assert scrub(f"nothing to hide {SECRET}") == f"nothing to hide {SECRET}"


def test_registering_twice_is_harmless() -> None:
    register_secret(SECRET)
    register_secret(SECRET.encode())
    assert len(redaction._secrets) == 1


# --------------------------------------------------------------------------- RedactingFilter


def test_filter_scrubs_message_args(filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SECRET)
    filtered_logger.warning("connect to %s with %s failed (%d)", "db.example.org", SECRET, 3)
    (record,) = caplog.records
    assert record.getMessage() == f"connect to db.example.org with {REDACTED} failed (3)"
    assert record.args is None
    assert SECRET not in caplog.text


def test_filter_scrubs_secret_in_format_string_and_mapping_args(
    filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    register_secret(SECRET)
    filtered_logger.info(f"dsn password={SECRET} user=%(user)s", {"user": "evaluator"})
    assert caplog.records[0].getMessage() == f"dsn password={REDACTED} user=evaluator"


def test_filter_scrubs_exception_text(filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SECRET)
    try:
        raise RuntimeError(f'FATAL: password authentication failed, password "{SECRET}"')
    except RuntimeError:
        filtered_logger.exception("query failed for %s", SECRET)
    (record,) = caplog.records
    assert record.getMessage() == f"query failed for {REDACTED}"
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "RuntimeError: FATAL: password authentication failed" in record.exc_text
    assert f'password "{REDACTED}"' in record.exc_text
    assert "Traceback" in caplog.text
    assert SECRET not in caplog.text


def test_filter_scrubs_non_string_message(filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SECRET)
    filtered_logger.error(ValueError(f"bad {SECRET}"))
    assert caplog.records[0].getMessage() == f"bad {REDACTED}"


def test_filter_leaves_records_untouched_without_secrets(
    filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    filtered_logger.info("value %s", 42)
    (record,) = caplog.records
    assert record.args == (42,)
    assert record.getMessage() == "value 42"


def test_filter_never_drops_a_record() -> None:
    register_secret(SECRET)
    record = logging.makeLogRecord({"msg": "plain %s", "args": (SECRET,)})
    assert RedactingFilter().filter(record) is True
    assert record.msg == f"plain {REDACTED}"


def test_message_containing_percent_after_scrubbing_is_not_reformatted(
    filtered_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    register_secret(SECRET)
    filtered_logger.info("%s is 100%% %s", SECRET, "%d")
    assert caplog.records[0].getMessage() == f"{REDACTED} is 100% %d"


# --------------------------------------------------------------------------- logs.configure


@pytest.mark.usefixtures("restore_logging")
def test_json_format_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "json")
    log = logging.getLogger("ckpt_eval.tests.json")
    log.debug("first %s", "message")
    log.info("second", extra={"checkpoint": "ckpt-17", "attempt": 2})
    log.warning("third\nwith a newline")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3
    first, second, third = json_lines(err)
    assert first["level"] == "debug"
    assert first["message"] == "first message"
    assert first["logger"] == "ckpt_eval.tests.json"
    assert {"time", "level", "logger", "message"} <= set(first)
    assert str(first["time"]).endswith("+00:00")
    assert second["level"] == "info"
    assert second["checkpoint"] == "ckpt-17"
    assert second["attempt"] == 2
    assert third["level"] == "warning"
    # one record, one line: a newline in a message is escaped by the same rule as plain logs
    assert third["message"] == "third\\nwith a newline"


@pytest.mark.usefixtures("restore_logging")
def test_json_format_has_no_standard_record_noise(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    logging.getLogger("ckpt_eval.tests.json").info("hello")
    (entry,) = json_lines(capsys.readouterr().err)
    assert set(entry) == {"time", "level", "logger", "message"}


@pytest.mark.usefixtures("restore_logging")
def test_json_format_serialises_odd_extra_values(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    logging.getLogger("ckpt_eval.tests.json").info("x", extra={"obj": object(), "items": {1, 2}})
    (entry,) = json_lines(capsys.readouterr().err)
    assert str(entry["obj"]).startswith("<object object")
    assert isinstance(entry["items"], str)


@pytest.mark.usefixtures("restore_logging")
def test_json_format_includes_exception(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    try:
        raise KeyError("missing-thing")
    except KeyError:
        logging.getLogger("ckpt_eval.tests.json").exception("boom")
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["level"] == "error"
    assert "KeyError: 'missing-thing'" in str(entry["exception"])


@pytest.mark.usefixtures("restore_logging")
def test_plain_format(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "plain")
    log = logging.getLogger("ckpt_eval.tests.plain")
    log.debug("hidden at info")
    log.info("shown %d", 5)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO ckpt_eval.tests.plain: shown 5")
    assert "hidden" not in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


@pytest.mark.usefixtures("restore_logging")
def test_level_filters_lower_records(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "json")
    log = logging.getLogger("ckpt_eval.tests.level")
    log.info("dropped")
    log.warning("kept")
    log.error("kept too")
    assert [e["message"] for e in json_lines(capsys.readouterr().err)] == ["kept", "kept too"]


@pytest.mark.usefixtures("restore_logging")
def test_configure_twice_does_not_duplicate_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "plain")
    logs.configure("info", "json")
    logging.getLogger("ckpt_eval.tests.twice").info("once")
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["message"] == "once"


@pytest.mark.usefixtures("restore_logging")
def test_library_debug_chatter_is_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "json")
    logging.getLogger("psycopg.pool").debug("connection details")
    logging.getLogger("psycopg").info("library info")
    logging.getLogger("ckpt_eval.tests.noisy").debug("ours")
    assert [e["message"] for e in json_lines(capsys.readouterr().err)] == ["library info", "ours"]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_scrubbed_in_both_formats(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    register_secret(SECRET)
    logs.configure("debug", fmt)
    log = logging.getLogger("ckpt_eval.tests.secrets")
    log.info("password is %s", SECRET)
    log.debug(f"inline {SECRET}")
    try:
        raise ConnectionError(f"server said: bad password {SECRET}")
    except ConnectionError:
        log.exception("connect failed")
    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count(REDACTED) == 3
    assert "ConnectionError: server said: bad password" in (err if fmt == "plain" else json.dumps(json_lines(err)))
    if fmt == "json":
        entries = json_lines(err)
        assert [e["message"] for e in entries] == [
            f"password is {REDACTED}",
            f"inline {REDACTED}",
            "connect failed",
        ]
        assert REDACTED in str(entries[2]["exception"])


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secret_registered_after_configure_is_scrubbed(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    logs.configure("info", fmt)
    register_secret(SECRET)
    logging.getLogger("ckpt_eval.tests.late").info("late %s", SECRET)
    assert SECRET not in capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_python_warnings_go_through_the_redacting_handler(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret(SECRET)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.configure("info", "json")
        warnings.warn(f"deprecated option uses {SECRET}", UserWarning, stacklevel=1)
    entries = json_lines(capsys.readouterr().err)
    assert entries[-1]["logger"] == "py.warnings"
    assert "deprecated option uses" in str(entries[-1]["message"])
    assert SECRET not in json.dumps(entries)


@pytest.mark.usefixtures("restore_logging")
def test_secret_in_extra_field_is_scrubbed_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret(SECRET)
    logs.configure("info", "json")
    logging.getLogger("ckpt_eval.tests.extra").info("connecting", extra={"dsn": f"user=u password={SECRET}"})
    assert SECRET not in capsys.readouterr().err
