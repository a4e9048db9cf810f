"""Batch scoring in-process: parsing and predicting a chunk (pure), and the Scorer and `ckpt-eval score`
over a FakeScoringRepository with the real parser, architecture and shipped breast_cancer checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from ckpt_eval import cli
from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.checkpoints import sha256_file
from ckpt_eval.config import Settings, Worker
from ckpt_eval.copy_format import SIGNATURE, TRAILER
from ckpt_eval.db.scoring import ScoringJob
from ckpt_eval.errors import ConfigError, UsageError
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from ckpt_eval.report import scoring_summary_text
from ckpt_eval.scoring import (
    MAX_REASONS,
    BadRow,
    GateRefused,
    Predictions,
    Predictor,
    Scorer,
    ScoringOptions,
    ScoringSummary,
    copy_blocks,
    parse_rows,
    score_blocks,
)
from tests.unit.fakes import FakeScoringRepository, decode_binary_copy

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO / "checkpoints"
FEATURES = tuple(f"f{i:02d}" for i in range(30))


def records(*rows: list[object]) -> list[bytes]:
    return [",".join("" if v is None else str(v) for v in row).encode() for row in rows]


def test_parse_rows_keeps_the_good_rows_and_names_each_bad_one() -> None:
    keys, values, bad = parse_rows(
        records([1, 0.5, 2], [2, None, 1], [3, "abc", 1], [4, 1, "inf"], [5, 1e39, 0], [6, -1, 7]), ("a", "b")
    )
    assert keys.tolist() == [1, 6]
    assert values.dtype == np.float32
    assert values.tolist() == [[0.5, 2.0], [-1.0, 7.0]]
    assert bad == [
        (2, "NULL feature in column 'a'"),
        (3, "value 'abc' is not a finite number in column 'a'"),
        (4, "value 'inf' is not a finite number in column 'b'"),
        (5, "value '1e+39' is not a finite number in column 'a'"),
    ]


def test_a_bad_row_fails_the_chunk_unless_bad_rows_are_skipped() -> None:
    def predict(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(values), np.int32), np.tile([0.25, 0.75], (len(values), 1))

    block = b"\n".join(records([1, 1, 1], [2, None, 1], [3, 2, 2])) + b"\n"
    with pytest.raises(BadRow, match=r"row with key 2: NULL feature in column 'a'; --skip-bad-rows"):
        score_blocks([block], ("a", "b"), predict, skip_bad_rows=False)
    skipped = score_blocks([block], ("a", "b"), predict, skip_bad_rows=True)
    assert (skipped.count, skipped.skipped) == (2, 1)
    assert skipped.summary() == "skipped 1 row(s): key 2: NULL feature in column 'a'"


def test_skipped_rows_are_all_counted_and_the_first_ones_named() -> None:
    predictions = Predictions()
    for key in range(MAX_REASONS + 5):
        predictions.skip(key, "NULL feature in column '\x1b[31mred'")
    summary = predictions.summary()
    assert summary is not None
    assert summary.startswith(f"skipped {MAX_REASONS + 5} row(s): key 0: ")
    assert summary.endswith("; and 5 more")
    assert "\x1b" not in summary


def test_the_binary_copy_stream_holds_each_prediction_exactly() -> None:
    predictions = Predictions(
        keys=[np.array([7, 9]), np.array([2**40])],
        indices=[np.array([1, 0]), np.array([1])],
        probabilities=[np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([[1 / 3, 2 / 3]])],
    )
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    rows = decode_binary_copy(b"".join(copy_blocks(predictions, 3, 11, when)))
    # Two classes: the positive class's probability (class 1's) only; the view shows both, and the class
    # names (the run's). Rows keep the chunk's key order.
    assert rows == [
        (7, 3, 11, 1, None, 0.8, when),
        (9, 3, 11, 0, None, 0.4, when),
        (2**40, 3, 11, 1, None, 2 / 3, when),
    ]
    three = Predictions(keys=[np.array([1])], indices=[np.array([2])], probabilities=[np.array([[0.1, 0.2, 0.7]])])
    assert decode_binary_copy(b"".join(copy_blocks(three, 1, 1, when))) == [(1, 1, 1, 2, [0.1, 0.2, 0.7], None, when)]
    assert b"".join(copy_blocks(Predictions(), 1, 1, when)) == SIGNATURE + TRAILER


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 * 1024**2)) as started:
        yield started


def make_job(**changes: object) -> ScoringJob:
    fields: dict[str, object] = {
        "name": "patients", "checkpoint_name": "bc", "checkpoint_id": 1, "path": "breast-cancer-mlp.pt",
        "arch": "breast_cancer_mlp", "sha256": sha256_file(CHECKPOINTS / "breast-cancer-mlp.pt"),
        "input_dataset": "patients", "dataset_kind": "table", "source": "lab.patients", "feature_columns": FEATURES,
        "class_names": ("malignant", "benign"), "key_column": "id", "output_schema": "lab",
        "output_table": "predictions", "chunk_rows": 100, "allow_ungated": False, "active_run": None,
    }  # fmt: skip
    fields.update(changes)
    return ScoringJob(**fields)  # type: ignore[arg-type]


@pytest.fixture
def repository() -> FakeScoringRepository:
    data = load_breast_cancer().data
    return FakeScoringRepository(make_job(), {key: row.tolist() for key, row in enumerate(data)})


def scorer(repository: FakeScoringRepository, parser: CheckpointParser) -> Scorer:
    settings = Settings(checkpoint_root=CHECKPOINTS, data_dir=None, lease_seconds=60)
    return Scorer(settings, repository, lambda: repository, parser, worker=Worker("test", 1, "x"))  # type: ignore[arg-type]


def expected_probabilities() -> np.ndarray:
    architecture = get_architecture("breast_cancer_mlp")
    model = build_model("breast_cancer_mlp")
    model.load_state_dict(torch.load(CHECKPOINTS / "breast-cancer-mlp.pt", weights_only=True))
    with torch.no_grad():
        inputs = architecture.prepare(torch.from_numpy(load_breast_cancer().data.astype(np.float32)))
        return torch.softmax(model.eval()(inputs).double(), dim=1).numpy()


def test_the_scorer_writes_one_prediction_per_row_equal_to_a_forward_pass(repository, parser) -> None:
    summary = scorer(repository, parser).run("patients", ScoringOptions())
    assert (summary.scoring_run_id, summary.started, summary.run_status) == (1, True, "done")
    assert summary.rows_scored == 569
    assert len(summary.chunks) == 6
    assert sorted(row[0] for row in repository.output) == list(range(569))
    expected = expected_probabilities()
    for key, run, checkpoint, index, probabilities, positive, _ in repository.output:
        assert probabilities is None  # two classes: the positive class's probability says it all
        assert positive == pytest.approx(expected[key][1], rel=1e-5, abs=1e-6)
        assert index == int(np.argmax(expected[key]))
        assert (run, checkpoint) == (1, 1)
    assert repository.runs[1]["class_names"] == ("malignant", "benign"), "the run names its classes"
    again = scorer(repository, parser).run("patients", ScoringOptions())
    assert (again.scoring_run_id, again.rows_scored) == (None, 0)
    assert "nothing to score" in scoring_summary_text(again)


def test_rescore_and_limit_make_new_runs(repository, parser) -> None:
    limited = scorer(repository, parser).run("patients", ScoringOptions(limit=150))
    assert limited.rows_scored == 150
    assert scorer(repository, parser).run("patients", ScoringOptions(dry_run=True)).planned_rows == 569 - 150
    rest = scorer(repository, parser).run("patients", ScoringOptions())
    assert rest.rows_scored == 569 - 150
    rescored = scorer(repository, parser).run("patients", ScoringOptions(rescore=True))
    assert (rescored.scoring_run_id, rescored.rows_scored) == (3, 569)
    assert len(repository.output) == 2 * 569


def test_the_gate_refuses_a_checkpoint_that_did_not_pass_unless_forced(repository, parser) -> None:
    repository.verdicts = [("breast_cancer", "succeeded", "fail")]
    with pytest.raises(
        GateRefused, match=r"has not passed its gate \(its latest runs: 'breast_cancer': succeeded/fail"
    ):
        scorer(repository, parser).run("patients", ScoringOptions())
    assert GateRefused.exit_code == 3
    repository.verdicts = []
    with pytest.raises(GateRefused, match="it has no evaluation yet"):
        scorer(repository, parser).run("patients", ScoringOptions())
    assert repository.runs == {}
    assert scorer(repository, parser).run("patients", ScoringOptions(force=True)).rows_scored == 569


def test_a_lost_lease_writes_nothing_and_leaves_the_run_open(repository, parser) -> None:
    repository.steal_before_finish = True
    summary = scorer(repository, parser).run("patients", ScoringOptions())
    assert {c.status for c in summary.chunks} == {"lost"}
    assert repository.output == []
    assert summary.run_status == "running"
    assert summary.ok


def test_an_interrupt_mid_chunk_hands_the_chunk_back(repository, parser, monkeypatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ckpt_eval.scoring.Predictor.__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scorer(repository, parser).run("patients", ScoringOptions())
    assert {c.status for c in repository.chunks.values()} == {"pending"}
    assert repository.output == []


def test_configuration_errors_name_the_job(repository, parser) -> None:
    with pytest.raises(UsageError, match=r"no scoring job 'nope' \(scoring jobs: 'patients'\)"):
        scorer(repository, parser).run("nope", ScoringOptions())
    repository.job = make_job(feature_columns=FEATURES[:5])
    with pytest.raises(ConfigError, match=r"expects inputs of shape \(30,\), the input dataset has 5"):
        scorer(repository, parser).run("patients", ScoringOptions(force=True))
    repository.job = make_job(dataset_kind="csv")
    with pytest.raises(ConfigError, match="must be a table dataset"):
        scorer(repository, parser).run("patients", ScoringOptions(force=True))


def test_the_summary_escapes_names_from_the_database() -> None:
    summary = ScoringSummary("job\x1b]0;owned\x07", 4, True, 10, (), "done")
    text = scoring_summary_text(summary)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "started scoring run 4" in text


def test_score_in_process_prints_json_and_exits_3_when_a_chunk_failed(repository, capsys, monkeypatch) -> None:
    repository.rows[5][3] = None
    monkeypatch.setattr(cli, "_scoring_repositories", lambda options, settings: lambda: repository)
    code = cli.main(["score", "patients", "--format", "json", "--checkpoint-root", str(CHECKPOINTS)])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    summary = json.loads(captured.out)
    assert summary["rows_scored"] == 569 - 100
    assert summary["run_status"] == "failed"
    assert [c["status"] for c in summary["chunks"]].count("failed") == 1
    code = cli.main(["score", "patients", "--skip-bad-rows", "--checkpoint-root", str(CHECKPOINTS)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "99 row(s) scored, 1 skipped" in captured.out


def test_a_model_whose_forward_pass_fails_fails_one_chunk_and_stops(repository, parser, monkeypatch) -> None:
    def broken(inputs):  # type: ignore[no-untyped-def]
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied \x1b[2J")

    summary = scorer(repository, parser).run("patients", ScoringOptions())
    assert summary.rows_scored == 569
    built = Predictor.__init__

    def with_a_broken_model(self, *args):  # type: ignore[no-untyped-def]
        built(self, *args)
        self.view = broken

    monkeypatch.setattr(Predictor, "__init__", with_a_broken_model)
    repository.rows.update({1000 + k: v for k, v in list(repository.rows.items())[:250]})
    failed = scorer(repository, parser).run("patients", ScoringOptions())
    assert [(c.status, c.model_failed) for c in failed.chunks] == [("failed", True)]
    assert "the forward pass failed: RuntimeError: mat1 and mat2" in (failed.chunks[0].error or "")
    assert "\x1b" not in (failed.chunks[0].error or "")
    assert not failed.ok
    assert sorted(c.status for c in repository.chunks.values() if c.attempt == 0) == ["pending", "pending"]


def test_a_run_that_another_worker_finished_meanwhile_leaves_nothing_to_score(repository, parser, monkeypatch) -> None:
    start_run = repository.start_run

    def raced(job, plan, **fields):  # type: ignore[no-untyped-def]
        run_id = start_run(job, plan, **fields)  # another worker's run, which then finishes at once
        for chunk in repository.chunks.values():
            chunk.status = "done"
        repository.complete_run(job, run_id)
        return None

    monkeypatch.setattr(repository, "start_run", raced)
    summary = scorer(repository, parser).run("patients", ScoringOptions())
    assert (summary.scoring_run_id, summary.rows_scored, summary.ok) == (None, 0, True)
