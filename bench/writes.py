"""Result writes per second through the application's own repository (claim excluded, finish timed).

Each finish is what ckpt-eval writes after one evaluation: the run row, its 46 metric rows and
the job state, fenced by the lease token; one at a time (``finish``, one transaction each) and as
the job writes a group's pass (``finish_many``, one transaction for the group, each pair fenced).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime, timedelta

import numpy as np

from .fixture import DATASET, BenchDatabase


def measure_writes(database: BenchDatabase, records: int, group_size: int = 8) -> dict[str, float]:
    from ckpt_eval.credentials import decrypt_credentials
    from ckpt_eval.db.connection import RetryPolicy
    from ckpt_eval.db.repository import Repository, RunRecord
    from ckpt_eval.metrics import compute_metrics

    database.reset()
    creds = decrypt_credentials(database.credentials, database.workspace.password_file.read_text().strip().encode())
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    metrics = compute_metrics(labels, np.where(rng.random(1000) < 0.8, labels, rng.integers(0, 10, 1000)), 900.0, 10)
    now = datetime.now().astimezone()
    record = RunRecord(
        status="succeeded",
        verdict="pass",
        verdict_reasons=None,
        error=None,
        dataset_sha256="0" * 64,
        checkpoint_sha256="1" * 64,
        started_at=now,
        finished_at=now + timedelta(seconds=1),
        duration_seconds=1.0,
        n_samples=metrics.n_samples,
        worker_host=socket.gethostname(),
        worker_pid=os.getpid(),
        app_version="bench",
        min_accuracy=0.7,
        min_f1_macro=0.7,
        confusion_matrix=json.dumps(metrics.confusion),
        metrics=metrics.rows(),
    )
    names = [path.stem for path in database.checkpoints]

    def timed(batch: int) -> tuple[float, int]:
        elapsed = 0.0
        written = 0
        with Repository(creds, RetryPolicy(attempts=2, max_seconds=5)) as repository:
            while written < records:
                database.reset()
                pending = names[: records - written]
                for first in range(0, len(pending), batch):
                    claims = []
                    for name in pending[first : first + batch]:
                        claim = repository.claim((name, DATASET), "bench:0:0", uuid.uuid4().hex, 300.0)
                        if claim is None:
                            raise RuntimeError(f"could not claim {name}")
                        claims.append(claim)
                    start = time.perf_counter()
                    if batch == 1:
                        repository.finish(claims[0], record)
                    else:
                        repository.finish_many([(claim, record) for claim in claims])
                    elapsed += time.perf_counter() - start
                    written += len(claims)
        return elapsed, written

    elapsed, written = timed(1)
    grouped_elapsed, grouped = timed(group_size)
    return {
        "results_per_second": written / elapsed,
        "metric_rows_per_second": written * len(record.metrics) / elapsed,
        "results": written,
        "grouped_results_per_second": grouped / grouped_elapsed,
    }
