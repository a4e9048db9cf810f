"""Tables for people and JSON for machines, built from real Outcome/JobSummary objects."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ckpt_eval.job import JobSummary, Outcome
from ckpt_eval.report import SUMMARY_COLUMNS, summary_json, summary_text, table, to_json

COLUMNS = (("id", "id"), ("name", "checkpoint"), ("score", "score"))


def outcome(checkpoint_id: int = 1, **changes) -> Outcome:
    values = {
        "checkpoint_id": checkpoint_id,
        "name": f"ckpt-{checkpoint_id}",
        "dataset": "digits",
        "attempt": 1,
        "run_id": 100 + checkpoint_id,
        "status": "succeeded",
        "verdict": "pass",
        "accuracy": 0.91,
        "f1_macro": 0.9,
        "loss": 0.3,
        "error": None,
        "duration_seconds": 1.25,
    }
    values.update(changes)
    return Outcome(**values)


def cells(text: str, row: int = 0) -> list[str]:
    """Split one body row of a table at the offsets where the (single-word) headers start."""
    header, _, *body = text.split("\n")
    starts = [header.index(h) for h in header.split()]
    line = body[row]
    return [line[a:b].rstrip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


# --------------------------------------------------------------------------- table


def test_table_aligns_columns() -> None:
    rows = [
        {"id": 1, "name": "a", "score": 0.5},
        {"id": 12345, "name": "a-much-longer-name", "score": 0.123456},
        {"id": 7, "name": "mid-size", "score": 1.0},
    ]
    lines = table(rows, COLUMNS).splitlines()
    assert len(lines) == 5
    header, rule, *body = lines
    assert header.split() == ["id", "checkpoint", "score"]
    assert set(rule) <= {"-", " "}
    name_at = header.index("checkpoint")
    score_at = header.index("score")
    assert name_at == len("12345") + 2
    assert score_at == name_at + len("a-much-longer-name") + 2
    for line, row in zip(body, rows, strict=True):
        assert line[:name_at].rstrip() == str(row["id"])
        assert line[name_at:score_at].rstrip() == row["name"]
        assert line[score_at - 2 : score_at] == "  "
    assert [line[score_at:] for line in body] == ["0.5000", "0.1235", "1.0000"]
    # the rule under each header is exactly as wide as the column
    assert [len(part) for part in rule.split("  ")] == [5, len("a-much-longer-name"), 6]


def test_table_has_no_trailing_spaces() -> None:
    text = table([{"id": 1, "name": "x", "score": None}, {"id": 2, "name": "longer", "score": None}], COLUMNS)
    for line in text.splitlines()[::2]:
        assert line == line.rstrip()


def test_table_with_no_rows_shows_headers() -> None:
    assert table([], COLUMNS).splitlines() == ["id  checkpoint  score", "--  ----------  -----"]


def test_none_and_missing_keys_show_dash() -> None:
    lines = table([{"id": None, "name": "x"}], COLUMNS).splitlines()
    assert lines[2].split() == ["-", "x", "-"]


def test_floats_nan_inf_and_datetimes() -> None:
    columns = (("v", "value"),)
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    cells = [
        table([{"v": value}], columns).splitlines()[2]
        for value in (math.nan, math.inf, -math.inf, 2.0, 1 / 3, when, True, 0)
    ]
    assert cells == ["nan", "inf", "-inf", "2.0000", "0.3333", "2024-05-06T07:08:09+00:00", "True", "0"]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("evil\nname", "evil\\nname"),
        ("red\x1b[31mtext", "red\\x1b[31mtext"),
        ("tab\there", "tab\\there"),
        ("cr\rhere", "cr\\rhere"),
        ("nul\x00", "nul\\x00"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bell\x07", "bell\\x07"),
    ],
)
def test_control_characters_are_escaped(name: str, shown: str) -> None:
    text = table([{"id": 1, "name": name, "score": 0.5}], COLUMNS)
    lines = text.splitlines()
    assert len(lines) == 3
    assert len(text.split("\n")) == 3
    assert "\x1b" not in text
    assert "\r" not in text
    assert cells(text)[1] == shown
    assert all(ch.isprintable() for ch in text.replace("\n", ""))


def test_error_messages_with_newlines_stay_on_one_row() -> None:
    text = summary_text(JobSummary((outcome(status="failed", verdict="fail", error="line one\nline two\x1b[0m"),)))
    lines = text.splitlines()
    assert len(lines) == 4  # header, rule, one row, footer
    assert "line one\\nline two\\x1b[0m" in lines[2]


def test_printable_unicode_is_kept() -> None:
    text = table([{"id": 1, "name": "modèle-β", "score": None}], COLUMNS)
    assert "modèle-β" in text


@pytest.mark.parametrize("length", [61, 200, 5000])
def test_long_values_are_truncated(length: int) -> None:
    name = "n" * length
    text = table([{"id": 1, "name": name, "score": None}], COLUMNS)
    assert cells(text) == ["1", "n" * 57 + "...", "-"]
    assert len(text.splitlines()[2]) < 80


def test_values_at_the_limit_are_not_truncated() -> None:
    name = "n" * 60
    assert name in table([{"id": 1, "name": name, "score": None}], COLUMNS)


def test_long_escaped_values_are_truncated_after_escaping() -> None:
    cell = cells(table([{"id": 1, "name": "\n" * 100, "score": None}], COLUMNS))[1]
    assert len(cell) == 60
    assert cell.endswith("...")
    assert cell.startswith("\\n\\n")


# --------------------------------------------------------------------------- JSON


def test_to_json_non_finite_becomes_null() -> None:
    data = {
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "ok": 0.5,
        "nested": {"list": [1.0, math.nan, {"deep": math.inf}], "tuple": (math.nan, 2)},
    }
    text = to_json(data)
    assert "NaN" not in text
    assert "Infinity" not in text
    assert json.loads(text) == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "ok": 0.5,
        "nested": {"list": [1.0, None, {"deep": None}], "tuple": [None, 2]},
    }


def test_to_json_is_accepted_by_a_strict_parser() -> None:
    def reject(token: str) -> None:
        raise ValueError(token)

    json.loads(to_json([math.nan, math.inf]), parse_constant=reject)


def test_to_json_datetimes_are_iso() -> None:
    aware = datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 1, 2, 3, 4, 5)
    parsed = json.loads(to_json({"aware": aware, "items": [naive]}))
    assert parsed == {"aware": "2024-01-02T03:04:05.006000+02:00", "items": ["2024-01-02T03:04:05"]}
    assert datetime.fromisoformat(parsed["aware"]) == aware


def test_to_json_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        to_json({"x": object()})


def test_to_json_keeps_strings_with_control_characters_intact() -> None:
    assert json.loads(to_json({"name": "a\nb\x1b"})) == {"name": "a\nb\x1b"}


# --------------------------------------------------------------------------- summaries


def test_summary_text_for_empty_job() -> None:
    text = summary_text(JobSummary(()))
    assert "nothing to evaluate" in text
    assert "\n" not in text


def test_summary_json_for_empty_job() -> None:
    assert json.loads(summary_json(JobSummary(()))) == {"evaluated": [], "all_passed": True}


def mixed_summary() -> JobSummary:
    return JobSummary(
        (
            outcome(1),
            outcome(2, accuracy=0.95),
            outcome(3, verdict="fail", accuracy=0.4, f1_macro=0.3),
            outcome(4, status="failed", verdict="fail", accuracy=None, f1_macro=None, loss=None, error="bad file"),
            outcome(5, status="failed", verdict="fail", run_id=None, error="sha256 mismatch"),
            outcome(6, status="failed", verdict="fail", error="x"),
            outcome(7, status="lost", verdict=None, run_id=None, accuracy=None, f1_macro=None, loss=None),
            outcome(8, verdict="fail", accuracy=math.nan, f1_macro=math.nan, loss=math.nan),
        )
    )


def test_summary_text_counts_every_outcome() -> None:
    text = summary_text(mixed_summary())
    lines = text.splitlines()
    assert lines[-1] == "7 evaluated: 2 passed, 2 failed the gate, 3 failed to evaluate; 1 lost to another worker"
    header = lines[0].split()
    assert header == [h for _, h in SUMMARY_COLUMNS]
    body = lines[2:-1]
    assert len(body) == 8
    assert [int(line.split()[0]) for line in body] == list(range(1, 9))


def test_summary_text_shows_values_and_dashes() -> None:
    lines = summary_text(mixed_summary()).splitlines()
    header = lines[0]
    accuracy_at = header.index("accuracy")
    row = {int(line.split()[0]): line for line in lines[2:-1]}
    assert row[2][accuracy_at:].split()[0] == "0.9500"
    assert row[4][accuracy_at:].split()[0] == "-"
    assert row[8][accuracy_at:].split()[0] == "nan"
    assert "sha256 mismatch" in row[5]
    assert row[7].split()[1:6] == ["ckpt-7", "digits", "1", "-", "lost"]


def test_summary_text_without_lost_has_no_lost_clause() -> None:
    text = summary_text(JobSummary((outcome(1), outcome(2, verdict="fail"))))
    assert text.splitlines()[-1] == "2 evaluated: 1 passed, 1 failed the gate, 0 failed to evaluate"


def test_summary_text_all_lost() -> None:
    text = summary_text(JobSummary((outcome(1, status="lost", verdict=None),)))
    assert (
        text.splitlines()[-1]
        == "0 evaluated: 0 passed, 0 failed the gate, 0 failed to evaluate; 1 lost to another worker"
    )


def test_summary_json_round_trips() -> None:
    data = json.loads(summary_json(mixed_summary()))
    assert data["all_passed"] is False
    assert [item["checkpoint_id"] for item in data["evaluated"]] == list(range(1, 9))
    last = data["evaluated"][-1]
    assert last["accuracy"] is None  # NaN
    assert last["loss"] is None
    assert data["evaluated"][0]["duration_seconds"] == 1.25
    assert set(data["evaluated"][0]) == {
        "checkpoint_id",
        "name",
        "dataset",
        "attempt",
        "run_id",
        "status",
        "verdict",
        "accuracy",
        "f1_macro",
        "loss",
        "error",
        "duration_seconds",
        "verdict_reasons",
    }


def test_the_summary_says_which_gate_requirement_failed_and_by_how_much() -> None:
    reason = "f1_macro changed -0.0120 against the champion cnn-v1 (0.9120 in run 4, now 0.9000): +0.0000 required"
    failed = outcome(1, verdict="fail", verdict_reasons=reason, name="cnn-<b>\x1b[31m")
    text = summary_text(JobSummary((failed, outcome(2))))
    assert f"gate failed: cnn-<b>\\x1b[31m on digits: {reason}" in text.splitlines()
    assert "\x1b" not in text
    assert json.loads(summary_json(JobSummary((failed,))))["evaluated"][0]["verdict_reasons"] == reason


def test_summary_json_all_passed_ignores_lost() -> None:
    summary = JobSummary((outcome(1), outcome(2, status="lost", verdict=None)))
    assert json.loads(summary_json(summary))["all_passed"] is True
