"""Gate rules (pure): thresholds on any metric, and minimum changes against the dataset's champion.

A rule names a metric, whether higher or lower is better, and up to three requirements:
an absolute threshold, a minimum absolute change and a minimum relative change over the champion's
latest run on the same dataset version. A change is measured as an improvement: for a
higher-is-better metric ``candidate - champion``, for a lower-is-better one ``champion - candidate``;
a negative minimum tolerates a regression ("at most 0.01 worse"). The relative change is the change
over ``|champion|``. The checkpoint's ``min_accuracy`` and ``min_f1_macro`` columns are threshold
rules of this kind (accuracy >= 0.7 and f1_macro >= 0.7 when unset), as they always were.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Literal

from .text import printable

Direction = Literal["higher", "lower"]
RequirementKind = Literal["threshold", "absolute_change", "relative_change"]
Outcome = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class GateRule:
    metric: str
    direction: Direction = "higher"
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    scope: str = "default"  # where it comes from: 'checkpoint', 'dataset' or 'default' (the two columns)


@dataclass(frozen=True)
class RuleResult:
    """One requirement of one rule, as a run records it: the values compared and the outcome."""

    metric: str
    direction: Direction
    kind: RequirementKind
    required: float  # the threshold, or the minimum change (relative: a fraction, 0.01 is 1 %)
    value: float | None  # the candidate's metric (None: the run has no such metric)
    baseline: float | None = None  # the champion's metric (change rules)
    change: float | None = None  # the improvement measured (relative: a fraction)
    outcome: Outcome = "pass"
    note: str | None = None  # why a requirement was skipped or failed, in words
    scope: str = "default"
    baseline_run_id: int | None = None


@dataclass(frozen=True)
class Baseline:
    """The champion's latest succeeded run on the dataset version the candidate was evaluated on."""

    checkpoint_name: str
    run_id: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class PairGate:
    """What a (checkpoint, dataset) pair is gated with: its rules, and the champion's runs by version."""

    rules: tuple[GateRule, ...]
    dataset: str = ""
    champion: str | None = None  # the dataset's current champion (None: none promoted yet)
    is_champion: bool = False  # the candidate is the champion itself
    baselines: dict[str, Baseline] | None = None  # dataset version (sha256) -> the champion's latest run on it
    error: str | None = None  # a stored gate that cannot be read: the run fails its gate, saying why


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    results: tuple[RuleResult, ...]
    reasons: tuple[str, ...]  # the failed requirements, in words (the run's verdict_reasons)
    note: str | None  # why change rules were skipped, when they were

    @property
    def label(self) -> str:
        return "pass" if self.passed else "fail"


# Metrics a rule may name: every overall metric a run records (metrics.Metrics.rows).
KNOWN_METRICS = (
    "accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "loss", "roc_auc", "log_loss",
)  # fmt: skip
LOWER_IS_BETTER = frozenset({"loss", "log_loss"})
DEFAULT_MIN_ACCURACY = 0.7
DEFAULT_MIN_F1_MACRO = 0.7


class GateSyntaxError(ValueError):
    """A rule that cannot be read; the message says what was expected."""


def default_rules(min_accuracy: float | None, min_f1_macro: float | None) -> tuple[GateRule, ...]:
    """The checkpoint's two gate columns, as rules (0.7 each when unset)."""
    return (
        GateRule("accuracy", "higher", DEFAULT_MIN_ACCURACY if min_accuracy is None else float(min_accuracy)),
        GateRule("f1_macro", "higher", DEFAULT_MIN_F1_MACRO if min_f1_macro is None else float(min_f1_macro)),
    )


def effective_rules(
    checkpoint_rules: tuple[GateRule, ...] | None,
    dataset_rules: tuple[GateRule, ...] | None,
    defaults: tuple[GateRule, ...],
) -> tuple[GateRule, ...]:
    """Per metric, the most specific rules win: the checkpoint's, else the dataset's, else the defaults."""
    chosen: list[GateRule] = []
    named: set[str] = set()
    for rules in (checkpoint_rules or (), dataset_rules or (), defaults):
        metrics = {rule.metric for rule in rules}
        chosen += [rule for rule in rules if rule.metric not in named]
        named |= metrics
    return tuple(chosen)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _improvement(rule: GateRule, value: float, baseline: float) -> float:
    return value - baseline if rule.direction == "higher" else baseline - value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _signed(value: float, relative: bool = False) -> str:
    return f"{value * 100:+.2f}%" if relative else f"{value:+.4f}"


def apply_rules(metrics: dict[str, float], gate: PairGate, dataset_version: str | None) -> GateOutcome:
    """Every requirement of every rule, compared; a run passes when none fails (skipped ones do not count).

    A metric that is NaN or infinite fails every requirement on it, and so does a loss that is not
    finite whatever the rules (a diverged model never passes).
    """
    results: list[RuleResult] = []
    reasons: list[str] = []
    if gate.error:
        reasons.append(gate.error)  # the defaults below still run: their values are worth recording
    loss = metrics.get("loss")
    if loss is not None and not math.isfinite(loss):
        reasons.append(f"loss is {loss}")
    baseline, note = _baseline(gate, dataset_version)
    for rule in gate.rules:
        value = metrics.get(rule.metric)
        common = {"metric": rule.metric, "direction": rule.direction, "value": value, "scope": rule.scope}
        if rule.threshold is not None:
            result = _threshold(rule, value, common)
            results.append(result)
            if result.outcome == "fail":
                reasons.append(result.note or rule.metric)
        for kind, required in (
            ("absolute_change", rule.min_absolute_change),
            ("relative_change", rule.min_relative_change),
        ):
            if required is None:
                continue
            result = _change(rule, kind, required, value, baseline, note, common)  # type: ignore[arg-type]
            results.append(result)
            if result.outcome == "fail":
                reasons.append(result.note or rule.metric)
    return GateOutcome(not reasons, tuple(results), tuple(reasons), note if _has_change_rules(gate) else None)


def _has_change_rules(gate: PairGate) -> bool:
    return any(r.min_absolute_change is not None or r.min_relative_change is not None for r in gate.rules)


def _baseline(gate: PairGate, dataset_version: str | None) -> tuple[Baseline | None, str | None]:
    dataset = printable(gate.dataset, 80)
    if gate.champion is None:
        return None, f"no champion for dataset {dataset} yet: change rules skipped"
    if gate.is_champion:
        return None, "this checkpoint is the champion: change rules skipped"
    found = (gate.baselines or {}).get(dataset_version or "")
    if found is None:
        version = (dataset_version or "unknown")[:12]
        champion = printable(gate.champion, 80)
        return None, f"the champion {champion} has no run on this dataset version ({version}): change rules skipped"
    return found, None


def _threshold(rule: GateRule, value: float | None, common: dict) -> RuleResult:
    required = float(rule.threshold)  # type: ignore[arg-type]
    if not _finite(value):
        return RuleResult(kind="threshold", required=required, outcome="fail",
                          note=f"{rule.metric} is {'missing' if value is None else value}", **common)  # fmt: skip
    ok = value >= required if rule.direction == "higher" else value <= required  # type: ignore[operator]
    failed_as = "<" if rule.direction == "higher" else ">"
    note = None if ok else f"{rule.metric} {_fmt(value)} {failed_as} {required:g}"
    return RuleResult(kind="threshold", required=required, outcome="pass" if ok else "fail", note=note, **common)


def _change(
    rule: GateRule, kind: RequirementKind, required: float, value: float | None, baseline: Baseline | None,
    skipped: str | None, common: dict,
) -> RuleResult:  # fmt: skip
    if baseline is None:
        return RuleResult(kind=kind, required=required, outcome="skipped", note=skipped, **common)
    before = baseline.metrics.get(rule.metric)
    where = {"kind": kind, "required": required, "baseline": before, "baseline_run_id": baseline.run_id, **common}
    if not _finite(value):
        return RuleResult(outcome="fail", note=f"{rule.metric} is {'missing' if value is None else value}", **where)
    if not _finite(before):
        shown = "missing" if before is None else before
        return RuleResult(outcome="fail", note=f"the champion's {rule.metric} is {shown}", **where)
    relative = kind == "relative_change"
    change = _improvement(rule, value, before)  # type: ignore[arg-type]
    if relative:
        if before == 0:
            return RuleResult(outcome="skipped", note=f"the champion's {rule.metric} is 0: no relative change", **where)
        change /= abs(before)  # type: ignore[arg-type]
    # A change exactly at the minimum passes, as a value exactly at a threshold does: the subtraction's
    # rounding (0.3 - 0.2 = 0.09999999999999998) must not fail it.
    if change >= required or math.isclose(change, required, rel_tol=1e-9, abs_tol=1e-12):
        return RuleResult(change=change, outcome="pass", **where)
    champion = printable(baseline.checkpoint_name, 80)
    note = (
        f"{rule.metric} changed {_signed(change, relative)} against the champion {champion} "
        f"({_fmt(before)} in run {baseline.run_id}, now {_fmt(value)}): "
        f"{_signed(required, relative)} required, short by {_short(required - change, relative)}"
    )
    return RuleResult(change=change, outcome="fail", note=note, **where)


def _short(gap: float, relative: bool) -> str:
    return f"{gap * 100:.2f} points" if relative else f"{gap:.4f}"


# -- the rule syntax of the CLI and of the inventory ------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RULE = re.compile(
    rf"^ *(?P<metric>[a-z][a-z0-9_]{{0,62}}) *(?P<op>>=|<=) *"
    rf"(?:(?P<threshold>{_NUMBER})|champion *(?:(?P<sign>[+-]) *(?P<change>{_UNSIGNED}) *(?P<percent>%)?)?) *$",
    re.ASCII,  # ASCII digits and spaces only: no Arabic-Indic 0.7, no control characters as blanks
)
RULE_SYNTAX = (
    "METRIC>=X or METRIC<=X (a threshold), METRIC>=champion+D or METRIC<=champion-D (a minimum change "
    "over the champion's latest run; D may end in %, and a negative change tolerates a regression)"
)


def _check_metric(metric: str) -> str:
    if metric not in KNOWN_METRICS:
        raise GateSyntaxError(f"unknown metric {printable(repr(metric), 80)}: one of {', '.join(KNOWN_METRICS)}")
    return metric


def parse_rule(text: str) -> GateRule:
    """One rule of the CLI's syntax, e.g. ``f1_macro>=0.8``, ``accuracy>=champion+0.01``,
    ``log_loss<=champion-2%``. ``>=`` means higher is better, ``<=`` lower is better; a change is
    written as the candidate's bound (``loss<=champion-0.01``: at least 0.01 lower than the champion)."""
    match = _RULE.match(text)
    if match is None:
        raise GateSyntaxError(f"cannot read gate rule {printable(text, 80)}: expected {RULE_SYNTAX}")
    metric = _check_metric(match["metric"])
    direction: Direction = "higher" if match["op"] == ">=" else "lower"
    if match["threshold"] is not None:
        threshold = float(match["threshold"])
        if not math.isfinite(threshold):
            raise GateSyntaxError(f"gate rule {printable(text, 80)}: the threshold must be a finite number")
        return GateRule(metric, direction, threshold=threshold)
    signed = 0.0 if match["change"] is None else float(match["change"]) * (-1 if match["sign"] == "-" else 1)
    if not math.isfinite(signed):
        raise GateSyntaxError(f"gate rule {printable(text, 80)}: the change must be a finite number")
    # The candidate's bound, turned into a minimum improvement: for lower-is-better, champion - D means +D.
    improvement = signed if direction == "higher" else -signed
    if match["percent"]:
        return GateRule(metric, direction, min_relative_change=improvement / 100)
    return GateRule(metric, direction, min_absolute_change=improvement)


def rule_text(rule: GateRule) -> list[str]:
    """A rule in the CLI's syntax (one text per requirement): what ``gate show`` prints."""
    op = ">=" if rule.direction == "higher" else "<="
    bound = 1 if rule.direction == "higher" else -1
    texts = []
    if rule.threshold is not None:
        texts.append(f"{rule.metric}{op}{_exact(rule.threshold)}")
    if rule.min_absolute_change is not None:
        texts.append(f"{rule.metric}{op}champion{_exact(bound * rule.min_absolute_change, signed=True)}")
    if rule.min_relative_change is not None:
        texts.append(f"{rule.metric}{op}champion{_exact(bound * rule.min_relative_change * 100, signed=True)}%")
    return texts


def _exact(value: float, signed: bool = False) -> str:
    """The shortest text that reads back as the same float (repr), without a trailing .0."""
    text = repr(float(value) + 0.0)  # + 0.0: no "-0.0"
    text = text[:-2] if text.endswith(".0") else text
    return f"+{text}" if signed and not text.startswith("-") else text


_RULE_KEYS = ("metric", "direction", "threshold", "min_absolute_change", "min_relative_change")


def rule_from_mapping(entry: object, scope: str = "default") -> GateRule:
    """A rule as the inventory and the database hold it: a mapping of _RULE_KEYS."""
    if not isinstance(entry, dict):
        raise GateSyntaxError(f"a gate rule is a mapping with keys {', '.join(_RULE_KEYS)}")
    unknown = sorted(str(key) for key in set(entry) - set(_RULE_KEYS))
    if unknown:
        raise GateSyntaxError(f"gate rule: unknown key(s) {printable(', '.join(unknown), 200)}")
    metric = entry.get("metric")
    if not isinstance(metric, str):
        raise GateSyntaxError("gate rule: metric must be a string")
    direction = entry.get("direction", "lower" if metric in LOWER_IS_BETTER else "higher")
    if direction not in ("higher", "lower"):
        raise GateSyntaxError(f"gate rule on {printable(metric, 40)}: direction is 'higher' or 'lower'")
    numbers: dict[str, float | None] = {}
    for key in _RULE_KEYS[2:]:
        value = entry.get(key)
        if value is None:
            numbers[key] = None
            continue
        try:
            number = None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)
        except OverflowError:  # an integer beyond float's range
            number = None
        if number is None or not math.isfinite(number):
            raise GateSyntaxError(f"gate rule on {printable(metric, 40)}: {key} must be a finite number")
        numbers[key] = number
    if all(value is None for value in numbers.values()):
        raise GateSyntaxError(f"gate rule on {printable(metric, 40)}: give a threshold or a minimum change")
    return GateRule(_check_metric(metric), direction, scope=scope, **numbers)  # type: ignore[arg-type]


def rules_to_json(rules: tuple[GateRule, ...]) -> str:
    return json.dumps(
        [{key: getattr(rule, key) for key in _RULE_KEYS if getattr(rule, key) is not None} for rule in rules]
    )


def rules_from_json(text: str, scope: str) -> tuple[GateRule, ...]:
    return tuple(rule_from_mapping(entry, scope) for entry in json.loads(text))


def results_to_json(results: tuple[RuleResult, ...]) -> str:
    """What a run records: every requirement with the values compared (non-finite numbers as null)."""

    def clean(value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps([{key: clean(value) for key, value in asdict(result).items()} for result in results])


def results_from_json(text: str | None) -> tuple[RuleResult, ...]:
    if not text:
        return ()
    known = set(RuleResult.__dataclass_fields__)
    return tuple(RuleResult(**{k: v for k, v in entry.items() if k in known}) for entry in json.loads(text))
