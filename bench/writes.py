"""Result writes per second through the application's own repository (claim excluded, finish timed).

Each finish is what ckpt-eval writes after one evaluation: the run row, its 46 metric rows and
the job state, in one transaction fenced by the lease token.
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


def measure_writes(database: BenchDatabase, records: int) -> dict[str, float]:
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
    elapsed = 0.0
    written = 0
    with Repository(creds, RetryPolicy(attempts=2, max_seconds=5)) as repository:
        while written < records:
            database.reset()
            for name in names[: records - written]:
                claim = repository.claim((name, DATASET), "bench:0:0", uuid.uuid4().hex, 300.0)
                if claim is None:
                    raise RuntimeError(f"could not claim {name}")
                start = time.perf_counter()
                repository.finish(claim, record)
                elapsed += time.perf_counter() - start
                written += 1
    return {
        "results_per_second": written / elapsed,
        "metric_rows_per_second": written * len(record.metrics) / elapsed,
        "results": written,
    }
