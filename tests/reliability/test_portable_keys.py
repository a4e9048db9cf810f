"""Keys without sequence privileges: the app role records runs and registers checkpoints on every server.

Greenplum 6 makes nextval() need UPDATE on a sequence, which would also let the app role setval()
it (rewind ids, collide with history). So new keys come from functions the schema owner defines
(SECURITY DEFINER) and the app role holds no privilege at all on any sequence: on PostgreSQL that
proves nothing depends on the rule Greenplum 6 makes stricter. A deployment made by schema
version 1, with recorded runs, is migrated in place by applying the current init.sql.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ckpt_eval.db.sql import REQUIRED_SCHEMA_VERSION
from tests.support.deployment import APP_PASSWORD, REPO, Deployment, new_deployment
from tests.support.pgcluster import PgCluster

SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
INIT_V1 = Path(__file__).resolve().parents[1] / "support" / "init_v1.sql"


def connect_app(deployment: Deployment) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=deployment.cluster.port,
        dbname=deployment.dbname,
        user="ckpt_eval_app",
        password=APP_PASSWORD,
        autocommit=True,
    )


def sequence_privileges(deployment: Deployment) -> dict[str, list[str]]:
    with deployment.superuser() as conn:
        sequences = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'ckpt_eval' AND c.relkind = 'S' ORDER BY 1"
            )
        ]
        held = {}
        for name in sequences:
            held[name] = [
                privilege
                for privilege in SEQUENCE_PRIVILEGES
                if conn.execute(
                    "SELECT has_sequence_privilege('ckpt_eval_app', %s, %s)", (f"ckpt_eval.{name}", privilege)
                ).fetchone()[0]  # type: ignore[index]
            ]
    return held


@pytest.mark.scenario(
    "No sequence privilege", "the app role holds no privilege on any sequence, yet records runs and registers"
)
def test_app_role_works_without_any_sequence_privilege(deployment: Deployment, figure) -> None:
    held = sequence_privileges(deployment)
    assert set(held) == {
        "checkpoints_checkpoint_id_seq",
        "evaluation_runs_run_id_seq",
        "scoring_runs_scoring_run_id_seq",
        "champions_promotion_id_seq",
        "gates_gate_id_seq",
    }
    assert all(privileges == [] for privileges in held.values()), held
    run = deployment.ckpt_eval("run")
    assert run.returncode == 3, run.output
    register = deployment.ckpt_eval(
        "register", "digits-mlp-good.pt", "--name", "again", "--arch", "digits_mlp", "--dataset", "digits"
    )
    assert register.returncode == 0, register.output
    again = deployment.ckpt_eval("run")
    assert again.returncode == 0, again.output
    with deployment.superuser() as conn:
        runs = conn.execute("SELECT run_id, checkpoint_name FROM ckpt_eval.evaluation_runs ORDER BY run_id").fetchall()
        ids = conn.execute("SELECT checkpoint_id FROM ckpt_eval.checkpoints ORDER BY 1").fetchall()
    assert [run_id for run_id, _ in runs] == [1, 2, 3]
    assert ids == [(1,), (2,), (3,)]
    figure(f"sequence privileges {held}; 3 runs, 3 checkpoints with ids 1..3")


SEQUENCE_ABUSE = {
    "setval-runs": "SELECT setval('ckpt_eval.evaluation_runs_run_id_seq', 1)",
    "setval-checkpoints": "SELECT setval('ckpt_eval.checkpoints_checkpoint_id_seq', 1, false)",
    "nextval-direct": "SELECT nextval('ckpt_eval.evaluation_runs_run_id_seq')",
    "read-sequence": "SELECT last_value FROM ckpt_eval.evaluation_runs_run_id_seq",
    "alter-sequence": "ALTER SEQUENCE ckpt_eval.checkpoints_checkpoint_id_seq RESTART WITH 1",
    "redefine-key-function": (
        "CREATE OR REPLACE FUNCTION ckpt_eval.next_run_id() RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'"
    ),
    "change-key-default": "ALTER TABLE ckpt_eval.evaluation_runs ALTER COLUMN run_id SET DEFAULT 1",
    "explicit-run-id": (
        "INSERT INTO ckpt_eval.evaluation_runs (run_id, checkpoint_id, checkpoint_name, attempt, dataset, status, "
        "verdict, started_at, finished_at, duration_seconds, worker_host, worker_pid, app_version, lease_token) "
        "VALUES (1, 1, 'x', 1, 'digits', 'failed', 'fail', now(), now(), 0, 'h', 1, 'v', 't')"
    ),
}


@pytest.mark.scenario("Sequences out of reach", "setval, nextval, reading or redefining a key source: refused (42501)")
@pytest.mark.parametrize("case_id", list(SEQUENCE_ABUSE))
def test_app_role_cannot_touch_key_sources(deployment: Deployment, figure, case_id: str) -> None:
    with connect_app(deployment) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(SEQUENCE_ABUSE[case_id])  # type: ignore[arg-type]
    figure(str(refused.value).splitlines()[0][:100])
    with connect_app(deployment) as conn:  # the keys still come in order afterwards
        first = conn.execute("SELECT ckpt_eval.next_run_id()").fetchone()
    assert first == (1,)


@pytest.mark.scenario(
    "Schema 1 -> 3 in place", "a deployment with recorded runs keeps every one; the app role loses sequence USAGE"
)
def test_migration_from_schema_version_1_keeps_every_run(cluster: PgCluster, tmp_path: Path, figure) -> None:
    old = new_deployment(cluster, tmp_path, init_sql=INIT_V1)
    with connect_app(old) as conn:  # what version 1 wrote: runs and metrics as the app role, a row without hash
        conn.execute(
            "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset) "
            "VALUES ('nohash', 'x.pt', 'digits_mlp', 'digits')"
        )
        for checkpoint_id, name in ((1, "digits-mlp-good"), (2, "digits-mlp-undertrained")):
            [(run_id,)] = conn.execute(
                "INSERT INTO ckpt_eval.evaluation_runs (checkpoint_id, checkpoint_name, attempt, dataset, "
                "status, verdict, started_at, finished_at, duration_seconds, worker_host, worker_pid, app_version, "
                "lease_token) "
                "VALUES (%s, %s, 1, 'digits', 'succeeded', 'pass', now(), now(), 1, 'h', 1, '0.1.0', %s) "
                "RETURNING run_id",
                (checkpoint_id, name, f"token-{checkpoint_id}"),
            ).fetchall()
            conn.execute(
                "INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, class_label, value) "
                "VALUES (%s, 'accuracy', '', 0.9)",
                (run_id,),
            )
        conn.execute("UPDATE ckpt_eval.checkpoints SET status = 'done' WHERE name LIKE 'digits-mlp-%'")
    refused = old.ckpt_eval("run")
    assert refused.returncode == 78, refused.output
    assert f"schema version 1; this ckpt-eval needs {REQUIRED_SCHEMA_VERSION}" in refused.stderr
    with old.superuser() as conn:
        before_runs = conn.execute("SELECT * FROM ckpt_eval.evaluation_runs ORDER BY run_id").fetchall()
        before_metrics = conn.execute("SELECT * FROM ckpt_eval.evaluation_metrics ORDER BY 1, 2, 3").fetchall()
        assert conn.execute(
            "SELECT has_sequence_privilege('ckpt_eval_app', 'ckpt_eval.evaluation_runs_run_id_seq', 'USAGE')"
        ).fetchone() == (True,)
    cluster.psql(dbname=old.dbname, file=REPO / "init.sql")
    cluster.psql(dbname=old.dbname, file=REPO / "init.sql")  # twice: idempotent
    with old.superuser() as conn:
        # Every recorded value unchanged; later versions only append columns (schema 3: arch_package, arch_version).
        kept = conn.execute("SELECT * FROM ckpt_eval.evaluation_runs ORDER BY run_id").fetchall()
        assert [row[: len(before_runs[0])] for row in kept] == before_runs
        assert conn.execute("SELECT * FROM ckpt_eval.evaluation_metrics ORDER BY 1, 2, 3").fetchall() == before_metrics
        versions = [v for (v,) in conn.execute("SELECT version FROM ckpt_eval.schema_version ORDER BY 1")]
    assert versions == list(range(1, REQUIRED_SCHEMA_VERSION + 1))
    assert all(privileges == [] for privileges in sequence_privileges(old).values())
    rerun = old.ckpt_eval("run", "--force")
    assert rerun.returncode == 3, rerun.output  # the undertrained demo fails its gate, 'nohash' fails to load
    with old.superuser() as conn:
        after = conn.execute(
            "SELECT run_id, checkpoint_name, error FROM ckpt_eval.evaluation_runs ORDER BY run_id"
        ).fetchall()
    assert [row[0] for row in after] == sorted({row[0] for row in after}), "new run ids continue after the old ones"
    assert len(after) == len(before_runs) + 3
    legacy = [row for row in after if row[1] == "nohash"]
    assert len(legacy) == 1
    assert "no sha256 is recorded" in (legacy[0][2] or "")
    figure(
        f"{len(before_runs)} runs and {len(before_metrics)} metric rows kept; {len(after) - len(before_runs)} new runs"
    )
