"""The gate rules (ckpt_eval.gates): the CLI's rule syntax, the stored JSON form, which rules apply to a
pair, the verdict with its recorded values and reasons, and the job recording them end to end over the
FakeRepository (the parser, architectures and datasets are the real ones)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ckpt_eval.checkpoints import sha256_file
from ckpt_eval.config import Settings, Worker
from ckpt_eval.db.repository import RunRecord, gates_for_claims
from ckpt_eval.gates import (
    KNOWN_METRICS,
    Baseline,
    GateOutcome,
    GateRule,
    GateSyntaxError,
    PairGate,
    RuleResult,
    apply_rules,
    default_rules,
    effective_rules,
    parse_rule,
    results_from_json,
    results_to_json,
    rule_from_mapping,
    rule_text,
    rules_from_json,
    rules_to_json,
)
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from ckpt_eval.job import Job, Selection
from tests.unit.fakes import FakeRepository

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO / "checkpoints"
GOOD = "digits-mlp-good.pt"
UNDERTRAINED = "digits-mlp-undertrained.pt"
VERSION = "ab" * 32  # a dataset version (sha256)
OTHER_VERSION = "cd" * 32


# -- helpers ----------------------------------------------------------------------------------------------


def _champion(metrics: dict[str, float], run_id: int = 7, name: str = "champ", version: str = VERSION) -> PairGate:
    """A gate whose champion `name` has run `run_id` with `metrics` on `version`; the rules are set per test."""
    return PairGate((), dataset="digits", champion=name, baselines={version: Baseline(name, run_id, dict(metrics))})


def _gate(*rules: GateRule | str, base: PairGate | None = None) -> PairGate:
    parsed = tuple(parse_rule(r) if isinstance(r, str) else r for r in rules)
    return replace(base or PairGate((), dataset="digits"), rules=parsed)


def _only(outcome: GateOutcome, kind: str | None = None) -> RuleResult:
    found = [r for r in outcome.results if kind is None or r.kind == kind]
    assert len(found) == 1, outcome.results
    return found[0]


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# -- parse_rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy>=0.8", GateRule("accuracy", "higher", threshold=0.8)),
        ("loss<=0.25", GateRule("loss", "lower", threshold=0.25)),
        ("f1_macro<=0.5", GateRule("f1_macro", "lower", threshold=0.5)),  # the operator decides the direction
        ("loss>=0.1", GateRule("loss", "higher", threshold=0.1)),
        ("  roc_auc  >=  0.9  ", GateRule("roc_auc", "higher", threshold=0.9)),
        ("accuracy >= .75", GateRule("accuracy", "higher", threshold=0.75)),
        ("accuracy>=1", GateRule("accuracy", "higher", threshold=1.0)),
        ("accuracy>=7.", GateRule("accuracy", "higher", threshold=7.0)),
        ("accuracy>=+0.5", GateRule("accuracy", "higher", threshold=0.5)),
        ("log_loss<=-0.5", GateRule("log_loss", "lower", threshold=-0.5)),
        ("log_loss<=1e-3", GateRule("log_loss", "lower", threshold=0.001)),
        ("loss<=2.5E+2", GateRule("loss", "lower", threshold=250.0)),
        ("accuracy>=7e-1", GateRule("accuracy", "higher", threshold=0.7)),
    ],
)
def test_a_threshold_rule_reads_its_metric_direction_and_bound(text: str, expected: GateRule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy>=champion+0.01", GateRule("accuracy", "higher", min_absolute_change=0.01)),
        ("accuracy>=champion-0.02", GateRule("accuracy", "higher", min_absolute_change=-0.02)),
        ("accuracy>=champion", GateRule("accuracy", "higher", min_absolute_change=0.0)),
        ("accuracy >= champion + 0.01", GateRule("accuracy", "higher", min_absolute_change=0.01)),
        ("f1_macro>=champion+1%", GateRule("f1_macro", "higher", min_relative_change=0.01)),
        ("f1_macro>=champion - 2.5 %", GateRule("f1_macro", "higher", min_relative_change=-0.025)),
        ("f1_macro>=champion+.5", GateRule("f1_macro", "higher", min_absolute_change=0.5)),
        # lower is better: the candidate's bound below the champion is a minimum improvement
        ("loss<=champion-0.01", GateRule("loss", "lower", min_absolute_change=0.01)),
        ("loss<=champion+0.05", GateRule("loss", "lower", min_absolute_change=-0.05)),
        ("loss<=champion", GateRule("loss", "lower", min_absolute_change=0.0)),
        ("log_loss<=champion-2%", GateRule("log_loss", "lower", min_relative_change=0.02)),
        ("log_loss<=champion+10%", GateRule("log_loss", "lower", min_relative_change=-0.1)),
    ],
)
def test_a_change_rule_becomes_a_minimum_improvement_over_the_champion(text: str, expected: GateRule) -> None:
    rule = parse_rule(text)
    assert rule == expected
    assert rule.threshold is None
    assert rule.scope == "default"


def test_loss_at_most_the_champion_minus_a_hundredth_requires_an_improvement_of_a_hundredth() -> None:
    rule = parse_rule("loss<=champion-0.01")
    assert (rule.direction, rule.min_absolute_change, rule.min_relative_change) == ("lower", 0.01, None)


@pytest.mark.parametrize("metric", KNOWN_METRICS)
def test_every_known_metric_can_be_gated(metric: str) -> None:
    assert parse_rule(f"{metric}>=0.5").metric == metric
    assert parse_rule(f"{metric}<=champion-1%").metric == metric


@pytest.mark.parametrize(
    "text",
    [
        "accuracy>=0.8",
        "accuracy<=0.8",
        "loss<=0.25",
        "log_loss<=1e-05",
        "roc_auc>=1e+20",
        "accuracy>=-0.5",
        "accuracy>=0",
        "accuracy>=champion+0.01",
        "accuracy>=champion-0.02",
        "accuracy>=champion",
        "loss<=champion",
        "loss<=champion-0.01",
        "loss<=champion+0.05",
        "f1_macro>=champion+1%",
        "f1_macro>=champion-2.5%",
        "log_loss<=champion-2%",
        "log_loss<=champion+10%",
        "recall_macro>=champion+0.3%",
        "precision_macro>=champion+0.07",
    ],
)
def test_rule_text_reads_back_as_the_same_rule(text: str) -> None:
    rule = parse_rule(text)
    texts = rule_text(rule)
    assert len(texts) == 1
    assert parse_rule(texts[0]) == rule


def test_rule_text_prints_the_candidates_bound_in_the_cli_syntax() -> None:
    assert rule_text(parse_rule("loss<=champion-0.01")) == ["loss<=champion-0.01"]
    assert rule_text(parse_rule("accuracy >= champion + 1 %")) == ["accuracy>=champion+1%"]
    assert rule_text(parse_rule("accuracy>=champion")) == ["accuracy>=champion+0"]
    assert rule_text(parse_rule("accuracy>=0.75")) == ["accuracy>=0.75"]


def test_rule_text_gives_one_text_per_requirement_each_reading_back() -> None:
    rule = GateRule("loss", "lower", threshold=0.3, min_absolute_change=0.01, min_relative_change=0.02)
    texts = rule_text(rule)
    assert texts == ["loss<=0.3", "loss<=champion-0.01", "loss<=champion-2%"]
    parsed = [parse_rule(text) for text in texts]
    assert [p.threshold for p in parsed] == [0.3, None, None]
    assert [p.min_absolute_change for p in parsed] == [None, 0.01, None]
    assert [p.min_relative_change for p in parsed] == [None, None, 0.02]


@pytest.mark.parametrize("text", ["accuracy>=champion+0.00001", "log_loss<=champion-0.00001%"])
def test_rule_text_of_a_tiny_change_reads_back(text: str) -> None:
    rule = parse_rule(text)
    assert parse_rule(rule_text(rule)[0]) == rule


def test_rule_text_of_a_precise_threshold_reads_back() -> None:
    rule = parse_rule("accuracy>=0.1234567")
    assert parse_rule(rule_text(rule)[0]) == rule


@pytest.mark.parametrize(
    "text",
    [
        "bogus>=0.5",
        "top5_accuracy>=0.5",
        "loss_>=champion-1%",
    ],
)
def test_an_unknown_metric_is_rejected_naming_the_known_ones(text: str) -> None:
    with pytest.raises(GateSyntaxError) as raised:
        parse_rule(text)
    message = str(raised.value)
    assert "accuracy" in message
    assert "log_loss" in message


def test_an_unknown_metric_message_names_it() -> None:
    with pytest.raises(GateSyntaxError, match="unknown metric 'bogus'"):
        parse_rule("bogus>=0.5")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "accuracy",
        "Accuracy>=0.5",
        "accuracy>=",
        "accuracy>0.5",
        "accuracy=>0.5",
        "accuracy==0.5",
        "accuracy<0.5",
        ">=0.5",
        "accuracy>=0.5.5",
        "accuracy>=0.5 0.6",
        "accuracy>=abc",
        "accuracy>=nan",
        "accuracy>=NaN",
        "accuracy>=inf",
        "accuracy>=-inf",
        "accuracy>=Infinity",
        "accuracy>=champion+",
        "accuracy>=champion*2",
        "accuracy>=champion+-0.01",
        "accuracy>=champion+nan",
        "accuracy>=champion+inf",
        "accuracy>=champion%",
        "accuracy>=champion+0.01%%",
        "accuracy>=champions+0.01",
        "accuracy>=0.5%",
        "accuracy>=0.5;loss<=1",
        "accuracy>=0.5 and loss<=1",
    ],
)
def test_garbage_is_rejected_with_the_expected_syntax(text: str) -> None:
    with pytest.raises(GateSyntaxError, match="expected METRIC>=X or METRIC<=X"):
        parse_rule(text)


@pytest.mark.parametrize("text", ["accuracy>=1e999", "loss<=-1e400", "accuracy>=" + "9" * 400])
def test_a_threshold_that_overflows_to_infinity_is_rejected(text: str) -> None:
    with pytest.raises(GateSyntaxError, match="must be a finite number"):
        parse_rule(text)


@pytest.mark.parametrize(
    "text",
    [
        "accuracy>=0.5\x1b[2J",
        "\x1b]0;owned\x07accuracy>=0.5",
        "accuracy\x00>=0.5",
        "accuracy>=0.\x005",
        "accuracy>=0.5\x7f",
        "accuracy>=0.5\u202e",
        "acc\x9buracy>=0.5",
        "\x1b[31m" * 200 + "accuracy>=0.5",
    ],
)
def test_control_characters_are_rejected_and_the_message_shows_them_escaped(text: str) -> None:
    with pytest.raises(GateSyntaxError) as raised:
        parse_rule(text)
    message = str(raised.value)
    assert message.isprintable(), repr(message)
    assert len(message) < 1200


def test_the_message_of_a_long_rule_is_cut() -> None:
    with pytest.raises(GateSyntaxError) as raised:
        parse_rule("accuracy>=" + "x" * 10_000)
    assert "..." in str(raised.value)
    assert len(str(raised.value)) < 600


# -- rule_from_mapping / rules_to_json / rules_from_json -----------------------------------------------------


def test_rules_survive_the_json_the_database_holds_taking_the_scope_they_are_read_as() -> None:
    rules = (
        parse_rule("accuracy>=0.8"),
        parse_rule("f1_macro>=champion+0.01"),
        parse_rule("loss<=champion-2%"),
        GateRule("log_loss", "lower", threshold=0.5, min_absolute_change=-0.1, min_relative_change=0.0),
    )
    text = rules_to_json(rules)
    assert rules_from_json(text, "dataset") == tuple(replace(rule, scope="dataset") for rule in rules)
    assert rules_from_json(text, "checkpoint")[0].scope == "checkpoint"


def test_rules_json_holds_only_the_requirements_given() -> None:
    stored = _strict_json(rules_to_json((parse_rule("loss<=champion-0.01"), parse_rule("accuracy>=0.7"))))
    assert stored == [
        {"metric": "loss", "direction": "lower", "min_absolute_change": 0.01},
        {"metric": "accuracy", "direction": "higher", "threshold": 0.7},
    ]


def test_no_rules_is_an_empty_json_list() -> None:
    assert rules_to_json(()) == "[]"
    assert rules_from_json("[]", "dataset") == ()


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("loss", "lower"), ("log_loss", "lower"), ("accuracy", "higher"), ("roc_auc", "higher")],
)
def test_a_mapping_without_a_direction_takes_the_metrics_natural_one(metric: str, direction: str) -> None:
    assert rule_from_mapping({"metric": metric, "threshold": 0.5}).direction == direction


def test_a_mapping_accepts_integers_and_keeps_its_scope() -> None:
    rule = rule_from_mapping({"metric": "accuracy", "threshold": 1, "min_absolute_change": 0}, scope="checkpoint")
    assert rule == GateRule("accuracy", "higher", threshold=1.0, min_absolute_change=0.0, scope="checkpoint")
    assert isinstance(rule.threshold, float)


def test_an_explicit_direction_overrides_the_natural_one() -> None:
    assert rule_from_mapping({"metric": "loss", "direction": "higher", "threshold": 0.1}).direction == "higher"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["accuracy", 0.7], "a gate rule is a mapping"),
        ("accuracy>=0.7", "a gate rule is a mapping"),
        (None, "a gate rule is a mapping"),
        ({"metric": "accuracy", "threshold": 0.7, "scope": "dataset"}, "unknown key(s) scope"),
        ({"metric": "accuracy", "threshold": 0.7, "min": 1, "max": 2}, "unknown key(s) max, min"),
        ({"threshold": 0.7}, "metric must be a string"),
        ({"metric": 3, "threshold": 0.7}, "metric must be a string"),
        ({"metric": "accuracy", "direction": "up", "threshold": 0.7}, "direction is 'higher' or 'lower'"),
        ({"metric": "accuracy", "direction": None, "threshold": 0.7}, "direction is 'higher' or 'lower'"),
        ({"metric": "accuracy", "threshold": "0.7"}, "threshold must be a finite number"),
        ({"metric": "accuracy", "threshold": True}, "threshold must be a finite number"),
        ({"metric": "accuracy", "min_absolute_change": False}, "min_absolute_change must be a finite number"),
        ({"metric": "accuracy", "threshold": math.nan}, "threshold must be a finite number"),
        ({"metric": "accuracy", "min_relative_change": math.inf}, "min_relative_change must be a finite number"),
        ({"metric": "accuracy", "threshold": [0.7]}, "threshold must be a finite number"),
        ({"metric": "accuracy"}, "give a threshold or a minimum change"),
        ({"metric": "accuracy", "direction": "higher", "threshold": None}, "give a threshold or a minimum change"),
        ({"metric": "bogus", "threshold": 0.7}, "unknown metric 'bogus'"),
    ],
)
def test_a_malformed_mapping_is_rejected_saying_what_is_wrong(entry: object, message: str) -> None:
    with pytest.raises(GateSyntaxError) as raised:
        rule_from_mapping(entry)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        '[{"metric": "accuracy", "threshold": NaN}]',
        '[{"metric": "accuracy", "threshold": Infinity}]',
        '[{"metric": "accuracy", "threshold": true}]',
        '[{"metric": "accuracy", "threshold": "0.7"}]',
        '[{"metric": "accuracy"}]',
        '[{"metric": "accuracy", "threshold": 0.7, "extra": 1}]',
        '[{"metric": "accuracy", "direction": "sideways", "threshold": 0.7}]',
        '[{"metric": "nope", "threshold": 0.7}]',
        '[["accuracy", 0.7]]',
        '{"metric": "accuracy", "threshold": 0.7}',
    ],
)
def test_stored_rules_that_cannot_be_read_are_a_syntax_error(text: str) -> None:
    with pytest.raises(GateSyntaxError):
        rules_from_json(text, "dataset")


def test_a_malformed_mapping_message_is_printable() -> None:
    with pytest.raises(GateSyntaxError) as raised:
        rule_from_mapping({"metric": "acc\x1b[2J", "threshold": "x", "\x1bkey": 1})
    assert str(raised.value).isprintable()
    with pytest.raises(GateSyntaxError) as raised:
        rule_from_mapping({"metric": "acc\x1b[2J", "threshold": "x"})
    assert str(raised.value).isprintable()


def test_a_bad_direction_message_is_printable() -> None:
    with pytest.raises(GateSyntaxError) as raised:
        rule_from_mapping({"metric": "acc\x1b[2J", "direction": "up", "threshold": 0.7})
    assert str(raised.value).isprintable()


def test_a_stored_integer_too_large_for_a_float_is_a_syntax_error() -> None:
    with pytest.raises(GateSyntaxError):
        rules_from_json('[{"metric": "accuracy", "threshold": 1' + "0" * 400 + "}]", "dataset")


# -- default_rules / effective_rules ---------------------------------------------------------------------------


def test_default_rules_are_the_old_gate_of_point_seven_each() -> None:
    assert default_rules(None, None) == (
        GateRule("accuracy", "higher", threshold=0.7),
        GateRule("f1_macro", "higher", threshold=0.7),
    )


def test_default_rules_take_the_checkpoints_columns() -> None:
    assert default_rules(0.9, None) == (
        GateRule("accuracy", "higher", threshold=0.9),
        GateRule("f1_macro", "higher", threshold=0.7),
    )
    rules = default_rules(None, 0)
    assert (rules[0].threshold, rules[1].threshold) == (0.7, 0.0), "a zero column is a bound, not unset"
    assert {rule.scope for rule in default_rules(0.5, 0.6)} == {"default"}


def test_with_no_other_gate_the_defaults_apply() -> None:
    defaults = default_rules(None, None)
    assert effective_rules(None, None, defaults) == defaults
    assert effective_rules((), (), defaults) == defaults


def test_a_dataset_gate_replaces_the_defaults_only_for_the_metrics_it_names() -> None:
    defaults = default_rules(None, None)
    dataset = rules_from_json(rules_to_json((parse_rule("f1_macro>=champion+0.01"),)), "dataset")
    chosen = effective_rules(None, dataset, defaults)
    assert chosen == (dataset[0], defaults[0])
    assert [(r.metric, r.scope) for r in chosen] == [("f1_macro", "dataset"), ("accuracy", "default")]


def test_a_checkpoint_gate_wins_over_the_dataset_gate_for_its_metrics() -> None:
    defaults = default_rules(None, None)
    dataset = (
        GateRule("accuracy", "higher", threshold=0.9, scope="dataset"),
        GateRule("loss", "lower", min_absolute_change=0.0, scope="dataset"),
    )
    checkpoint = (GateRule("accuracy", "higher", threshold=0.5, scope="checkpoint"),)
    chosen = effective_rules(checkpoint, dataset, defaults)
    assert chosen == (checkpoint[0], dataset[1], defaults[1])
    by_metric = {rule.metric: rule for rule in chosen}
    assert by_metric["accuracy"].threshold == 0.5
    assert by_metric["f1_macro"].scope == "default"
    assert by_metric["loss"].scope == "dataset"


def test_a_checkpoint_gate_wins_over_the_defaults_without_a_dataset_gate() -> None:
    checkpoint = (GateRule("f1_macro", "higher", threshold=0.95, scope="checkpoint"),)
    defaults = default_rules(None, None)
    assert effective_rules(checkpoint, None, defaults) == (checkpoint[0], defaults[0])


def test_several_rules_on_one_metric_within_a_scope_all_apply() -> None:
    checkpoint = (
        GateRule("accuracy", "higher", threshold=0.8, scope="checkpoint"),
        GateRule("accuracy", "higher", min_absolute_change=0.0, scope="checkpoint"),
    )
    dataset = (GateRule("accuracy", "higher", threshold=0.99, scope="dataset"),)
    chosen = effective_rules(checkpoint, dataset, default_rules(None, None))
    assert [r for r in chosen if r.metric == "accuracy"] == list(checkpoint)


# -- apply_rules: thresholds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "passed"),
    [
        ("accuracy>=0.7", 0.71, True),
        ("accuracy>=0.7", 0.7, True),
        ("accuracy>=0.7", 0.69, False),
        ("loss<=0.3", 0.29, True),
        ("loss<=0.3", 0.3, True),
        ("loss<=0.3", 0.31, False),
        ("accuracy>=0", 0.0, True),
        ("log_loss<=-0.5", -0.5, True),
    ],
)
def test_a_threshold_passes_at_or_beyond_it_in_the_rules_direction(rule: str, value: float, passed: bool) -> None:
    metric = parse_rule(rule).metric
    outcome = apply_rules({metric: value}, _gate(rule), VERSION)
    assert outcome.passed is passed
    assert outcome.label == ("pass" if passed else "fail")
    result = _only(outcome)
    assert (result.kind, result.value, result.required) == ("threshold", value, parse_rule(rule).threshold)
    assert result.outcome == ("pass" if passed else "fail")
    assert outcome.note is None, "thresholds need no champion"


def test_a_failed_threshold_says_the_value_and_the_bound() -> None:
    higher = apply_rules({"accuracy": 0.65}, _gate("accuracy>=0.7"), VERSION)
    assert higher.reasons == ("accuracy 0.6500 < 0.7",)
    assert _only(higher).note == "accuracy 0.6500 < 0.7"
    lower = apply_rules({"loss": 0.5}, _gate("loss<=0.4"), VERSION)
    assert lower.reasons == ("loss 0.5000 > 0.4",)


def test_the_default_gate_passes_a_good_run_and_reports_each_failed_column() -> None:
    gate = PairGate(default_rules(None, None), dataset="digits")
    good = apply_rules({"accuracy": 0.95, "f1_macro": 0.94, "loss": 0.2}, gate, VERSION)
    assert (good.passed, good.reasons, good.note) == (True, (), None)
    assert [(r.metric, r.kind, r.required, r.value, r.outcome) for r in good.results] == [
        ("accuracy", "threshold", 0.7, 0.95, "pass"),
        ("f1_macro", "threshold", 0.7, 0.94, "pass"),
    ]
    bad = apply_rules({"accuracy": 0.5, "f1_macro": 0.4, "loss": 2.0}, gate, VERSION)
    assert not bad.passed
    assert bad.reasons == ("accuracy 0.5000 < 0.7", "f1_macro 0.4000 < 0.7")


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"accuracy": math.nan}, "accuracy is nan"),
        ({"accuracy": math.inf}, "accuracy is inf"),
        ({"accuracy": -math.inf}, "accuracy is -inf"),
        ({"f1_macro": 0.9}, "accuracy is missing"),
    ],
)
def test_a_non_finite_or_missing_metric_fails_its_threshold(metrics: dict[str, float], reason: str) -> None:
    outcome = apply_rules(metrics, _gate("accuracy>=0.0"), VERSION)
    assert not outcome.passed
    assert outcome.reasons == (reason,)
    result = _only(outcome)
    assert result.outcome == "fail"
    assert result.note == reason
    if "missing" in reason:
        assert result.value is None
    else:
        assert result.value is not None
        assert repr(result.value) == repr(metrics["accuracy"])


def test_a_lower_is_better_threshold_fails_on_nan_instead_of_passing() -> None:
    outcome = apply_rules({"log_loss": math.nan}, _gate("log_loss<=10"), VERSION)
    assert not outcome.passed
    assert outcome.reasons == ("log_loss is nan",)


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_loss_that_is_not_finite_fails_whatever_the_rules(loss: float) -> None:
    outcome = apply_rules({"accuracy": 0.99, "loss": loss}, _gate("accuracy>=0.5"), VERSION)
    assert not outcome.passed
    assert outcome.reasons == (f"loss is {loss}",)
    assert _only(outcome).outcome == "pass", "the accuracy rule itself still passed"
    assert not apply_rules({"loss": loss}, _gate(), VERSION).passed, "even with no rules at all"


def test_a_finite_loss_with_no_rules_passes() -> None:
    outcome = apply_rules({"loss": 123.0}, _gate(), VERSION)
    assert (outcome.passed, outcome.results, outcome.reasons, outcome.note) == (True, (), (), None)


# -- apply_rules: change rules without a baseline --------------------------------------------------------------


def test_without_a_champion_the_change_rules_are_skipped_naming_the_dataset() -> None:
    gate = _gate("accuracy>=0.7", "f1_macro>=champion+0.01", "loss<=champion-1%")
    outcome = apply_rules({"accuracy": 0.8, "f1_macro": 0.5, "loss": 9.0}, gate, VERSION)
    assert outcome.passed
    assert outcome.note == "no champion for dataset digits yet: change rules skipped"
    skipped = [r for r in outcome.results if r.kind != "threshold"]
    assert [(r.metric, r.kind, r.outcome) for r in skipped] == [
        ("f1_macro", "absolute_change", "skipped"),
        ("loss", "relative_change", "skipped"),
    ]
    assert {r.note for r in skipped} == {outcome.note}
    assert all(r.baseline is None and r.change is None and r.baseline_run_id is None for r in skipped)
    assert skipped[0].value == 0.5
    assert skipped[0].required == 0.01


def test_without_a_champion_the_verdict_depends_on_the_thresholds_only() -> None:
    gate = _gate("accuracy>=0.7", "f1_macro>=champion+0.01")
    outcome = apply_rules({"accuracy": 0.6, "f1_macro": 0.9}, gate, VERSION)
    assert not outcome.passed
    assert outcome.reasons == ("accuracy 0.6000 < 0.7",)
    assert outcome.note == "no champion for dataset digits yet: change rules skipped"


def test_the_skip_note_escapes_the_dataset_name() -> None:
    gate = replace(_gate("accuracy>=champion"), dataset="evil\x1b[2Jname")
    note = apply_rules({"accuracy": 0.9}, gate, VERSION).note
    assert note is not None
    assert note.isprintable()
    assert "evil\\x1b[2Jname" in note


def test_no_note_when_there_are_no_change_rules_even_without_a_champion() -> None:
    assert apply_rules({"accuracy": 0.9}, _gate("accuracy>=0.5"), VERSION).note is None


def test_the_champion_evaluated_against_itself_skips_its_change_rules() -> None:
    gate = replace(
        _gate("accuracy>=0.7", "accuracy>=champion+0.05", base=_champion({"accuracy": 0.99})), is_champion=True
    )
    outcome = apply_rules({"accuracy": 0.8}, gate, VERSION)
    assert outcome.passed
    assert outcome.note == "this checkpoint is the champion: change rules skipped"
    change = _only(outcome, "absolute_change")
    assert (change.outcome, change.note, change.baseline, change.baseline_run_id) == (
        "skipped",
        outcome.note,
        None,
        None,
    )


def test_a_champion_with_no_run_on_this_dataset_version_skips_the_change_rules_saying_so() -> None:
    gate = _gate("accuracy>=champion+0.01", base=_champion({"accuracy": 0.9}, name="the-champ", version=OTHER_VERSION))
    outcome = apply_rules({"accuracy": 0.5}, gate, VERSION)
    assert outcome.passed
    assert outcome.note == (
        f"the champion the-champ has no run on this dataset version ({VERSION[:12]}): change rules skipped"
    )
    assert _only(outcome).outcome == "skipped"


def test_an_unknown_dataset_version_has_no_baseline() -> None:
    gate = _gate("accuracy>=champion+0.01", base=_champion({"accuracy": 0.9}))
    outcome = apply_rules({"accuracy": 0.5}, gate, None)
    assert outcome.passed
    assert outcome.note is not None
    assert "(unknown)" in outcome.note


# -- apply_rules: change rules against the champion ---------------------------------------------------------------


def test_an_absolute_improvement_at_least_the_minimum_passes_and_records_the_comparison() -> None:
    gate = _gate("f1_macro>=champion+0.01", base=_champion({"f1_macro": 0.80}, run_id=42))
    outcome = apply_rules({"f1_macro": 0.85}, gate, VERSION)
    assert outcome.passed
    assert outcome.reasons == ()
    assert outcome.note is None
    result = _only(outcome)
    assert (result.metric, result.direction, result.kind, result.outcome) == (
        "f1_macro",
        "higher",
        "absolute_change",
        "pass",
    )
    assert (result.value, result.baseline, result.baseline_run_id, result.required) == (0.85, 0.80, 42, 0.01)
    assert result.change == pytest.approx(0.05)
    assert result.note is None


def test_a_missed_absolute_change_says_metric_change_champion_run_required_and_shortfall() -> None:
    gate = _gate("f1_macro>=champion+0.01", base=_champion({"f1_macro": 0.9}, run_id=7, name="digits-mlp-good"))
    outcome = apply_rules({"f1_macro": 0.888}, gate, VERSION)
    assert not outcome.passed
    expected = (
        "f1_macro changed -0.0120 against the champion digits-mlp-good (0.9000 in run 7, now 0.8880): "
        "+0.0100 required, short by 0.0220"
    )
    assert outcome.reasons == (expected,)
    result = _only(outcome)
    assert result.outcome == "fail"
    assert result.note == expected
    assert result.change == pytest.approx(-0.012)
    assert (result.baseline, result.baseline_run_id) == (0.9, 7)


def test_a_lower_is_better_change_counts_a_decrease_as_an_improvement() -> None:
    base = _champion({"loss": 0.30}, run_id=3)
    better = apply_rules({"loss": 0.25}, _gate("loss<=champion-0.01", base=base), VERSION)
    assert better.passed
    assert _only(better).change == pytest.approx(0.05)
    worse = apply_rules({"loss": 0.32}, _gate("loss<=champion-0.01", base=base), VERSION)
    assert not worse.passed
    assert _only(worse).change == pytest.approx(-0.02)
    assert worse.reasons == (
        "loss changed -0.0200 against the champion champ (0.3000 in run 3, now 0.3200): "
        "+0.0100 required, short by 0.0300",
    )


@pytest.mark.parametrize(
    ("rule", "champion", "candidate", "passed"),
    [
        ("accuracy>=champion-0.01", 0.9, 0.895, True),  # 0.005 worse: tolerated
        ("accuracy>=champion-0.01", 0.9, 0.87, False),  # 0.03 worse: too much
        ("accuracy>=champion-0.01", 0.9, 0.95, True),
        ("loss<=champion+0.05", 0.30, 0.33, True),  # 0.03 worse (higher): tolerated
        ("loss<=champion+0.05", 0.30, 0.40, False),
        ("accuracy>=champion-5%", 0.8, 0.77, True),  # -3.75 %
        ("accuracy>=champion-5%", 0.8, 0.75, False),  # -6.25 %
        ("log_loss<=champion+10%", 0.5, 0.54, True),  # 8 % worse
        ("log_loss<=champion+10%", 0.5, 0.6, False),  # 20 % worse
    ],
)
def test_a_negative_minimum_tolerates_a_bounded_regression(
    rule: str, champion: float, candidate: float, passed: bool
) -> None:
    metric = parse_rule(rule).metric
    outcome = apply_rules({metric: candidate}, _gate(rule, base=_champion({metric: champion})), VERSION)
    assert outcome.passed is passed
    assert _only(outcome).outcome == ("pass" if passed else "fail")


def test_a_relative_change_is_the_improvement_over_the_champions_magnitude() -> None:
    base = _champion({"accuracy": 0.8, "log_loss": 0.5}, run_id=11)
    outcome = apply_rules({"accuracy": 0.84, "log_loss": 0.45}, _gate("accuracy>=champion+2%", base=base), VERSION)
    assert outcome.passed
    assert _only(outcome).change == pytest.approx(0.05)
    lower = apply_rules({"log_loss": 0.45}, _gate("log_loss<=champion-5%", base=base), VERSION)
    assert lower.passed
    assert _only(lower).change == pytest.approx(0.1)
    assert _only(lower).kind == "relative_change"
    assert _only(lower).required == pytest.approx(0.05)


def test_a_relative_change_over_a_negative_champion_value_keeps_the_improvements_sign() -> None:
    base = _champion({"accuracy": -2.0})
    outcome = apply_rules({"accuracy": -1.0}, _gate("accuracy>=champion+10%", base=base), VERSION)
    assert outcome.passed
    assert _only(outcome).change == pytest.approx(0.5)


def test_a_missed_relative_change_is_worded_in_percent_and_points() -> None:
    gate = _gate("accuracy>=champion+1%", base=_champion({"accuracy": 0.9}, run_id=5, name="best"))
    outcome = apply_rules({"accuracy": 0.89}, gate, VERSION)
    assert not outcome.passed
    assert outcome.reasons == (
        "accuracy changed -1.11% against the champion best (0.9000 in run 5, now 0.8900): "
        "+1.00% required, short by 2.11 points",
    )
    assert _only(outcome).change == pytest.approx(-0.01 / 0.9)


def test_a_relative_change_against_a_champion_value_of_zero_is_skipped() -> None:
    base = _champion({"accuracy": 0.0}, run_id=9)
    outcome = apply_rules({"accuracy": 0.5}, _gate("accuracy>=champion+1%", base=base), VERSION)
    assert outcome.passed
    result = _only(outcome)
    assert result.outcome == "skipped"
    assert result.note == "the champion's accuracy is 0: no relative change"
    assert (result.baseline, result.baseline_run_id, result.change) == (0.0, 9, None)
    absolute = apply_rules({"accuracy": 0.5}, _gate("accuracy>=champion+0.1", base=base), VERSION)
    assert absolute.passed
    assert _only(absolute).change == 0.5, "the absolute change is still measured"


def test_an_unchanged_metric_meets_a_minimum_of_zero() -> None:
    base = _champion({"accuracy": 0.9})
    assert apply_rules({"accuracy": 0.9}, _gate("accuracy>=champion", base=base), VERSION).passed
    assert apply_rules({"loss": 0.2}, _gate("loss<=champion", base=_champion({"loss": 0.2})), VERSION).passed
    assert not apply_rules({"accuracy": 0.8999}, _gate("accuracy>=champion", base=base), VERSION).passed


def test_a_change_exactly_at_the_minimum_passes() -> None:
    gate = _gate("accuracy>=champion+0.1", base=_champion({"accuracy": 0.2}))
    outcome = apply_rules({"accuracy": 0.3}, gate, VERSION)
    assert outcome.passed, outcome.reasons


@pytest.mark.parametrize(("value", "words"), [(math.nan, "accuracy is nan"), (None, "accuracy is missing")])
def test_a_candidate_without_a_finite_value_fails_its_change_rules(value: float | None, words: str) -> None:
    metrics = {} if value is None else {"accuracy": value}
    gate = _gate("accuracy>=champion-1", "accuracy>=champion-100%", base=_champion({"accuracy": 0.9}, run_id=4))
    outcome = apply_rules(metrics, gate, VERSION)
    assert not outcome.passed
    assert outcome.reasons == (words, words)
    assert [(r.kind, r.outcome, r.baseline, r.baseline_run_id) for r in outcome.results] == [
        ("absolute_change", "fail", 0.9, 4),
        ("relative_change", "fail", 0.9, 4),
    ]


@pytest.mark.parametrize(("champion", "words"), [(math.nan, "nan"), (None, "missing")])
def test_a_champion_without_a_finite_value_fails_the_change_rule(champion: float | None, words: str) -> None:
    metrics = {} if champion is None else {"roc_auc": champion}
    outcome = apply_rules({"roc_auc": 0.9}, _gate("roc_auc>=champion", base=_champion(metrics)), VERSION)
    assert not outcome.passed
    assert outcome.reasons == (f"the champion's roc_auc is {words}",)


def test_every_requirement_is_recorded_with_the_values_compared() -> None:
    base = _champion({"accuracy": 0.9, "f1_macro": 0.85, "loss": 0.4}, run_id=17)
    rules = (
        GateRule("accuracy", "higher", threshold=0.7, min_absolute_change=0.0, min_relative_change=-0.01),
        GateRule("loss", "lower", threshold=0.5, min_absolute_change=0.05, scope="dataset"),
        GateRule("f1_macro", "higher", threshold=0.7, scope="checkpoint"),
    )
    outcome = apply_rules({"accuracy": 0.91, "f1_macro": 0.8, "loss": 0.38}, replace(base, rules=rules), VERSION)
    rows = [
        (r.metric, r.direction, r.kind, r.required, r.value, r.baseline, r.baseline_run_id, r.outcome, r.scope)
        for r in outcome.results
    ]
    assert rows == [
        ("accuracy", "higher", "threshold", 0.7, 0.91, None, None, "pass", "default"),
        ("accuracy", "higher", "absolute_change", 0.0, 0.91, 0.9, 17, "pass", "default"),
        ("accuracy", "higher", "relative_change", -0.01, 0.91, 0.9, 17, "pass", "default"),
        ("loss", "lower", "threshold", 0.5, 0.38, None, None, "pass", "dataset"),
        ("loss", "lower", "absolute_change", 0.05, 0.38, 0.4, 17, "fail", "dataset"),
        ("f1_macro", "higher", "threshold", 0.7, 0.8, None, None, "pass", "checkpoint"),
    ]
    changes = [r.change for r in outcome.results]
    assert changes[0] is None
    assert changes[3] is None
    assert changes[5] is None
    assert changes[1] == pytest.approx(0.01)
    assert changes[2] == pytest.approx(0.01 / 0.9)
    assert changes[4] == pytest.approx(0.02)
    assert not outcome.passed
    assert len(outcome.reasons) == 1
    assert outcome.reasons[0].startswith("loss changed +0.0200 against the champion")
    assert outcome.reasons[0].endswith("+0.0500 required, short by 0.0300")
    assert outcome.note is None


def test_the_champions_name_in_a_failure_is_escaped() -> None:
    gate = _gate("accuracy>=champion+0.5", base=_champion({"accuracy": 0.9}, name="bad\x1b]0;x\x07name"))
    outcome = apply_rules({"accuracy": 0.9}, gate, VERSION)
    assert outcome.reasons[0].isprintable()
    assert "bad\\x1b]0;x\\x07name" in outcome.reasons[0]


# -- apply_rules: a gate that cannot be read ---------------------------------------------------------------------


def test_a_gate_that_cannot_be_read_fails_the_run_saying_why_and_still_records_the_defaults() -> None:
    gate = PairGate(default_rules(None, None), dataset="digits", error="gate 3 (dataset) cannot be read: boom")
    outcome = apply_rules({"accuracy": 0.95, "f1_macro": 0.95}, gate, VERSION)
    assert not outcome.passed
    assert outcome.reasons == ("gate 3 (dataset) cannot be read: boom",)
    assert [(r.metric, r.value, r.outcome) for r in outcome.results] == [
        ("accuracy", 0.95, "pass"),
        ("f1_macro", 0.95, "pass"),
    ]
    worse = apply_rules({"accuracy": 0.5, "f1_macro": 0.95}, gate, VERSION)
    assert worse.reasons == ("gate 3 (dataset) cannot be read: boom", "accuracy 0.5000 < 0.7")


def test_gates_for_claims_turns_an_unreadable_stored_gate_into_a_failing_pair_gate() -> None:
    repository = FakeRepository()
    repository.add_dataset_row("digits", "digits")
    repository.add_checkpoint("ckpt", GOOD, "digits_mlp", "0" * 64, ["digits"])
    repository.add_gate('[{"metric": "accuracy", "threshold": NaN}]', dataset="digits")
    claim = repository.claim(("ckpt", "digits"), "me", "token", 60)
    assert claim is not None
    gate = gates_for_claims([claim], repository.gates, [], [])[("ckpt", "digits")]
    assert gate.error is not None
    assert gate.error.startswith("gate 1 (dataset) cannot be read:")
    assert gate.rules == default_rules(None, None)
    outcome = apply_rules({"accuracy": 0.99, "f1_macro": 0.99}, gate, VERSION)
    assert not outcome.passed
    assert outcome.reasons == (gate.error,)
    assert len(outcome.results) == 2


def test_a_stored_gate_with_an_integer_too_large_for_a_float_fails_the_pair_instead_of_crashing() -> None:
    repository = FakeRepository()
    repository.add_dataset_row("digits", "digits")
    repository.add_checkpoint("ckpt", GOOD, "digits_mlp", "0" * 64, ["digits"])
    repository.add_gate('[{"metric": "accuracy", "threshold": 1' + "0" * 400 + "}]", dataset="digits")
    claim = repository.claim(("ckpt", "digits"), "me", "token", 60)
    assert claim is not None
    gate = gates_for_claims([claim], repository.gates, [], [])[("ckpt", "digits")]
    assert gate.error is not None


# -- results_to_json / results_from_json ---------------------------------------------------------------------------


def test_recorded_results_read_back_as_they_were() -> None:
    base = _champion({"accuracy": 0.9, "loss": 0.4}, run_id=21)
    gate = _gate("accuracy>=0.7", "accuracy>=champion+1%", "loss<=champion-0.01", base=base)
    results = apply_rules({"accuracy": 0.85, "loss": 0.3}, gate, VERSION).results
    assert len(results) == 3
    assert results_from_json(results_to_json(results)) == results


def test_recorded_results_are_strict_json_with_non_finite_numbers_as_null() -> None:
    gate = _gate("accuracy>=0.7", "accuracy>=champion", base=_champion({"accuracy": math.inf}))
    results = apply_rules({"accuracy": math.nan}, gate, VERSION).results
    text = results_to_json(results)
    stored = _strict_json(text)
    assert [entry["value"] for entry in stored] == [None, None]
    assert stored[1]["baseline"] is None
    assert stored[1]["baseline_run_id"] == 7
    assert [entry["outcome"] for entry in stored] == ["fail", "fail"]
    read = results_from_json(text)
    assert [r.value for r in read] == [None, None]
    assert read[0].note == "accuracy is nan", "the note keeps what the value was"


def test_recorded_results_hold_every_field() -> None:
    result = RuleResult("loss", "lower", "absolute_change", 0.01, 0.3, 0.32, 0.02, "pass", None, "dataset", 5)
    (stored,) = _strict_json(results_to_json((result,)))
    assert stored == {
        "metric": "loss",
        "direction": "lower",
        "kind": "absolute_change",
        "required": 0.01,
        "value": 0.3,
        "baseline": 0.32,
        "change": 0.02,
        "outcome": "pass",
        "note": None,
        "scope": "dataset",
        "baseline_run_id": 5,
    }


@pytest.mark.parametrize("text", [None, ""])
def test_a_run_without_recorded_results_reads_as_none(text: str | None) -> None:
    assert results_from_json(text) == ()


def test_recorded_results_with_fields_of_a_newer_version_still_read() -> None:
    text = json.dumps([{"metric": "accuracy", "direction": "higher", "kind": "threshold", "required": 0.7,
                        "value": 0.8, "outcome": "pass", "added_later": 1}])  # fmt: skip
    assert results_from_json(text) == (RuleResult("accuracy", "higher", "threshold", 0.7, 0.8),)


# -- the job, end to end over the FakeRepository --------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 * 1024**2)) as started:
        yield started


@pytest.fixture
def repository() -> FakeRepository:
    fake = FakeRepository()
    fake.add_dataset_row("digits", "digits")
    fake.add_checkpoint("digits-mlp-good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    fake.add_checkpoint(
        "digits-mlp-undertrained", UNDERTRAINED, "digits_mlp", sha256_file(CHECKPOINTS / UNDERTRAINED), ["digits"]
    )
    return fake


def run_job(repository: FakeRepository, parser: CheckpointParser, selection: Selection | None = None):
    settings = Settings(checkpoint_root=CHECKPOINTS, data_dir=None)
    job = Job(settings, repository, lambda: repository, parser, worker=Worker("test", 1, "x"))  # type: ignore[arg-type]
    return job.run(selection or Selection())


def _recorded(repository: FakeRepository) -> dict[str, tuple[int, RunRecord]]:
    """Each checkpoint's latest run, with its run id (the fake numbers runs from 1)."""
    return {claim.name: (run_id, record) for run_id, (claim, record) in enumerate(repository.runs, start=1)}


def _overall(record: RunRecord, metric: str) -> float:
    return next(value for name, label, value in record.metrics if name == metric and label == "")


def _by_kind(record: RunRecord) -> dict[tuple[str, str], dict[str, Any]]:
    return {(entry["metric"], entry["kind"]): entry for entry in _strict_json(record.gate_results or "[]")}


def test_the_job_records_the_default_gate_good_passes_undertrained_fails(repository: FakeRepository, parser) -> None:
    summary = run_job(repository, parser)
    assert {(o.name, o.verdict) for o in summary.outcomes} == {
        ("digits-mlp-good", "pass"),
        ("digits-mlp-undertrained", "fail"),
    }
    runs = _recorded(repository)
    _, good = runs["digits-mlp-good"]
    _, under = runs["digits-mlp-undertrained"]
    assert (good.verdict, good.verdict_reasons, good.gate_note) == ("pass", None, None)
    recorded = _by_kind(good)
    assert set(recorded) == {("accuracy", "threshold"), ("f1_macro", "threshold")}
    assert recorded[("accuracy", "threshold")]["value"] == pytest.approx(_overall(good, "accuracy"))
    assert recorded[("accuracy", "threshold")]["required"] == 0.7
    assert {entry["outcome"] for entry in recorded.values()} == {"pass"}
    assert under.verdict == "fail"
    assert under.gate_note is None
    failed = [entry for entry in _by_kind(under).values() if entry["outcome"] == "fail"]
    assert failed, under.gate_results
    assert under.verdict_reasons == "; ".join(entry["note"] for entry in failed)


def test_without_a_champion_the_run_notes_that_the_change_rules_were_skipped(
    repository: FakeRepository, parser
) -> None:
    repository.add_gate(rules_to_json((parse_rule("f1_macro>=champion+0.01"),)), dataset="digits")
    run_job(repository, parser, Selection(ids=(1,)))
    (_, good) = _recorded(repository)["digits-mlp-good"]
    assert good.gate_note == "no champion for dataset digits yet: change rules skipped"
    assert good.verdict == "pass", "the thresholds left (accuracy >= 0.7) decide"
    recorded = _by_kind(good)
    assert set(recorded) == {("f1_macro", "absolute_change"), ("accuracy", "threshold")}
    change = recorded[("f1_macro", "absolute_change")]
    assert (change["outcome"], change["scope"], change["baseline"], change["baseline_run_id"]) == (
        "skipped",
        "dataset",
        None,
        None,
    )
    assert change["note"] == good.gate_note


def test_after_a_promotion_the_job_gates_on_the_champions_run(repository: FakeRepository, parser) -> None:
    first = run_job(repository, parser)
    assert {(o.name, o.verdict) for o in first.outcomes} == {
        ("digits-mlp-good", "pass"),
        ("digits-mlp-undertrained", "fail"),
    }
    champion_run, champion_record = _recorded(repository)["digits-mlp-good"]
    champion_f1 = _overall(champion_record, "f1_macro")

    repository.promote("digits-mlp-good", "digits")
    repository.add_gate(rules_to_json((parse_rule("f1_macro>=champion+0.01"),)), dataset="digits")
    # A third pair: the same weights under another name, so no improvement over the champion.
    repository.add_checkpoint("digits-mlp-copy", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    second = run_job(repository, parser, Selection(force=True))
    assert {(o.name, o.verdict) for o in second.outcomes} == {
        ("digits-mlp-good", "pass"),
        ("digits-mlp-undertrained", "fail"),
        ("digits-mlp-copy", "fail"),
    }
    runs = _recorded(repository)

    _, again = runs["digits-mlp-good"]
    assert again.gate_note == "this checkpoint is the champion: change rules skipped"
    own = _by_kind(again)[("f1_macro", "absolute_change")]
    assert (own["outcome"], own["note"], own["baseline_run_id"]) == ("skipped", again.gate_note, None)

    _, copy = runs["digits-mlp-copy"]
    assert copy.gate_note is None
    change = _by_kind(copy)[("f1_macro", "absolute_change")]
    assert change["outcome"] == "fail"
    assert change["baseline_run_id"] == champion_run
    assert change["baseline"] == pytest.approx(champion_f1)
    assert change["value"] == pytest.approx(champion_f1)
    assert change["change"] == pytest.approx(0.0)
    assert (change["required"], change["scope"]) == (0.01, "dataset")
    assert copy.verdict_reasons == (
        f"f1_macro changed +0.0000 against the champion digits-mlp-good ({champion_f1:.4f} in run {champion_run}, "
        f"now {champion_f1:.4f}): +0.0100 required, short by 0.0100"
    )
    assert _by_kind(copy)[("accuracy", "threshold")]["outcome"] == "pass"

    _, under = runs["digits-mlp-undertrained"]
    under_change = _by_kind(under)[("f1_macro", "absolute_change")]
    assert (under_change["outcome"], under_change["baseline_run_id"]) == ("fail", champion_run)
    assert under_change["change"] == pytest.approx(_overall(under, "f1_macro") - champion_f1)
    assert under_change["change"] < 0
    assert f"against the champion digits-mlp-good ({champion_f1:.4f} in run {champion_run}" in (
        under.verdict_reasons or ""
    )


def test_a_champion_never_run_on_the_datasets_version_skips_the_change_rules(
    repository: FakeRepository, parser
) -> None:
    repository.promote("digits-mlp-good", "digits")
    repository.add_gate(rules_to_json((parse_rule("accuracy>=champion-0.5"),)), dataset="digits")
    run_job(repository, parser, Selection(ids=(2,)))
    (_, under) = _recorded(repository)["digits-mlp-undertrained"]
    version = (under.dataset_sha256 or "")[:12]
    assert version
    assert under.gate_note == (
        f"the champion digits-mlp-good has no run on this dataset version ({version}): change rules skipped"
    )
    assert _by_kind(under)[("accuracy", "absolute_change")]["outcome"] == "skipped"


def test_an_unreadable_dataset_gate_fails_the_job_run_saying_why(repository: FakeRepository, parser) -> None:
    repository.add_gate("not json", dataset="digits")
    run_job(repository, parser, Selection(ids=(1,)))
    (_, good) = _recorded(repository)["digits-mlp-good"]
    assert good.status == "succeeded"
    assert good.verdict == "fail"
    assert (good.verdict_reasons or "").startswith("gate 1 (dataset) cannot be read:")
    assert {entry["outcome"] for entry in _by_kind(good).values()} == {"pass"}, "the defaults are still recorded"
