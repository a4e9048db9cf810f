"""Table datasets against a real PostgreSQL: a 60-column sonar-like table with 'M'/'R' labels, read by the
app role through db/table_reader.py, evaluated by a 60-feature MLP, and checked against scikit-learn on
the same rows; every bad input gives its DatasetError; the fingerprint follows the table's content."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, roc_auc_score
from torch import nn

from ckpt_eval.architectures import Architecture, ArchitectureSpec, InputSpec
from ckpt_eval.datasets import DatasetDefinition, check_compatible, open_dataset
from ckpt_eval.db.table_reader import open_table_reader
from ckpt_eval.errors import DatasetError
from ckpt_eval.evaluate import evaluate_model
from ckpt_eval.train import train_model
from tests.support.deployment import APP_PASSWORD, Deployment

FEATURES = tuple(f"freq_{i:02d}" for i in range(1, 61))
CLASSES = ("R", "M")  # rock = 0, mine = 1 (the positive class)
ROWS = 208
TIMEOUT_MS = 30_000


def sonar_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(60, 16), nn.ReLU(), nn.Linear(16, 2))


def sonar_rows(seed: int = 0, n: int = ROWS) -> tuple[np.ndarray, list[str]]:
    """Features in [0, 1] with full float64 precision; mines echo a little louder in the upper bands."""
    rng = np.random.default_rng(seed)
    labels = ["M" if rng.random() < 0.53 else "R" for _ in range(n)]
    features = rng.random((n, 60)) * 0.6
    for i, label in enumerate(labels):
        if label == "M":
            features[i, 30:] += rng.random(30) * 0.04
    return features, labels


@pytest.fixture
def db(deployment: Deployment) -> Deployment:
    with deployment.superuser() as conn:
        conn.execute("CREATE SCHEMA sonar")
        conn.execute("GRANT USAGE ON SCHEMA sonar TO ckpt_eval_app")
    return deployment


def create_table(
    deployment: Deployment,
    name: str,
    features: np.ndarray | list[list[object]],
    labels: list[object],
    *,
    grant: bool = True,
    column_type: str = "double precision",
    types: dict[str, str] | None = None,
) -> None:
    types = types or {}
    columns = ", ".join(f"{c} {types.get(c, column_type)}" for c in FEATURES)
    with deployment.superuser() as conn:
        conn.execute(f"CREATE TABLE sonar.{name} ({columns}, label text)")
        with conn.cursor() as cur, cur.copy(f"COPY sonar.{name} FROM STDIN") as copy:
            for row, label in zip(features, labels, strict=True):
                copy.write_row([*(None if v is None else v for v in row), label])
        if grant:
            conn.execute(f"GRANT SELECT ON sonar.{name} TO ckpt_eval_app")


def app_connect(deployment: Deployment):  # type: ignore[no-untyped-def]
    def connect() -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=deployment.cluster.port,
            user="ckpt_eval_app",
            password=APP_PASSWORD,
            dbname=deployment.dbname,
            autocommit=True,
        )

    return connect


def definition(table: str = "sonar.readings", **changes: object) -> DatasetDefinition:
    fields: dict[str, object] = {
        "name": "sonar",
        "kind": "table",
        "source": table,
        "feature_columns": FEATURES,
        "label_column": "label",
        "class_names": CLASSES,
    }
    fields.update(changes)
    return DatasetDefinition(**fields)  # type: ignore[arg-type]


class CountingReader:
    """The real TableReader, counting how often the table is read."""

    def __init__(self, deployment: Deployment) -> None:
        self.reader = open_table_reader(app_connect(deployment), timeout_ms=TIMEOUT_MS)
        self.reads = 0

    @contextmanager
    def __call__(self, source, columns) -> Iterator:  # type: ignore[no-untyped-def]
        self.reads += 1
        with self.reader(source, columns) as blocks:
            yield blocks


def architecture(features: np.ndarray) -> Architecture:
    mean = tuple(float(v) for v in features.mean(axis=0))
    std = tuple(float(v) for v in features.std(axis=0))
    spec = ArchitectureSpec("sonar_test_mlp", sonar_mlp, InputSpec((60,), mean=mean, std=std), 2, CLASSES)
    return Architecture(spec, "tests", "0")


def independent_reference(deployment: Deployment, model: nn.Module, arch: Architecture) -> dict[str, object]:
    """The same rows fetched with a plain SELECT, one forward pass, every figure from scikit-learn."""
    with deployment.superuser() as conn:
        rows = conn.execute(f"SELECT {', '.join(FEATURES)}, label FROM sonar.readings").fetchall()
    features = np.array([row[:60] for row in rows], dtype=np.float32)
    labels = np.array([CLASSES.index(row[60]) for row in rows])
    inputs = arch.prepare(torch.from_numpy(features))
    with torch.no_grad():
        logits = model(inputs).double()
    probabilities = torch.softmax(logits, dim=1).numpy()
    predictions = logits.argmax(dim=1).numpy()
    return {
        "n": len(rows),
        "accuracy": accuracy_score(labels, predictions),
        "f1_macro": f1_score(labels, predictions, average="macro"),
        "confusion": confusion_matrix(labels, predictions, labels=[0, 1]),
        "roc_auc": roc_auc_score(labels, probabilities[:, 1]),
        "log_loss": log_loss(labels, probabilities, labels=[0, 1]),
    }


def test_table_dataset_metrics_equal_scikit_learn_on_the_same_rows(db: Deployment) -> None:
    features, labels = sonar_rows()
    create_table(db, "readings", features, labels)
    reader = CountingReader(db)
    data = open_dataset(definition(), None, reader)
    arch = architecture(features)
    assert data.sample_shape == (60,)
    assert data.num_classes == 2
    check_compatible(arch, data)

    model = train_model(arch, data, epochs=30, seed=3, lr=0.05)  # training reads the table through the same path
    reads_before = reader.reads
    metrics = evaluate_model(model, data, arch, batch_size=32)
    fingerprint = data.fingerprint()
    assert reader.reads == reads_before + 1  # one read fed the model AND the fingerprint
    assert len(fingerprint) == 64
    assert int(fingerprint[32:], 16) == ROWS  # the row count is its second half

    expected = independent_reference(db, model, arch)
    assert metrics.n_samples == expected["n"] == ROWS
    assert 0.6 < metrics.accuracy < 1.0  # a real, imperfect model
    assert metrics.accuracy == pytest.approx(expected["accuracy"], abs=1e-12)
    assert metrics.f1_macro == pytest.approx(expected["f1_macro"], abs=1e-12)
    assert metrics.confusion == tuple(tuple(int(v) for v in row) for row in expected["confusion"])
    assert metrics.roc_auc == pytest.approx(expected["roc_auc"], abs=1e-4)
    assert metrics.log_loss == pytest.approx(expected["log_loss"], rel=1e-6)
    rows = {(m, c): v for m, c, v in metrics.rows()}
    assert rows[("roc_auc", "")] == metrics.roc_auc
    assert rows[("log_loss", "")] == metrics.log_loss

    # A hashing-only pass (no evaluation made) gives the same fingerprint.
    fresh = open_dataset(definition(), None, reader)
    assert fresh.fingerprint() == fingerprint
    assert fresh.n_samples == ROWS


def test_table_values_arrive_exactly(db: Deployment) -> None:
    # extra_float_digits = 3: the float32 inputs equal the float64 values rounded once, bit for bit.
    features, labels = sonar_rows(seed=5, n=50)
    features[0, :4] = [1e-300, 123456789.123456789, -0.1, 2.0**-30]
    create_table(db, "readings", features, labels)
    data = open_dataset(definition(), None, CountingReader(db))
    inputs = torch.cat([x for x, _ in data.batches(16)])
    assert torch.equal(inputs, torch.from_numpy(features.astype(np.float32)))
    targets = torch.cat([y for _, y in data.batches(7)])
    assert targets.tolist() == [CLASSES.index(label) for label in labels]


def test_integer_labels(db: Deployment) -> None:
    features, labels = sonar_rows(seed=2, n=40)
    create_table(db, "numbered", features, [CLASSES.index(label) for label in labels])
    data = open_dataset(definition("sonar.numbered", class_names=None), None, CountingReader(db))
    assert data.num_classes is None
    arch = architecture(features)
    check_compatible(arch, data)
    assert torch.cat([y for _, y in data.batches(16, arch)]).tolist() == [CLASSES.index(x) for x in labels]

    create_table(db, "toolarge", features, [2] + [0] * 39)
    wide = open_dataset(definition("sonar.toolarge", class_names=None), None, CountingReader(db))
    with pytest.raises(DatasetError, match=r"label 2 in column 'label', row 1 is out of range 0\.\.1"):
        list(wide.batches(16, arch))


# --------------------------------------------------------------------------- bad inputs


def expect_error(db: Deployment, match: str, table: str = "sonar.bad", **changes: object) -> DatasetError:
    data = open_dataset(definition(table, **changes), None, CountingReader(db))
    with pytest.raises(DatasetError, match=match) as caught:
        for _ in data.batches(64):
            pass
    assert caught.value.exit_code == 65
    assert "'sonar'" in str(caught.value)  # the dataset is named
    return caught.value


def bad_table(db: Deployment, row: int, column: int, value: object, label: object = None, **kwargs: object) -> None:
    features, labels = sonar_rows(seed=9, n=100)
    values: list[list[object]] = [list(map(float, r)) for r in features]
    values[row][column] = value
    if label is not None:
        labels = list(labels)
        labels[row] = label
    create_table(db, "bad", values, labels, **kwargs)  # type: ignore[arg-type]


def test_null_feature(db: Deployment) -> None:
    bad_table(db, 76, 6, None)
    expect_error(db, r"NULL feature in column 'freq_07', row 77")


def test_text_in_a_numeric_column(db: Deployment) -> None:
    bad_table(db, 41, 2, "12,5 dB", types={"freq_03": "text"})
    expect_error(db, r"non-numeric value '12,5 dB' in column 'freq_03', row 42")


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_value(db: Deployment, value: str) -> None:
    bad_table(db, 9, 59, float(value.replace("Infinity", "inf")))
    expect_error(db, rf"non-finite value '{value}' in column 'freq_60', row 10")


def test_value_beyond_float32(db: Deployment) -> None:
    bad_table(db, 3, 0, 1e300)
    expect_error(db, r"beyond float32's range in column 'freq_01', row 4")


def test_unknown_label(db: Deployment) -> None:
    bad_table(db, 55, 0, 0.5, label="X")
    expect_error(db, r"unknown label 'X' in column 'label', row 56 \(class names: 'R', 'M'\)")


def test_null_label(db: Deployment) -> None:
    features, labels = sonar_rows(seed=9, n=30)
    create_table(db, "bad", features, [*labels[:-1], None])
    expect_error(db, r"NULL label in column 'label', row 30")


def test_text_label_without_class_names(db: Deployment) -> None:
    features, labels = sonar_rows(seed=9, n=30)
    create_table(db, "bad", features, labels)
    expect_error(db, rf"label '{labels[0]}' in column 'label', row 1 is not a class index", class_names=None)


def test_missing_column(db: Deployment) -> None:
    features, labels = sonar_rows(seed=9, n=30)
    create_table(db, "bad", features, labels)
    error = expect_error(
        db,
        r"lacks a column the dataset names: column \"freq_61\" does not exist",
        feature_columns=(*FEATURES[:-1], "freq_61"),
    )
    assert "sonar.bad" in str(error)


def test_missing_table_and_schema(db: Deployment) -> None:
    expect_error(db, r"table 'sonar.absent' does not exist", table="sonar.absent")
    expect_error(db, r"table 'nowhere.absent'", table="nowhere.absent")


def test_table_the_app_role_may_not_read(db: Deployment) -> None:
    features, labels = sonar_rows(seed=9, n=30)
    create_table(db, "bad", features, labels, grant=False)
    error = expect_error(db, r"role ckpt_eval_app may not read table 'sonar.bad'")
    assert 'GRANT SELECT ON "sonar"."bad" TO "ckpt_eval_app"' in str(error)
    assert 'GRANT USAGE ON SCHEMA "sonar" TO "ckpt_eval_app"' in str(error)
    data = open_dataset(definition("sonar.bad"), None, CountingReader(db))
    with pytest.raises(DatasetError, match="may not read"):
        data.fingerprint()


def test_hostile_names_are_quoted_not_interpolated(db: Deployment) -> None:
    features, labels = sonar_rows(seed=9, n=30)
    create_table(db, "readings", features, labels)
    hostile = 'readings" ; DROP SCHEMA sonar CASCADE; --'
    with pytest.raises(DatasetError, match="does not exist"):
        list(open_dataset(definition(f"sonar.{hostile}"), None, CountingReader(db)).batches(8))
    assert db.rows("SELECT count(*) FROM sonar.readings") == [["30"]]


# --------------------------------------------------------------------------- fingerprint


def fingerprint(db: Deployment) -> str:
    return open_dataset(definition(), None, CountingReader(db)).fingerprint()


def test_fingerprint_follows_content_not_order(db: Deployment) -> None:
    features, labels = sonar_rows(seed=11, n=120)
    create_table(db, "readings", features, labels)
    original = fingerprint(db)
    assert fingerprint(db) == original

    with db.superuser() as conn:
        first_before = conn.execute("SELECT freq_01 FROM sonar.readings LIMIT 1").fetchone()
        conn.execute("CREATE TABLE sonar.shuffled AS SELECT * FROM sonar.readings ORDER BY freq_02 DESC")
        conn.execute("TRUNCATE sonar.readings")
        conn.execute("INSERT INTO sonar.readings SELECT * FROM sonar.shuffled")
        first_after = conn.execute("SELECT freq_01 FROM sonar.readings LIMIT 1").fetchone()
    assert first_before != first_after  # the rows really come in another order
    assert fingerprint(db) == original

    with db.superuser() as conn:
        conn.execute(
            "UPDATE sonar.readings SET freq_33 = freq_33 + 1e-12 "
            "WHERE freq_02 = (SELECT max(freq_02) FROM sonar.readings)"
        )
    changed = fingerprint(db)
    assert changed != original

    with db.superuser() as conn:
        conn.execute("INSERT INTO sonar.readings SELECT * FROM sonar.shuffled LIMIT 1")  # a duplicate row
    appended = fingerprint(db)
    assert appended not in (original, changed)
    assert int(appended[32:], 16) == 121


def test_views_timeouts_and_failing_values(db: Deployment) -> None:
    features, labels = sonar_rows(seed=4, n=20)
    create_table(db, "readings", features, labels)
    with db.superuser() as conn:
        conn.execute("CREATE VIEW sonar.recent AS SELECT * FROM sonar.readings WHERE freq_01 < 0.3")
        conn.execute("CREATE VIEW sonar.slow AS SELECT r.* FROM sonar.readings r, (SELECT pg_sleep(3)) s")
        conn.execute("CREATE VIEW sonar.broken AS SELECT r.*, 1 / 0 AS oops FROM sonar.readings r")
        conn.execute("GRANT SELECT ON sonar.recent, sonar.slow, sonar.broken TO ckpt_eval_app")
    recent = open_dataset(definition("sonar.recent"), None, CountingReader(db))
    inputs = torch.cat([x for x, _ in recent.batches(8)])
    assert torch.equal(inputs, torch.from_numpy(features[features[:, 0] < 0.3].astype(np.float32)))

    impatient = open_table_reader(app_connect(db), timeout_ms=500)
    with pytest.raises(DatasetError, match=r"table 'sonar.slow' took longer than the statement timeout \(500 ms\)"):
        list(open_dataset(definition("sonar.slow"), None, impatient).batches(8))
    broken = definition("sonar.broken", feature_columns=(*FEATURES[:-1], "oops"))
    with pytest.raises(DatasetError, match=r"reading table 'sonar.broken' failed on a value: division by zero"):
        list(open_dataset(broken, None, CountingReader(db)).batches(8))


def test_the_table_memory_bench_runs_end_to_end() -> None:
    # Tiny sizes, so that bench/table_memory.py cannot rot; its figures are never asserted.
    repo = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "-m", "bench.table_memory", "--rows", "300", "600"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "evaluate peak RSS bench.t600 / bench.t300:" in completed.stdout
    assert "bench.t600: evaluation takes" in completed.stdout
    evaluated = [line.split()[1] for line in completed.stdout.splitlines() if line.startswith("evaluate ")]
    assert evaluated[:2] == ["300", "600"]
