"""What logging every statement costs the test servers (tests/support/pgcluster.py, log_statement = 'all').

Two throwaway clusters, one logging every statement and one logging none, run the same workload in
alternating rounds (so a busy machine slows both alike): the application's read and claim statements
over TCP-less Unix-socket connections, one connection per round. Then the session-end check
(parsing the log and checking the distinct statements with tests/support/pg94.py) is timed on the
logging cluster's log. Prints the figures; asserts nothing.

    .venv/bin/python bench/statement_logging.py [rounds] [statements-per-round]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckpt_eval.db import sql  # noqa: E402
from tests.support.pg94 import newer_than_94  # noqa: E402
from tests.support.pgcluster import PgCluster, create_app_database, logged_statements  # noqa: E402


def start(log_statements: bool) -> PgCluster:
    cluster = PgCluster(log_statements=log_statements)
    cluster.init()
    cluster.start()
    cluster.wait_ready()
    create_app_database(cluster, ROOT / "init.sql", "bench-pass", dbname="ckpt_eval")
    return cluster


def workload(cluster: PgCluster, statements: int) -> float:
    params = {"ids": None, "now": None, "limit": 10, "force": False, "failed": False}
    started = time.perf_counter()
    with psycopg.connect(host=str(cluster.sockdir), port=cluster.port, user="postgres", dbname="ckpt_eval") as conn:
        for i in range(statements // 4):
            params["now"] = conn.execute(sql.SERVER_NOW).fetchone()[0]  # type: ignore[index]
            conn.execute(sql.CANDIDATES, params).fetchall()
            conn.execute(sql.PLANNED, params).fetchall()
            conn.execute(sql.HEARTBEAT, {**params, "name": f"n{i}", "token": "t", "expires": params["now"]})
            conn.commit()
    return time.perf_counter() - started


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    per_round = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    logging_on, logging_off = start(True), start(False)
    try:
        on, off = [], []
        for _ in range(rounds):
            off.append(workload(logging_off, per_round))
            on.append(workload(logging_on, per_round))
        started = time.perf_counter()
        received = logged_statements(logging_on.logfile)
        distinct = set(received)
        findings = [s for s in distinct if newer_than_94(s, greenplum=False)]
        check_seconds = time.perf_counter() - started
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(f"{rounds} rounds of {per_round} statements (median per round)")
        print(f"  log_statement = none: {m_off:.3f} s ({m_off / per_round * 1e6:.0f} us/statement)")
        print(f"  log_statement = all:  {m_on:.3f} s ({m_on / per_round * 1e6:.0f} us/statement)")
        print(f"  overhead: {(m_on - m_off) / per_round * 1e6:+.0f} us/statement ({(m_on / m_off - 1) * 100:+.1f} %)")
        print(
            f"  session-end check: {len(received)} statements ({len(distinct)} distinct, {len(findings)} newer) "
            f"parsed and checked in {check_seconds:.2f} s; log {logging_on.logfile.stat().st_size / 1e6:.1f} MB"
        )
    finally:
        logging_on.destroy()
        logging_off.destroy()


if __name__ == "__main__":
    main()
