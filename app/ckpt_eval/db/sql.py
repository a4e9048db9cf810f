"""Every SQL statement the application runs, in one place; all of them parameterised.

Portable to Greenplum: compare-and-set UPDATEs checked by rowcount (no row locks of any
kind), RETURNING only on INSERT, timestamps bound from one clock (the server's, read once
per step), no upserts. See docs: greenplum-dialect.md section 3.
"""

SERVER_NOW = "SELECT now()"

# The schema version this release needs (init.sql's header and its schema_version rows).
REQUIRED_SCHEMA_VERSION = 2
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM ckpt_eval.schema_version"

IS_GREENPLUM = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pg_catalog' AND c.relname = 'gp_segment_configuration')
"""

_SELECTED = "(%(ids)s::bigint[] IS NULL OR checkpoint_id = ANY(%(ids)s::bigint[]))"
_CLAIMABLE = "(status = 'pending' OR (status = 'running' AND lease_expires_at < %(now)s))"

CANDIDATES = f"""
SELECT name FROM ckpt_eval.checkpoints
WHERE {_CLAIMABLE} AND {_SELECTED}
ORDER BY requested_at, checkpoint_id
LIMIT %(limit)s
"""

CLAIM = f"""
UPDATE ckpt_eval.checkpoints
SET status = 'running', attempt = attempt + 1, lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name = %(name)s AND {_CLAIMABLE}
"""

CLAIMED = """
SELECT checkpoint_id, name, path, arch, dataset, sha256, min_accuracy, min_f1_macro, attempt
FROM ckpt_eval.checkpoints
WHERE name = %(name)s AND lease_token = %(token)s AND status = 'running'
"""

HEARTBEAT = """
UPDATE ckpt_eval.checkpoints
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name = %(name)s AND lease_token = %(token)s AND status = 'running'
"""

# The fencing step: only the holder of the current token may finish; rowcount 0 means it lost.
FINISH_JOB = """
UPDATE ckpt_eval.checkpoints
SET status = %(status)s, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE name = %(name)s AND lease_token = %(token)s AND status = 'running'
"""

# A worker that stops early (interrupted) hands the checkpoint back untouched.
RELEASE_JOB = """
UPDATE ckpt_eval.checkpoints
SET status = 'pending', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE name = %(name)s AND lease_token = %(token)s AND status = 'running'
"""

INSERT_RUN = """
INSERT INTO ckpt_eval.evaluation_runs (
    checkpoint_id, checkpoint_name, attempt, dataset, dataset_sha256, checkpoint_sha256, status, verdict,
    verdict_reasons, error, started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid,
    app_version, lease_token, min_accuracy, min_f1_macro, confusion_matrix)
VALUES (
    %(checkpoint_id)s, %(checkpoint_name)s, %(attempt)s, %(dataset)s, %(dataset_sha256)s, %(checkpoint_sha256)s,
    %(status)s, %(verdict)s, %(verdict_reasons)s, %(error)s, %(started_at)s, %(finished_at)s,
    %(duration_seconds)s, %(n_samples)s, %(worker_host)s, %(worker_pid)s, %(app_version)s, %(lease_token)s,
    %(min_accuracy)s, %(min_f1_macro)s, %(confusion_matrix)s)
RETURNING run_id
"""

# Resolves a finish whose commit outcome was lost with the connection.
RUN_BY_TOKEN = "SELECT run_id FROM ckpt_eval.evaluation_runs WHERE lease_token = %(token)s"  # noqa: S105

INSERT_METRIC = """
INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, class_label, value)
VALUES (%s, %s, %s, %s)
"""

REQUEUE_FINISHED = f"""
UPDATE ckpt_eval.checkpoints
SET status = 'pending', requested_at = %(now)s, updated_at = %(now)s
WHERE status IN ('done', 'failed') AND {_SELECTED}
"""

REQUEUE_FAILED = f"""
UPDATE ckpt_eval.checkpoints
SET status = 'pending', requested_at = %(now)s, updated_at = %(now)s
WHERE status = 'failed' AND {_SELECTED}
"""

PLANNED = f"""
SELECT checkpoint_id, name, arch, dataset, status, attempt
FROM ckpt_eval.checkpoints
WHERE {_SELECTED} AND (
    {_CLAIMABLE}
    OR (%(force)s AND status IN ('done', 'failed'))
    OR (%(failed)s AND status = 'failed'))
ORDER BY requested_at, checkpoint_id
"""

RUNNING_SELECTED = f"""
SELECT checkpoint_id, name FROM ckpt_eval.checkpoints
WHERE status = 'running' AND lease_expires_at >= %(now)s AND {_SELECTED}
ORDER BY checkpoint_id
"""

KNOWN_IDS = "SELECT checkpoint_id FROM ckpt_eval.checkpoints WHERE checkpoint_id = ANY(%(ids)s::bigint[])"

STATUS = """
SELECT c.checkpoint_id, c.name, c.arch, c.dataset, c.status AS job_status, c.attempt,
       l.run_id, l.status AS run_status, l.verdict, l.accuracy, l.f1_macro, l.loss, l.n_samples,
       l.finished_at, l.error
FROM ckpt_eval.checkpoints c
LEFT JOIN ckpt_eval.latest_evaluations l ON l.checkpoint_id = c.checkpoint_id
ORDER BY c.checkpoint_id
"""

NAME_TAKEN = "SELECT 1 FROM ckpt_eval.checkpoints WHERE name = %(name)s"

REGISTER = """
INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256, min_accuracy, min_f1_macro)
VALUES (%(name)s, %(path)s, %(arch)s, %(dataset)s, %(sha256)s, %(min_accuracy)s, %(min_f1_macro)s)
RETURNING checkpoint_id
"""

# Table datasets (db/table_reader.py): one read-only transaction per read of a dataset's rows. Floats
# with extra_float_digits = 3 are exact on every server (PostgreSQL 9.4 = Greenplum 6 prints 17
# significant digits, 12+ the shortest exact form); the timeout bounds the whole read.
TABLE_READ_ONLY = "SET TRANSACTION READ ONLY"
TABLE_FLOAT_DIGITS = "SET LOCAL extra_float_digits = 3"
TABLE_READ_TIMEOUT = "SELECT set_config('statement_timeout', %(timeout)s, true)"
# %(columns)s and %(table)s are IDENTIFIER slots, never bind parameters: table_reader.copy_statement()
# fills them with psycopg.sql.Identifier (the table's schema and name, each column, each quoted).
COPY_TABLE_CSV = "COPY (SELECT %(columns)s FROM %(table)s) TO STDOUT WITH (FORMAT csv)"
