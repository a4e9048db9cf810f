"""Memory and read throughput of a table dataset: 1M vs 5M rows of 60 float columns, one subprocess each.

    .venv/bin/python -m bench.table_memory [--rows 1000000 5000000] [--keep]

Builds its own PostgreSQL cluster (tests/support/pgcluster.py, statement logging off) and, per row count,
a table ``bench.t<rows>`` of 60 ``double precision`` columns (values with four decimals) and an 'M'/'R'
label. Then, each in a fresh Python process so that peak RSS (ru_maxrss) is its own:

- ``import``: the modules an evaluation imports, nothing read (the fixed floor of any run);
- ``copy``: a plain ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` of the same rows through psycopg,
  each block discarded (the least a client can do to see the rows);
- ``evaluate``: ``open_dataset`` + ``evaluate_model`` (a 60-16-2 MLP, batch 256) + ``fingerprint()``
  through db/table_reader.py: parse, validate, prepare, infer, metrics and the multiset hash, one read;
- ``group``: the same with 8 different MLPs evaluated together (``evaluate_models``, what ``ckpt-eval
  run`` does with a group): still one read of the table, for 8 models' metrics.

It prints rows, seconds, rows/s and peak RSS per case, and the ratios the README quotes: peak RSS of
5M rows over 1M rows (memory does not grow with the row count when it is about 1.0) and evaluation
time over the plain COPY's. Nothing is asserted (timing goals live in bench/, never in tests).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

FEATURES = tuple(f"f{i:02d}" for i in range(1, 61))
GROUP = 8  # models of the group case (ckpt-eval's default --group-size)


def _connect(sockdir: str, port: int, dbname: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(host=sockdir, port=port, user="postgres", dbname=dbname, autocommit=True)


def child(case: str, table: str, sockdir: str, port: int, dbname: str, threads: int) -> dict[str, object]:
    started = time.perf_counter()
    import torch

    torch.set_num_threads(threads)  # ckpt-eval run --torch-threads; a 60-16-2 MLP is fastest on one
    from torch import nn

    from ckpt_eval.architectures import Architecture, ArchitectureSpec, InputSpec
    from ckpt_eval.datasets import DatasetDefinition, open_dataset
    from ckpt_eval.db import sql
    from ckpt_eval.db.table_reader import copy_statement, open_table_reader
    from ckpt_eval.evaluate import evaluate_model, evaluate_models

    rows = 0
    result: dict[str, object] = {"case": case, "table": table}
    if case == "copy":
        start = time.perf_counter()
        total = 0
        with _connect(sockdir, port, dbname) as conn, conn.transaction():
            conn.execute(sql.TABLE_FLOAT_DIGITS)
            with conn.cursor() as cursor, cursor.copy(copy_statement(table, (*FEATURES, "label"))) as copy:
                for block in copy:
                    total += len(block)
        with _connect(sockdir, port, dbname) as conn:
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        result.update(seconds=time.perf_counter() - start, bytes=total)
    elif case in ("evaluate", "group"):
        models = []
        for seed in range(1 if case == "evaluate" else GROUP):
            torch.manual_seed(seed)
            models.append(nn.Sequential(nn.Linear(60, 16), nn.ReLU(), nn.Linear(16, 2)))
        spec = ArchitectureSpec("bench_mlp", lambda: models[0], InputSpec((60,), mean=0.5, std=0.3), 2, ("R", "M"))
        arch = Architecture(spec, "bench", "0")
        reader = open_table_reader(lambda: _connect(sockdir, port, dbname), timeout_ms=3_600_000)
        definition = DatasetDefinition(
            "bench", "table", table, feature_columns=FEATURES, label_column="label", class_names=("R", "M")
        )
        start = time.perf_counter()
        data = open_dataset(definition, None, reader)
        if case == "evaluate":
            metrics = evaluate_model(models[0], data, arch, batch_size=256)
        else:
            metrics = evaluate_models(models, data, arch, batch_size=256)[-1]  # type: ignore[assignment]
        result.update(
            seconds=time.perf_counter() - start,
            fingerprint=data.fingerprint(),
            roc_auc=metrics.roc_auc,
            models=len(models),
        )
        rows = metrics.n_samples
    result.update(
        rows=rows,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        wall_seconds=time.perf_counter() - started,
    )
    return result


def create_table(cluster, dbname: str, rows: int, base: str | None) -> str:  # type: ignore[no-untyped-def]
    table = f"bench.t{rows}"
    with _connect(str(cluster.sockdir), cluster.port, dbname) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        columns = ", ".join(f"{c} double precision" for c in FEATURES)
        conn.execute(f"CREATE TABLE {table} ({columns}, label text)")
        if base is None:
            values = ", ".join("floor(random() * 10000) / 10000" for _ in FEATURES)
            conn.execute(
                f"INSERT INTO {table} SELECT {values}, CASE WHEN random() < 0.5 THEN 'M' ELSE 'R' END "
                f"FROM generate_series(1, {rows})"
            )
        else:  # copies of the base table's rows, each copy's first feature shifted so that rows differ
            conn.execute(
                f"INSERT INTO {table} SELECT f01 + g, {', '.join(FEATURES[1:])}, label "
                f"FROM {base}, generate_series(0, {rows} / (SELECT count(*)::int FROM {base}) - 1) AS g"
            )
        conn.execute(f"ANALYZE {table}")
    return table


def run_child(case: str, table: str, cluster, dbname: str, threads: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    argv = [sys.executable, "-m", "bench.table_memory", "--threads", str(threads), "--child", case, table]
    argv += [str(cluster.sockdir), str(cluster.port), dbname]
    completed = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(row_counts: list[int], threads: int, progress=None) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Its own cluster; per row count a table, then the import, copy and evaluate cases in fresh processes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.pgcluster import PgCluster

    cluster = PgCluster(log_statements=False)
    results = []
    try:
        cluster.init()
        with (cluster.datadir / "postgresql.conf").open("a") as conf:
            conf.write("shared_buffers = 256MB\nmax_wal_size = 4GB\n")
        cluster.start()
        cluster.wait_ready()
        cluster.psql("CREATE DATABASE bench")
        base = None
        for rows in sorted(row_counts):
            start = time.perf_counter()
            table = create_table(cluster, "bench", rows, base)
            base = base or table
            if progress:
                progress(f"created {table} in {time.perf_counter() - start:.0f} s")
            for case in ("import", "copy", "evaluate", "group"):
                result = run_child(case, table, cluster, "bench", threads)
                results.append(result)
                if progress:
                    progress(json.dumps(result))
    finally:
        cluster.destroy()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the evaluating process")
    parser.add_argument("--child", nargs=5, metavar=("CASE", "TABLE", "SOCKDIR", "PORT", "DBNAME"))
    args = parser.parse_args()
    if args.child:
        case, table, sockdir, port, dbname = args.child
        print(json.dumps(child(case, table, sockdir, int(port), dbname, args.threads)))
        return
    results = measure(args.rows, args.threads, progress=lambda line: print(line, file=sys.stderr, flush=True))

    print(f"{'case':9} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS MB':>12}")
    for r in results:
        seconds = float(r.get("seconds", 0.0))  # type: ignore[arg-type]
        rows = int(r["rows"])  # type: ignore[arg-type]
        rate = f"{rows / seconds:10.0f}" if seconds and rows else f"{'':10}"
        mbps = f"{int(r['bytes']) / seconds / 1e6:7.1f}" if "bytes" in r else f"{'':7}"  # type: ignore[arg-type]
        print(f"{r['case']:9} {rows:9d} {seconds:8.1f} {rate} {mbps} {float(r['peak_rss_mb']):12.1f}")  # type: ignore[arg-type]
    by = {(r["case"], r["table"]): r for r in results}
    tables = sorted({str(r["table"]) for r in results}, key=lambda t: int(t.split(".t")[1]))
    if len(tables) >= 2:
        small, large = tables[0], tables[-1]
        ratio = float(by["evaluate", large]["peak_rss_mb"]) / float(by["evaluate", small]["peak_rss_mb"])  # type: ignore[arg-type]
        print(f"evaluate peak RSS {large} / {small}: {ratio:.3f}")
    for table in tables:
        slowdown = float(by["evaluate", table]["seconds"]) / float(by["copy", table]["seconds"])  # type: ignore[arg-type]
        print(f"{table}: evaluation takes {slowdown:.2f}x the plain COPY's time")
        group = float(by["group", table]["seconds"]) / float(by["evaluate", table]["seconds"])  # type: ignore[arg-type]
        print(f"{table}: {GROUP} models in one pass take {group:.2f}x the time of one ({GROUP}x alone)")


if __name__ == "__main__":
    main()
