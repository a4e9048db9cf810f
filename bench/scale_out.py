"""Scale-out: W `ckpt-eval run` workers (one torch thread each) share one registry.

Every worker is started at once on the same N pending pairs, claiming one pair at a time; the
figure is the wall time until the last exits (speed-up against one worker), and the claim
contention: how many claims each worker lost to another one (compare-and-set races). Exactly-once
is checked, not assumed: every pair has one succeeded run and every run its own lease token.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .fixture import CKPT_EVAL, BenchDatabase

LOST_RACE_LINES = ("claimed by another worker", "lost the race for")


@dataclass(frozen=True)
class ScaleOut:
    workers: int
    wall: float
    lost_races: int


def run_workers(database: BenchDatabase, workers: int, batch_size: int) -> ScaleOut:
    database.reset()
    # One pair at a time: what an operator sets to spread a short queue over many workers (a group
    # would let the first worker to start take several pairs of a short queue at once).
    argv = [CKPT_EVAL, "run", "--torch-threads", "1", "--batch-size", str(batch_size), "--log-level", "debug"]
    argv += ["--group-size", "1"]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(workers)]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                argv,
                cwd=database.workspace.root,
                env=database.ckpt_eval_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
            for log in logs
        ]
        codes = [proc.wait() for proc in procs]
        wall = time.perf_counter() - started
        text = []
        for log in logs:
            log.seek(0)
            text.append(log.read())
    if any(code not in (0, 3) for code in codes):
        raise RuntimeError(f"a worker exited {codes}:\n{text[codes.index(max(codes))][-3000:]}")
    expected = len(database.checkpoints)
    runs = database.count("SELECT count(*) FROM ckpt_eval.evaluation_runs WHERE status = 'succeeded'")
    tokens = database.count("SELECT count(DISTINCT lease_token) FROM ckpt_eval.evaluation_runs")
    if runs != expected or tokens != runs:
        raise RuntimeError(f"{workers} workers recorded {runs} runs ({tokens} tokens) for {expected} pairs")
    lost = sum(log.count(line) for log in text for line in LOST_RACE_LINES)
    return ScaleOut(workers, wall, lost)
