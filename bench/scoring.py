"""Batch scoring figures: rows scored per second end to end, COPY vs executemany INSERT, memory N vs 4N.

- ``ckpt-eval score`` of an input table of N rows x 30 features (made by the server from generate_series,
  an integer key, the shipped breast_cancer checkpoint): wall time and the child's peak RSS, for N and
  4N rows (memory is flat when the ratio is about 1.0: chunks are read, predicted and written one at a
  time);
- the write path alone: the same prediction rows written into a scoring output table by ``COPY FROM
  STDIN`` (the binary stream a chunk's finish writes, built column-wise by copy_format.py) and by
  ``executemany`` of a row INSERT (psycopg 3 pipelines it), each in one transaction, as the app role;
  and one INSERT statement per row, the way the old design wrote (timed on a tenth of the rows).

Used by bench/runner.py (figures in the table and the JSON); nothing is asserted.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass

import numpy as np
import psycopg

from ckpt_eval.scoring import Predictions, copy_blocks

from .fixture import APP_PASSWORD, CKPT_EVAL, REPO, BenchDatabase
from .procs import Measured, run_measured

FEATURES = tuple(f"f{i:02d}" for i in range(30))
CHECKPOINT = "breast-cancer-mlp"
CLASSES = ("malignant", "benign")


@dataclass(frozen=True)
class ScoringFigures:
    rows: int
    runs: dict[int, Measured]  # input rows -> the measured `ckpt-eval score`
    copy_seconds: float
    insert_seconds: float  # executemany (psycopg 3 pipelines it)
    row_insert_seconds: float  # one INSERT statement per row
    write_rows: int


def prepare(database: BenchDatabase, sizes: list[int]) -> None:
    """The checkpoint, a dataset and a scoring job per input size (tables lab.rows_<n>)."""
    source = REPO / "checkpoints" / f"{CHECKPOINT}.pt"
    shutil.copyfile(source, database.workspace.checkpoint_root / source.name)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    columns = ", ".join(f"{c} double precision" for c in FEATURES)
    values = ", ".join(f"random() * {10 + i}" for i in range(len(FEATURES)))
    with database.superuser() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS lab")
        conn.execute("GRANT USAGE ON SCHEMA lab TO ckpt_eval_app")
        conn.execute("GRANT USAGE, CREATE ON SCHEMA lab TO ckpt_eval_owner")
        conn.execute(
            "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) "
            "VALUES (%s, %s, 'breast_cancer_mlp', 'breast_cancer', %s)",
            (CHECKPOINT, source.name, sha),
        )
        # An empty output table for the write figures (COPY and INSERT meet the same index sizes).
        conn.execute("SET ROLE ckpt_eval_owner")
        conn.execute("SELECT ckpt_eval.create_scoring_job('writes', %s, 'none', 'id', 'lab', 'writes')", (CHECKPOINT,))
        conn.execute("RESET ROLE")
        for rows in sizes:
            conn.execute(f"CREATE TABLE lab.rows_{rows} (id bigint PRIMARY KEY, {columns})")
            conn.execute(f"INSERT INTO lab.rows_{rows} SELECT g, {values} FROM generate_series(1, {rows}) g")
            conn.execute(f"ANALYZE lab.rows_{rows}")
            conn.execute(f"GRANT SELECT ON lab.rows_{rows} TO ckpt_eval_app")
            conn.execute(
                "INSERT INTO ckpt_eval.datasets (name, kind, source, feature_columns) VALUES (%s, 'table', %s, %s)",
                (f"rows_{rows}", f"lab.rows_{rows}", list(FEATURES)),
            )
            conn.execute("SET ROLE ckpt_eval_owner")
            conn.execute(
                "SELECT ckpt_eval.create_scoring_job(%s, %s, %s, 'id', 'lab', %s)",
                (f"rows_{rows}", CHECKPOINT, f"rows_{rows}", f"predictions_{rows}"),
            )
            conn.execute("RESET ROLE")


def score(database: BenchDatabase, rows: int, threads: int) -> Measured:
    argv = [CKPT_EVAL, "score", f"rows_{rows}", "--force", "--torch-threads", str(threads), "--log-format", "json"]
    measured = run_measured(argv, database.ckpt_eval_env(), cwd=database.workspace.root)
    scored = database.count(f"SELECT count(*) FROM lab.predictions_{rows}")
    if scored != rows:
        raise RuntimeError(f"ckpt-eval score wrote {scored} predictions of {rows}:\n{measured.stderr[-3000:]}")
    return measured


def _app_connection(database: BenchDatabase) -> psycopg.Connection:
    cluster = database.workspace.cluster
    return psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="ckpt_eval_app", password=APP_PASSWORD, dbname=database.dbname
    )


def write_seconds(database: BenchDatabase, rows: int, table: str) -> tuple[float, float, float]:
    """Seconds to write ``rows`` prediction rows by COPY (the app's binary stream, built column-wise) and by
    executemany INSERT of the same values, one transaction each, as the app role."""
    columns = "row_key, scoring_run_id, checkpoint_id, predicted_index, probabilities, positive_probability, scored_at"
    rng = np.random.default_rng(0)
    positive = rng.random(rows)
    probabilities = np.stack([1 - positive, positive], axis=1)
    keys = np.arange(rows, dtype=np.int64)
    indices = probabilities.argmax(axis=1).astype(np.int32)
    run_id, checkpoint_id = 1_000_001, 1
    with _app_connection(database) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        started = time.perf_counter()
        predictions = Predictions(keys=[keys], indices=[indices], probabilities=[probabilities])
        statement = f"COPY lab.{table} ({columns}) FROM STDIN WITH (FORMAT binary)"
        with conn.transaction(), conn.cursor() as cur, cur.copy(statement) as copy:
            for block in copy_blocks(predictions, run_id, checkpoint_id, now):
                copy.write(block)
        copy_seconds = time.perf_counter() - started
        started = time.perf_counter()
        values = [
            (key + rows, run_id, checkpoint_id, index, None, probs[1], now)
            for key, index, probs in zip(keys.tolist(), indices.tolist(), probabilities.tolist(), strict=True)
        ]  # the same values as the COPY's: two classes, so the positive probability only
        insert = f"INSERT INTO lab.{table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(insert, values)
        insert_seconds = time.perf_counter() - started
        # The old design's way: one INSERT statement and round trip per row (a tenth of the rows, scaled).
        tenth = [(key + rows, *rest) for key, *rest in values[: max(1, rows // 10)]]
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for row in tenth:
                cur.execute(insert, row)
        row_seconds = (time.perf_counter() - started) * rows / len(tenth)
    return copy_seconds, insert_seconds, row_seconds


def measure_scoring(database: BenchDatabase, rows: int, write_rows: int, threads: int) -> ScoringFigures:
    sizes = [rows, 4 * rows]
    prepare(database, sizes)
    runs = {size: score(database, size, threads) for size in sizes}
    copy_seconds, insert_seconds, row_seconds = write_seconds(database, write_rows, "writes")
    return ScoringFigures(rows, runs, copy_seconds, insert_seconds, row_seconds, write_rows)
