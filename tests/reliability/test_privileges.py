"""Least privilege: what the job's role may not do inside its database, and who may not connect at all.

Inside the database, ``ckpt_eval_app`` (the credentials the job uses) is refused every DDL, TRUNCATE,
DELETE, every change of a recorded result or of a checkpoint's path, hash, architecture or gate, every
way to another role, and every read of password hashes, with SQLSTATE 42501 from the server itself; a
control shows that what the job needs still works, so the refusals are not an accident of the setup.

At the door, pg_hba: the session cluster admits only the app role over TCP (``host all ckpt_eval_app
127.0.0.1/32``, then ``reject``); a cluster of this module's own, with the pg_hba line the deployment
renders (``host ckpt_eval ckpt_eval_app 127.0.0.1/32 scram-sha-256``) and listening on 127.0.0.1 and
127.0.0.2, shows that another database, another role (even with its right password) and another client
address are refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.deployment import APP_PASSWORD, REPO, Deployment
from tests.support.pgcluster import PgCluster, create_app_database

APP_ROLE = "ckpt_eval_app"


def connect_app(deployment: Deployment, **overrides: object) -> psycopg.Connection:
    params: dict[str, object] = {
        "host": "127.0.0.1",
        "port": deployment.cluster.port,
        "dbname": deployment.dbname,
        "user": APP_ROLE,
        "password": APP_PASSWORD,
        "connect_timeout": 5,
        "autocommit": True,
    }
    params.update(overrides)
    return psycopg.connect(**params)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- inside the database

REFUSED = {
    # DDL: tables, schemas, functions, indexes, views, sequences, triggers
    "create-table-app-schema": "CREATE TABLE ckpt_eval.stash (x int)",
    "create-table-public": "CREATE TABLE public.stash (x int)",
    "create-temp-table": "CREATE TEMP TABLE stash (x int)",
    "create-schema": "CREATE SCHEMA stash",
    "create-function": "CREATE FUNCTION ckpt_eval.stash() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create-function-public": "CREATE FUNCTION public.stash() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create-index": "CREATE INDEX stash_idx ON ckpt_eval.checkpoints (path)",
    "create-view": "CREATE VIEW ckpt_eval.stash AS SELECT 1 AS x",
    "replace-contract-view": "CREATE OR REPLACE VIEW ckpt_eval.latest_evaluations AS SELECT 1 AS checkpoint_id",
    # EXECUTE PROCEDURE: the spelling the 9.4 kernel of Greenplum 6 parses (EXECUTE FUNCTION is 11+).
    "create-trigger": "CREATE TRIGGER stash BEFORE UPDATE ON ckpt_eval.evaluation_runs FOR EACH ROW "
    "EXECUTE PROCEDURE suppress_redundant_updates_trigger()",
    "alter-table-add-column": "ALTER TABLE ckpt_eval.checkpoints ADD COLUMN note text",
    "alter-table-drop-check": "ALTER TABLE ckpt_eval.checkpoints DROP CONSTRAINT checkpoints_path_check",
    "alter-table-owner": "ALTER TABLE ckpt_eval.evaluation_runs OWNER TO ckpt_eval_app",
    "alter-schema": "ALTER SCHEMA ckpt_eval RENAME TO stash",
    "alter-view": "ALTER VIEW ckpt_eval.latest_evaluations RENAME TO stash",
    "alter-sequence": "ALTER SEQUENCE ckpt_eval.evaluation_runs_run_id_seq RESTART",
    "comment-on-table": "COMMENT ON TABLE ckpt_eval.checkpoints IS 'stash'",
    "drop-table-checkpoints": "DROP TABLE ckpt_eval.checkpoints",
    "drop-table-runs": "DROP TABLE ckpt_eval.evaluation_runs",
    "drop-table-metrics": "DROP TABLE ckpt_eval.evaluation_metrics",
    "drop-view": "DROP VIEW ckpt_eval.latest_evaluations",
    "drop-index": "DROP INDEX ckpt_eval.evaluation_runs_checkpoint_idx",
    "drop-schema": "DROP SCHEMA ckpt_eval CASCADE",
    # TRUNCATE and DELETE of anything
    "truncate-checkpoints": "TRUNCATE ckpt_eval.checkpoints",
    "truncate-runs": "TRUNCATE ckpt_eval.evaluation_runs",
    "truncate-metrics": "TRUNCATE ckpt_eval.evaluation_metrics",
    "delete-checkpoints": "DELETE FROM ckpt_eval.checkpoints",
    "delete-runs": "DELETE FROM ckpt_eval.evaluation_runs",
    "delete-metrics": "DELETE FROM ckpt_eval.evaluation_metrics",
    "delete-schema-version": "DELETE FROM ckpt_eval.schema_version",
    # recorded results are never rewritten
    "update-run-verdict": "UPDATE ckpt_eval.evaluation_runs SET verdict = 'pass'",
    "update-run-error": "UPDATE ckpt_eval.evaluation_runs SET error = NULL, status = 'succeeded'",
    "update-metric-value": "UPDATE ckpt_eval.evaluation_metrics SET value = 1",
    "rewind-run-id-sequence": "SELECT setval('ckpt_eval.evaluation_runs_run_id_seq', 1)",
    "insert-schema-version": "INSERT INTO ckpt_eval.schema_version (version) VALUES (99)",
    "update-run-gate-results": "UPDATE ckpt_eval.evaluation_runs SET gate_results = '[]', gate_note = NULL",
    # champions: promoting is the owner's unless the deployment allows it; gates and promotions are history
    "promote-without-leave": "INSERT INTO ckpt_eval.champions (dataset, checkpoint_name, checkpoint_id, promoted_by) "
    "VALUES ('digits', 'digits-mlp-undertrained', 2, 'x')",
    "rewrite-promotion": "UPDATE ckpt_eval.champions SET checkpoint_name = 'x'",
    "delete-promotions": "DELETE FROM ckpt_eval.champions",
    "rewrite-gate": "UPDATE ckpt_eval.gates SET rules = '[]'",
    "delete-gates": "DELETE FROM ckpt_eval.gates",
    "explicit-gate-id": "INSERT INTO ckpt_eval.gates (gate_id, dataset, rules, created_by) VALUES (1, 'd', '[]', 'x')",
    # registry columns other than the job state
    "update-path": "UPDATE ckpt_eval.checkpoints SET path = 'other.pt'",
    "update-sha256": "UPDATE ckpt_eval.checkpoints SET sha256 = NULL",
    "update-arch": "UPDATE ckpt_eval.checkpoints SET arch = 'fashion_cnn'",
    "update-dataset": "UPDATE ckpt_eval.checkpoints SET dataset = 'mnist'",
    "update-min-accuracy": "UPDATE ckpt_eval.checkpoints SET min_accuracy = 0",
    "update-min-f1": "UPDATE ckpt_eval.checkpoints SET min_f1_macro = 0",
    "update-name": "UPDATE ckpt_eval.checkpoints SET name = name || '-x'",
    "update-checkpoint-id": "UPDATE ckpt_eval.checkpoints SET checkpoint_id = checkpoint_id + 100",
    # secrets and the server's files
    "read-pg-authid": "SELECT rolname, rolpassword FROM pg_catalog.pg_authid",
    "read-pg-shadow": "SELECT usename, passwd FROM pg_catalog.pg_shadow",
    # pg_hba.conf itself (relative to the data directory): the pg_hba_file_rules view is PostgreSQL 10+.
    "read-pg-hba-file": "SELECT pg_read_file('pg_hba.conf')",
    "read-server-file": "SELECT pg_read_file('/etc/passwd')",
    "copy-to-server-file": "COPY ckpt_eval.checkpoints TO '/tmp/ckpt-eval-stash'",
    "copy-from-program": "COPY ckpt_eval.evaluation_metrics FROM PROGRAM 'id'",
    # other roles
    "set-role-owner": "SET ROLE ckpt_eval_owner",
    "set-session-authorization": "SET SESSION AUTHORIZATION postgres",
    "alter-self-superuser": "ALTER ROLE ckpt_eval_app SUPERUSER",
    "create-role": "CREATE ROLE stash LOGIN",
}


@pytest.mark.scenario("App role refused", "ckpt_eval_app gets InsufficientPrivilege (42501) from the server")
@pytest.mark.parametrize("case_id", list(REFUSED))
def test_app_role_is_refused(deployment: Deployment, figure, case_id: str) -> None:
    before = {
        "tables": _tables(deployment),
        "registry": _registry(deployment),
    }
    with connect_app(deployment) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(REFUSED[case_id])  # type: ignore[arg-type]
    assert refused.value.sqlstate == "42501"
    assert {"tables": _tables(deployment), "registry": _registry(deployment)} == before
    figure(str(refused.value).splitlines()[0][:100])


def _tables(deployment: Deployment) -> list[tuple[object, ...]]:
    with deployment.superuser() as conn:
        return conn.execute(
            "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ckpt_eval' ORDER BY 1"
        ).fetchall()


def _registry(deployment: Deployment) -> list[tuple[object, ...]]:
    with deployment.superuser() as conn:
        return conn.execute(
            "SELECT checkpoint_id, name, path, arch, dataset, sha256, min_accuracy, min_f1_macro "
            "FROM ckpt_eval.checkpoints ORDER BY checkpoint_id"
        ).fetchall()


@pytest.mark.scenario("App role allowed", "the control: exactly what the job needs works as ckpt_eval_app")
def test_app_role_can_do_what_the_job_needs(deployment: Deployment, figure) -> None:
    with connect_app(deployment, autocommit=False) as conn:
        tables = (
            "checkpoints",
            "datasets",
            "evaluations",
            "evaluation_runs",
            "evaluation_metrics",
            "latest_evaluations",
            "schema_version",
        )
        for table in tables:
            conn.execute(f"SELECT count(*) FROM ckpt_eval.{table}").fetchone()
        claimed = conn.execute(
            "UPDATE ckpt_eval.evaluations SET status = 'running', attempt = attempt + 1, lease_owner = 'test', "
            "lease_token = 't', lease_expires_at = now(), requested_at = now(), updated_at = now(), "
            "dataset_fingerprint = NULL"
        ).rowcount
        conn.execute(
            "INSERT INTO ckpt_eval.datasets (name, kind, source, feature_columns, label_column) "
            "VALUES ('control', 'table', 'public.t', ARRAY['a'], 'y')"
        )
        conn.execute("UPDATE ckpt_eval.datasets SET fingerprint = repeat('0', 64), fingerprinted_at = now()")
        conn.execute(
            "INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id) "
            "VALUES ('control', 'control', 9)"
        )
        conn.execute(
            "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) "
            "VALUES ('control', 'control.pt', 'digits_mlp', 'digits', repeat('0', 64))"
        )
        run_id = conn.execute(
            "INSERT INTO ckpt_eval.evaluation_runs (checkpoint_id, checkpoint_name, attempt, dataset, status, "
            "verdict, started_at, finished_at, duration_seconds, worker_host, worker_pid, app_version, lease_token) "
            "VALUES (1, 'digits-mlp-good', 1, 'digits', 'succeeded', 'pass', now(), now(), 0, 'h', 1, 'v', 't') "
            "RETURNING run_id"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, value) VALUES (%s, 'accuracy', 1)", (run_id,)
        )
        conn.rollback()
    assert claimed == 2
    figure("SELECT 7 relations, UPDATE job state, INSERT registry/dataset/pair/run/metric: allowed (rolled back)")


@pytest.mark.scenario(
    "Other sessions' queries hidden", "pg_stat_activity shows '<insufficient privilege>' for other roles' sessions"
)
def test_pg_stat_activity_hides_other_sessions(deployment: Deployment, figure) -> None:
    marker = f"sensitive-{uuid.uuid4().hex}"
    with deployment.superuser() as admin:
        admin.execute(f"SELECT '{marker}' AS secret_note")  # stays the session's last query while it idles
        admin_pid = admin.info.backend_pid
        with deployment.superuser() as other:
            [(seen_by_superuser,)] = other.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", (admin_pid,)
            ).fetchall()
        assert marker in seen_by_superuser  # the control: the text is there to be seen
        with connect_app(deployment) as app:
            rows = app.execute("SELECT pid, usename, query, client_addr::text FROM pg_stat_activity").fetchall()
    others = [row for row in rows if row[1] != APP_ROLE and row[0] is not None]
    admin_rows = [row for row in others if row[0] == admin_pid]
    assert admin_rows, rows
    assert admin_rows[0][2] == "<insufficient privilege>"
    assert all(row[2] in ("<insufficient privilege>", None) for row in others), others
    assert marker not in repr(rows)
    figure(f"{len(others)} other sessions: query '<insufficient privilege>', marker never visible")


# --------------------------------------------------------------------------- pg_hba of the session cluster


@pytest.mark.scenario("pg_hba: unlisted role", "superuser and owner over TCP are rejected by pg_hba (session cluster)")
@pytest.mark.parametrize("role", ["postgres", "ckpt_eval_owner"])
def test_session_cluster_rejects_other_roles_over_tcp(deployment: Deployment, figure, role: str) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        connect_app(deployment, user=role, password="any-password-at-all")
    message = str(refused.value)
    assert f'pg_hba.conf rejects connection for host "127.0.0.1", user "{role}"' in message
    figure(message.strip().splitlines()[-1].split("FATAL:")[-1].strip()[:100])


# --------------------------------------------------------------------------- pg_hba of a cluster of our own

OWNER_PASSWORD = "owner-pass-5d1e"
SUPERUSER_PASSWORD = "superuser-pass-8b0c"
DEPLOYED_HBA = ["host ckpt_eval ckpt_eval_app 127.0.0.1/32 scram-sha-256"]  # as roles/greenplum renders it


@pytest.fixture(scope="module")
def hba_cluster() -> Iterator[PgCluster]:
    server = PgCluster()
    try:
        server.init()
        with (server.datadir / "postgresql.conf").open("a") as conf:
            conf.write("listen_addresses = '127.0.0.1,127.0.0.2'\n")
        server.write_hba(DEPLOYED_HBA)
        server.start()
        server.wait_ready()
        create_app_database(server, REPO / "init.sql", APP_PASSWORD, dbname="ckpt_eval")
        # Every role has a password it could log in with: a refusal can only come from pg_hba.
        server.set_password("ckpt_eval_owner", OWNER_PASSWORD)
        server.set_password("postgres", SUPERUSER_PASSWORD)
        yield server
    finally:
        server.destroy()


class SourceRelay:
    """A TCP relay that reaches the server from a chosen source address (libpq cannot bind one).

    On Linux a client connecting to 127.0.0.2 still comes from 127.0.0.1 (the loopback route's source),
    and pg_hba matches the client address; binding the relay's upstream socket to 127.0.0.2 makes the
    server see a client at 127.0.0.2. Bytes pass through untouched.
    """

    def __init__(self, source: str, target: tuple[str, int]) -> None:
        self.source = source
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.socket()
            upstream.bind((self.source, 0))
            upstream.connect(self.target)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [self.listener, *self._sockets]:
            sock.close()


@contextlib.contextmanager
def relay_from(source: str, cluster: PgCluster) -> Iterator[SourceRelay]:
    relay = SourceRelay(source, ("127.0.0.1", cluster.port))
    try:
        yield relay
    finally:
        relay.close()


def connect_own(cluster: PgCluster, **overrides: object) -> psycopg.Connection:
    params: dict[str, object] = {
        "host": "127.0.0.1",
        "port": cluster.port,
        "dbname": "ckpt_eval",
        "user": APP_ROLE,
        "password": APP_PASSWORD,
        "connect_timeout": 5,
        "sslmode": "disable",
        "autocommit": True,
    }
    params.update(overrides)
    return psycopg.connect(**params)  # type: ignore[arg-type]


def addresses(conn: psycopg.Connection) -> tuple[str, str]:
    [(client, server)] = conn.execute("SELECT host(inet_client_addr()), host(inet_server_addr())").fetchall()
    return str(client), str(server)


@pytest.mark.scenario("pg_hba: listed client", "the app role from 127.0.0.1 to its database connects (control)")
@pytest.mark.parametrize("how", ["direct", "via-relay-from-127.0.0.1", "to-server-address-127.0.0.2"])
def test_listed_client_connects(hba_cluster: PgCluster, figure, how: str) -> None:
    if how == "direct":
        with connect_own(hba_cluster) as conn:
            seen = addresses(conn)
    elif how == "via-relay-from-127.0.0.1":  # the relay itself changes nothing but the source address
        with relay_from("127.0.0.1", hba_cluster) as relay, connect_own(hba_cluster, port=relay.port) as conn:
            seen = addresses(conn)
    else:  # another server address: pg_hba matches the CLIENT address, which is still 127.0.0.1
        with connect_own(hba_cluster, host="127.0.0.2") as conn:
            seen = addresses(conn)
    assert seen[0] == "127.0.0.1"
    assert seen[1] == ("127.0.0.2" if how.startswith("to-server") else "127.0.0.1")
    figure(f"connected: client {seen[0]} -> server {seen[1]}")


REFUSED_AT_THE_DOOR = {
    "app-from-127.0.0.2": ({}, "127.0.0.2", 'no pg_hba.conf entry for host "127.0.0.2", user "ckpt_eval_app"'),
    "app-to-database-postgres": (
        {"dbname": "postgres"},
        None,
        'no pg_hba.conf entry for host "127.0.0.1", user "ckpt_eval_app", database "postgres"',
    ),
    "owner-over-tcp": (
        {"user": "ckpt_eval_owner", "password": OWNER_PASSWORD},
        None,
        'no pg_hba.conf entry for host "127.0.0.1", user "ckpt_eval_owner"',
    ),
    "superuser-over-tcp": (
        {"user": "postgres", "password": SUPERUSER_PASSWORD},
        None,
        'no pg_hba.conf entry for host "127.0.0.1", user "postgres"',
    ),
}


@pytest.mark.scenario(
    "pg_hba: unlisted client", "another address, database or role (right password) is refused: no pg_hba entry"
)
@pytest.mark.parametrize("case_id", list(REFUSED_AT_THE_DOOR))
def test_unlisted_client_is_refused(hba_cluster: PgCluster, figure, case_id: str) -> None:
    overrides, source, expected = REFUSED_AT_THE_DOOR[case_id]
    with contextlib.ExitStack() as stack:
        if source is not None:
            relay = stack.enter_context(relay_from(source, hba_cluster))
            overrides = {**overrides, "port": relay.port}
        with pytest.raises(psycopg.OperationalError) as refused:
            connect_own(hba_cluster, **overrides)
    assert expected in str(refused.value)
    figure(str(refused.value).strip().splitlines()[-1].split("FATAL:")[-1].strip()[:110])


@pytest.mark.scenario("pg_hba: job from unlisted address", "the real job from 127.0.0.2 exits 77 at once, no retries")
def test_job_from_unlisted_address_exits_77(hba_cluster: PgCluster, deployment: Deployment, figure) -> None:
    with relay_from("127.0.0.2", hba_cluster) as relay:
        deployment.write_credentials(port=relay.port, dbname="ckpt_eval")
        started = time.monotonic()
        result = deployment.ckpt_eval("run")
        seconds = time.monotonic() - started
    assert result.returncode == 77, result.output
    assert 'no pg_hba.conf entry for host "127.0.0.2"' in result.stderr
    assert "attempt" not in result.stderr  # an authentication refusal is not retried
    assert "Traceback" not in result.stderr
    assert APP_PASSWORD not in result.output
    assert hba_cluster.psql("SELECT count(*) FROM ckpt_eval.evaluation_runs", dbname="ckpt_eval") == "0"
    figure(f"exit 77 in {seconds:.1f} s")
