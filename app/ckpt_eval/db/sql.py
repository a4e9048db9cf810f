"""Every SQL statement the application runs, in one place; all of them parameterised.

Portable to Greenplum: compare-and-set UPDATEs checked by rowcount (no row locks of any
kind), RETURNING only on INSERT, timestamps bound from one clock (the server's, read once
per step), no upserts. See docs: greenplum-dialect.md section 3.
"""

SERVER_NOW = "SELECT now()"

# The schema version this release needs (init.sql's header and its schema_version rows).
REQUIRED_SCHEMA_VERSION = 5
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM ckpt_eval.schema_version"

IS_GREENPLUM = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pg_catalog' AND c.relname = 'gp_segment_configuration')
"""


def _selected(alias: str = "") -> str:
    """The operator's selection: --checkpoint-id and --dataset (NULL arrays select everything)."""
    return (
        f"(%(ids)s::bigint[] IS NULL OR {alias}checkpoint_id = ANY(%(ids)s::bigint[]))"
        f" AND (%(datasets)s::text[] IS NULL OR {alias}dataset = ANY(%(datasets)s::text[]))"
    )


def _claimable(alias: str = "") -> str:
    return f"({alias}status = 'pending' OR ({alias}status = 'running' AND {alias}lease_expires_at < %(now)s))"


_SELECTED = _selected()
_CLAIMABLE = _claimable()
_PAIR = "checkpoint_name = %(name)s AND dataset = %(dataset)s"

# Checkpoint rows inserted the version-2 way (with their dataset, by an operator's SQL or an older
# ckpt-eval) become pairs; two workers adopting at once collide on the key and one of them gives way.
ADOPT_REGISTERED = """
INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id)
SELECT c.name, c.dataset, c.checkpoint_id FROM ckpt_eval.checkpoints c
WHERE c.dataset IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluations e WHERE e.checkpoint_name = c.name AND e.dataset = c.dataset)
"""

# With each pair's architecture (NULL: the checkpoint row is gone), so the job can group them.
CANDIDATES = f"""
SELECT p.checkpoint_name, p.dataset, c.arch
FROM (
    SELECT checkpoint_name, dataset, requested_at, checkpoint_id FROM ckpt_eval.evaluations
    WHERE {_CLAIMABLE} AND {_SELECTED}
    ORDER BY requested_at, checkpoint_id, dataset
    LIMIT %(limit)s
) p
LEFT JOIN ckpt_eval.checkpoints c ON c.name = p.checkpoint_name
ORDER BY p.requested_at, p.checkpoint_id, p.dataset
"""

CLAIM = f"""
UPDATE ckpt_eval.evaluations
SET status = 'running', attempt = attempt + 1, lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE {_PAIR} AND {_CLAIMABLE}
"""

# The claimed pair with its checkpoint and the dataset's definition (no row: the dataset is not registered).
CLAIMED = """
SELECT c.checkpoint_id, c.name, c.path, c.arch, e.dataset, c.sha256, c.min_accuracy, c.min_f1_macro, e.attempt,
       d.name AS dataset_name, d.kind AS dataset_kind, d.source AS dataset_source, d.split AS dataset_split,
       d.feature_columns AS dataset_feature_columns, d.label_column AS dataset_label_column,
       d.class_names AS dataset_class_names, d.fingerprint AS dataset_fingerprint
FROM ckpt_eval.evaluations e
JOIN ckpt_eval.checkpoints c ON c.name = e.checkpoint_name
LEFT JOIN ckpt_eval.datasets d ON d.name = e.dataset
WHERE e.checkpoint_name = %(name)s AND e.dataset = %(dataset)s AND e.lease_token = %(token)s AND e.status = 'running'
"""

HEARTBEAT = f"""
UPDATE ckpt_eval.evaluations
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE {_PAIR} AND lease_token = %(token)s AND status = 'running'
"""

# The fencing step: only the holder of the current token may finish; rowcount 0 means it lost.
FINISH_JOB = f"""
UPDATE ckpt_eval.evaluations
SET status = %(status)s, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s,
    dataset_fingerprint = %(fingerprint)s
WHERE {_PAIR} AND lease_token = %(token)s AND status = 'running'
"""

# A worker that stops early (interrupted) hands the pair back untouched.
RELEASE_JOB = f"""
UPDATE ckpt_eval.evaluations
SET status = 'pending', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE {_PAIR} AND lease_token = %(token)s AND status = 'running'
"""

INSERT_RUN = """
INSERT INTO ckpt_eval.evaluation_runs (
    checkpoint_id, checkpoint_name, attempt, dataset, dataset_sha256, checkpoint_sha256, status, verdict,
    verdict_reasons, error, started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid,
    app_version, lease_token, min_accuracy, min_f1_macro, confusion_matrix, arch_package, arch_version,
    gate_results, gate_note, curves)
VALUES (
    %(checkpoint_id)s, %(checkpoint_name)s, %(attempt)s, %(dataset)s, %(dataset_sha256)s, %(checkpoint_sha256)s,
    %(status)s, %(verdict)s, %(verdict_reasons)s, %(error)s, %(started_at)s, %(finished_at)s,
    %(duration_seconds)s, %(n_samples)s, %(worker_host)s, %(worker_pid)s, %(app_version)s, %(lease_token)s,
    %(min_accuracy)s, %(min_f1_macro)s, %(confusion_matrix)s, %(arch_package)s, %(arch_version)s,
    %(gate_results)s, %(gate_note)s, %(curves)s)
RETURNING run_id
"""

# Resolves a finish whose commit outcome was lost with the connection (only then: it scans the runs).
RUNS_BY_TOKENS = "SELECT lease_token, run_id FROM ckpt_eval.evaluation_runs WHERE lease_token = ANY(%(tokens)s::text[])"

# The metric rows of several runs in one statement (one round trip, not one per row): four arrays
# unnested side by side (multi-argument unnest in FROM: PostgreSQL 9.4, so Greenplum 6 too).
INSERT_METRICS = """
INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, class_label, value)
SELECT m.run_id, m.metric, m.class_label, m.value
FROM unnest(%(run_ids)s::bigint[], %(metrics)s::text[], %(labels)s::text[], %(values)s::double precision[])
    AS m(run_id, metric, class_label, value)
"""

REQUEUE_FINISHED = f"""
UPDATE ckpt_eval.evaluations
SET status = 'pending', requested_at = %(now)s, updated_at = %(now)s
WHERE status IN ('done', 'failed') AND {_SELECTED}
"""

REQUEUE_FAILED = f"""
UPDATE ckpt_eval.evaluations
SET status = 'pending', requested_at = %(now)s, updated_at = %(now)s
WHERE status = 'failed' AND {_SELECTED}
"""

# A new dataset version: the pairs last evaluated on another version are queued again (history kept).
# A pair whose latest run never saw the dataset whole (fingerprint NULL) waits for `run --failed`.
REQUEUE_STALE = """
UPDATE ckpt_eval.evaluations
SET status = 'pending', requested_at = %(now)s, updated_at = %(now)s
WHERE dataset = %(dataset)s AND status IN ('done', 'failed')
  AND dataset_fingerprint IS NOT NULL AND dataset_fingerprint <> %(fingerprint)s
"""

RECORD_DATASET_VERSION = """
UPDATE ckpt_eval.datasets SET fingerprint = %(fingerprint)s, fingerprinted_at = %(now)s
WHERE name = %(dataset)s AND (fingerprint IS NULL OR fingerprint <> %(fingerprint)s)
"""

# Datasets whose finished pairs could be stale and that no pending pair of this run will read anyway.
DATASETS_TO_CHECK = f"""
SELECT DISTINCT e.dataset FROM ckpt_eval.evaluations e
WHERE e.status IN ('done', 'failed') AND e.dataset_fingerprint IS NOT NULL AND {_selected("e.")}
  AND NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluations p WHERE p.dataset = e.dataset AND {_claimable("p.")})
ORDER BY e.dataset
"""

_PLANNED_PAIRS = f"""
SELECT e.checkpoint_id, e.checkpoint_name AS name, c.arch, e.dataset, e.status, e.attempt, e.requested_at
FROM ckpt_eval.evaluations e JOIN ckpt_eval.checkpoints c ON c.name = e.checkpoint_name
WHERE {_selected("e.")} AND (
    {_claimable("e.")}
    OR (%(force)s AND e.status IN ('done', 'failed'))
    OR (%(failed)s AND e.status = 'failed'))
"""

# Rows not adopted yet count as pending pairs: the dry run changes nothing, not even that.
PLANNED = f"""
SELECT checkpoint_id, name, arch, dataset, status, attempt FROM (
{_PLANNED_PAIRS}
UNION ALL
SELECT c.checkpoint_id, c.name, c.arch, c.dataset, 'pending', 0, c.requested_at
FROM ckpt_eval.checkpoints c
WHERE c.dataset IS NOT NULL
  AND {_selected("c.")}
  AND NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluations e WHERE e.checkpoint_name = c.name AND e.dataset = c.dataset)
) planned
ORDER BY requested_at, checkpoint_id, dataset
"""

RUNNING_SELECTED = f"""
SELECT checkpoint_id, checkpoint_name, dataset FROM ckpt_eval.evaluations
WHERE status = 'running' AND lease_expires_at >= %(now)s AND {_SELECTED}
ORDER BY checkpoint_id, dataset
"""

KNOWN_IDS = "SELECT checkpoint_id FROM ckpt_eval.checkpoints WHERE checkpoint_id = ANY(%(ids)s::bigint[])"
KNOWN_DATASETS = "SELECT name FROM ckpt_eval.datasets WHERE name = ANY(%(names)s::text[])"

# One row per pair (a checkpoint registered the version-2 way and not adopted yet shows as pending).
STATUS = """
SELECT c.checkpoint_id, c.name, c.arch, coalesce(e.dataset, c.dataset) AS dataset,
       coalesce(e.status, 'pending') AS job_status, coalesce(e.attempt, 0) AS attempt,
       l.run_id, l.status AS run_status, l.verdict, l.accuracy, l.f1_macro, l.loss, l.n_samples,
       l.finished_at, l.error
FROM ckpt_eval.checkpoints c
LEFT JOIN ckpt_eval.evaluations e ON e.checkpoint_name = c.name
LEFT JOIN ckpt_eval.latest_evaluations l
       ON l.checkpoint_id = c.checkpoint_id AND l.dataset = coalesce(e.dataset, c.dataset)
ORDER BY c.checkpoint_id, 4
"""

NAME_TAKEN = "SELECT 1 FROM ckpt_eval.checkpoints WHERE name = %(name)s"

REGISTER = """
INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256, min_accuracy, min_f1_macro)
VALUES (%(name)s, %(path)s, %(arch)s, %(dataset)s, %(sha256)s, %(min_accuracy)s, %(min_f1_macro)s)
RETURNING checkpoint_id
"""

CHECKPOINT_BY_HANDLE = """
SELECT checkpoint_id, name FROM ckpt_eval.checkpoints
WHERE name = %(handle)s OR (%(id)s::bigint IS NOT NULL AND checkpoint_id = %(id)s::bigint)
ORDER BY name = %(handle)s DESC
LIMIT 1
"""

PAIR_EXISTS = "SELECT 1 FROM ckpt_eval.evaluations WHERE checkpoint_name = %(name)s AND dataset = %(dataset)s"

ATTACH = """
INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id)
VALUES (%(name)s, %(dataset)s, %(checkpoint_id)s)
"""

DATASET_COLUMNS = (
    "name, kind, source, split, feature_columns, label_column, class_names, description, fingerprint, "
    "fingerprinted_at, registered_at"
)
DATASETS = f"SELECT {DATASET_COLUMNS} FROM ckpt_eval.datasets ORDER BY name"
DATASET = f"SELECT {DATASET_COLUMNS} FROM ckpt_eval.datasets WHERE name = %(name)s"
DATASET_PAIRS = """
SELECT e.checkpoint_id, e.checkpoint_name, e.status, e.dataset_fingerprint
FROM ckpt_eval.evaluations e WHERE e.dataset = %(name)s ORDER BY e.checkpoint_id
"""

ADD_DATASET_KEYS = ("name", "kind", "source", "split", "feature_columns", "label_column", "class_names", "description")
ADD_DATASET = """
INSERT INTO ckpt_eval.datasets (name, kind, source, split, feature_columns, label_column, class_names, description)
VALUES (%(name)s, %(kind)s, %(source)s, %(split)s, %(feature_columns)s, %(label_column)s, %(class_names)s,
        %(description)s)
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

# -- Batch scoring (schema version 4) -------------------------------------------------------------
# %(input)s, %(output)s, %(key)s and %(features)s are IDENTIFIER slots, never bind parameters:
# db/scoring.py fills them with psycopg.sql.Identifier (names from the registry, each quoted).

SCORING_JOB = """
SELECT j.name, j.checkpoint_name, j.input_dataset, j.key_column, j.output_schema, j.output_table, j.chunk_rows,
       j.allow_ungated, j.active_run, c.checkpoint_id, c.path, c.arch, c.sha256,
       d.kind AS dataset_kind, d.source AS dataset_source, d.feature_columns, d.class_names
FROM ckpt_eval.scoring_jobs j
LEFT JOIN ckpt_eval.checkpoints c ON c.name = j.checkpoint_name
LEFT JOIN ckpt_eval.datasets d ON d.name = j.input_dataset
WHERE j.name = %(job)s
"""

SCORING_JOBS = "SELECT name FROM ckpt_eval.scoring_jobs ORDER BY name"

# A checkpoint may score when its latest run on every dataset it was evaluated on passed its gate.
CHECKPOINT_VERDICTS = """
SELECT dataset, status, verdict FROM ckpt_eval.latest_evaluations WHERE checkpoint_id = %(checkpoint_id)s
ORDER BY dataset
"""

SCORING_RUN = """
SELECT scoring_run_id, job_name, checkpoint_id, checkpoint_name, checkpoint_sha256, rescore, status, planned_rows,
       chunks, rows_scored, rows_skipped, failed_chunks, started_at, finished_at
FROM ckpt_eval.scoring_runs WHERE scoring_run_id = %(run)s
"""

SCORING_RUNS_OF_JOB = """
SELECT scoring_run_id, checkpoint_name, rescore, status, planned_rows, chunks, rows_scored, rows_skipped,
       failed_chunks, started_at, finished_at
FROM ckpt_eval.scoring_runs WHERE job_name = %(job)s ORDER BY scoring_run_id
"""

# The input's column types (no rows read): the key must be an integer, the features must exist.
SCORING_INPUT_COLUMNS = "SELECT i.%(key)s, %(features)s FROM %(input)s i LIMIT 0"
SCORING_NULL_KEYS = "SELECT count(*) FROM %(input)s i WHERE i.%(key)s IS NULL"
SCORING_DUPLICATE_KEY = "SELECT i.%(key)s FROM %(input)s i GROUP BY i.%(key)s HAVING count(*) > 1 LIMIT 1"
OUTPUT_PRIVILEGES = """
SELECT count(*) > 0 AS present,
       coalesce(bool_and(has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'INSERT')
                         AND has_table_privilege(c.oid, 'SELECT')), false) AS writable
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
"""

# The rows a run scores (those without a prediction from the checkpoint yet; every row when
# rescoring), at most %(limit)s of them (NULL: all), planned as chunks of consecutive keys. One pass
# over the input's keys in order: a hash join against the keys the checkpoint has scored (the output
# has no index: every index entry is work for each prediction's COPY), a running count of the rows to
# score, and per chunk whether it is clean: no other input row lies within its key range, so reading
# the range needs no anti-join (rows appended into it later are new, hence unscored, as well).
SCORING_PLAN = """
SELECT chunk_no, min(k) AS low_key, max(k) AS high_key, count(*) AS planned_rows,
       max(position) - min(position) + 1 = count(*) AS clean
FROM (
    SELECT k, todo, row_number() OVER (ORDER BY k) AS position,
           sum(todo) OVER (ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS todo_through,
           (sum(todo) OVER (ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - 1) / %(chunk_rows)s
               AS chunk_no
    FROM (SELECT i.%(key)s AS k, CASE WHEN %(rescore)s OR s.row_key IS NULL THEN 1 ELSE 0 END AS todo
          FROM %(input)s i
          LEFT JOIN (SELECT DISTINCT o.row_key FROM %(output)s o WHERE o.checkpoint_id = %(checkpoint_id)s) s
              ON s.row_key = i.%(key)s
          WHERE i.%(key)s IS NOT NULL) flagged
) numbered
WHERE todo = 1 AND (%(limit)s::bigint IS NULL OR todo_through <= %(limit)s::bigint)
GROUP BY chunk_no
ORDER BY chunk_no
"""

INSERT_SCORING_RUN = """
INSERT INTO ckpt_eval.scoring_runs (job_name, checkpoint_id, checkpoint_name, checkpoint_sha256, class_names, rescore,
                                    status, planned_rows, chunks, started_by, app_version, started_at)
VALUES (%(job)s, %(checkpoint_id)s, %(checkpoint_name)s, %(checkpoint_sha256)s, %(class_names)s, %(rescore)s,
        'running', %(planned_rows)s, %(chunks)s, %(started_by)s, %(app_version)s, %(now)s)
RETURNING scoring_run_id
"""

INSERT_SCORING_CHUNKS = """
INSERT INTO ckpt_eval.scoring_chunks (scoring_run_id, chunk_no, low_key, high_key, planned_rows, clean, updated_at)
SELECT %(run)s, c.chunk_no, c.low_key, c.high_key, c.planned_rows, c.clean, %(now)s
FROM unnest(%(numbers)s::integer[], %(lows)s::bigint[], %(highs)s::bigint[], %(rows)s::integer[],
            %(cleans)s::boolean[])
     AS c(chunk_no, low_key, high_key, planned_rows, clean)
"""

# Compare-and-set: a new run becomes the job's run only if none is in progress (rowcount 0: another
# worker's run won; this one is rolled back and the worker joins that one).
ACTIVATE_SCORING_RUN = """
UPDATE ckpt_eval.scoring_jobs SET active_run = %(run)s WHERE name = %(job)s AND active_run IS NULL
"""
DEACTIVATE_SCORING_RUN = """
UPDATE ckpt_eval.scoring_jobs SET active_run = NULL WHERE name = %(job)s AND active_run = %(run)s
"""

_CHUNK = "scoring_run_id = %(run)s AND chunk_no = %(chunk)s"

CLAIMABLE_CHUNKS = f"""
SELECT chunk_no FROM ckpt_eval.scoring_chunks
WHERE scoring_run_id = %(run)s AND {_CLAIMABLE}
ORDER BY chunk_no
LIMIT %(limit)s
"""

CLAIM_CHUNK = f"""
UPDATE ckpt_eval.scoring_chunks
SET status = 'running', attempt = attempt + 1, lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE {_CHUNK} AND {_CLAIMABLE}
"""

CLAIMED_CHUNK = f"""
SELECT chunk_no, low_key, high_key, planned_rows, attempt, clean FROM ckpt_eval.scoring_chunks
WHERE {_CHUNK} AND lease_token = %(token)s AND status = 'running'
"""

HEARTBEAT_CHUNK = f"""
UPDATE ckpt_eval.scoring_chunks SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE {_CHUNK} AND lease_token = %(token)s AND status = 'running'
"""

# The fence of a chunk's finish: in the transaction that writes its predictions, first.
FINISH_CHUNK = f"""
UPDATE ckpt_eval.scoring_chunks
SET status = %(status)s, lease_expires_at = NULL, rows_scored = %(rows_scored)s, rows_skipped = %(rows_skipped)s,
    error = %(error)s, updated_at = %(now)s
WHERE {_CHUNK} AND lease_token = %(token)s AND status = 'running'
"""

CHUNK_FINISHED_BY = f"SELECT status FROM ckpt_eval.scoring_chunks WHERE {_CHUNK} AND lease_token = %(token)s"

RELEASE_CHUNK = f"""
UPDATE ckpt_eval.scoring_chunks
SET status = 'pending', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE {_CHUNK} AND lease_token = %(token)s AND status = 'running'
"""

SCORING_RUN_PROGRESS = """
SELECT count(*) AS chunks,
       coalesce(sum(CASE WHEN status IN ('pending', 'running') THEN 1 ELSE 0 END), 0) AS open_chunks,
       coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed_chunks,
       coalesce(sum(rows_scored), 0) AS rows_scored,
       coalesce(sum(rows_skipped), 0) AS rows_skipped,
       coalesce(sum(CASE WHEN status IN ('pending', 'running') THEN planned_rows ELSE 0 END), 0) AS open_rows
FROM ckpt_eval.scoring_chunks WHERE scoring_run_id = %(run)s
"""

FAILED_CHUNKS = """
SELECT chunk_no, low_key, high_key, error FROM ckpt_eval.scoring_chunks
WHERE scoring_run_id = %(run)s AND status = 'failed' ORDER BY chunk_no LIMIT %(limit)s
"""

COMPLETE_SCORING_RUN = """
UPDATE ckpt_eval.scoring_runs
SET status = %(status)s, rows_scored = %(rows_scored)s, rows_skipped = %(rows_skipped)s,
    failed_chunks = %(failed_chunks)s, finished_at = %(now)s
WHERE scoring_run_id = %(run)s AND status = 'running'
"""

# A chunk's input rows, in key order. A clean chunk (see SCORING_PLAN) reads its key range as it is; a
# chunk whose range also holds rows the checkpoint had scored leaves them out (a hash anti-join against
# the output's rows in the range: the output has no index, and such chunks are rare: keys that arrive
# out of order between runs).
SCORING_READ_CLEAN_CHUNK = """
COPY (SELECT i.%(key)s, %(features)s FROM %(input)s i
      WHERE i.%(key)s BETWEEN %(low)s AND %(high)s
      ORDER BY i.%(key)s) TO STDOUT WITH (FORMAT csv)
"""
SCORING_READ_CHUNK = """
COPY (SELECT i.%(key)s, %(features)s FROM %(input)s i
      WHERE i.%(key)s BETWEEN %(low)s AND %(high)s
        AND NOT EXISTS (SELECT 1 FROM %(output)s o
                        WHERE o.row_key BETWEEN %(low)s AND %(high)s
                          AND o.row_key = i.%(key)s AND o.checkpoint_id = %(checkpoint_id)s)
      ORDER BY i.%(key)s) TO STDOUT WITH (FORMAT csv)
"""

# In binary: the rows come from copy_format.py, built column-wise (the column order is its layout's).
SCORING_WRITE = """
COPY %(output)s (row_key, scoring_run_id, checkpoint_id, predicted_index, probabilities, positive_probability,
               scored_at) FROM STDIN WITH (FORMAT binary)
"""

# How a run's predictions split over the classes (the summary of `ckpt-eval score-runs`).
PREDICTION_COUNTS = """
SELECT o.predicted_index, r.class_names[o.predicted_index + 1] AS predicted_class, count(*) AS rows
FROM %(output)s o JOIN ckpt_eval.scoring_runs r ON r.scoring_run_id = o.scoring_run_id
WHERE o.scoring_run_id = %(run)s GROUP BY 1, 2 ORDER BY 1
"""


# -- Champions and gates (schema version 5) -------------------------------------------------------------

# The gate in force for each scope among the claimed pairs' checkpoints and datasets: each scope's latest.
GATES_IN_FORCE = """
SELECT gate_id, checkpoint_name, dataset, rules, created_by, created_at
FROM (SELECT g.*, row_number() OVER (PARTITION BY g.checkpoint_name, g.dataset ORDER BY g.gate_id DESC) AS recency
      FROM ckpt_eval.gates g
      WHERE g.checkpoint_name = ANY(%(names)s::text[]) OR g.dataset = ANY(%(datasets)s::text[])) ranked
WHERE recency = 1
"""

CURRENT_CHAMPIONS = """
SELECT promotion_id, dataset, checkpoint_name, checkpoint_id, promoted_by, promoted_at, reason
FROM ckpt_eval.current_champions WHERE dataset = ANY(%(datasets)s::text[])
"""

# Each current champion's latest succeeded run per dataset version, with its overall metrics: what
# change rules compare a candidate with (the version must be the candidate's).
CHAMPION_BASELINES = """
SELECT r.dataset, r.dataset_sha256, r.run_id, r.checkpoint_name, m.metric, m.value
FROM (SELECT runs.run_id, runs.dataset, runs.dataset_sha256, runs.checkpoint_name,
             row_number() OVER (PARTITION BY runs.dataset, runs.dataset_sha256
                                ORDER BY runs.finished_at DESC, runs.run_id DESC) AS recency
      FROM ckpt_eval.evaluation_runs runs
      JOIN ckpt_eval.current_champions c ON c.checkpoint_id = runs.checkpoint_id AND c.dataset = runs.dataset
      WHERE runs.status = 'succeeded' AND runs.dataset_sha256 IS NOT NULL
        AND runs.dataset = ANY(%(datasets)s::text[])) r
JOIN ckpt_eval.evaluation_metrics m ON m.run_id = r.run_id AND m.class_label = ''
WHERE r.recency = 1
"""

PROMOTE = """
INSERT INTO ckpt_eval.champions (dataset, checkpoint_name, checkpoint_id, promoted_by, reason)
VALUES (%(dataset)s, %(checkpoint_name)s, %(checkpoint_id)s, %(promoted_by)s, %(reason)s)
RETURNING promotion_id, promoted_at
"""

PROMOTIONS = """
SELECT promotion_id, dataset, checkpoint_name, checkpoint_id, promoted_by, promoted_at, reason
FROM ckpt_eval.champions
WHERE (%(dataset)s::text IS NULL OR dataset = %(dataset)s) ORDER BY promotion_id
"""

# A checkpoint's datasets (the pairs it is registered for) and whether it has a succeeded run on each.
CHECKPOINT_PAIRS = """
SELECT c.checkpoint_id, c.name, e.dataset,
       EXISTS (SELECT 1 FROM ckpt_eval.evaluation_runs r
               WHERE r.checkpoint_id = c.checkpoint_id AND r.dataset = e.dataset
                 AND r.status = 'succeeded') AS evaluated
FROM ckpt_eval.checkpoints c JOIN ckpt_eval.evaluations e ON e.checkpoint_name = c.name
WHERE c.name = %(name)s ORDER BY e.dataset
"""

INSERT_GATE = """
INSERT INTO ckpt_eval.gates (checkpoint_name, dataset, rules, created_by)
VALUES (%(checkpoint_name)s, %(dataset)s, %(rules)s, %(created_by)s)
RETURNING gate_id
"""

# -- Reports --------------------------------------------------------------------------------------------

REPORT_RUN_COLUMNS = """
r.run_id, r.checkpoint_id, r.checkpoint_name, r.dataset, r.dataset_sha256, r.status, r.verdict, r.verdict_reasons,
r.error, r.started_at, r.finished_at, r.n_samples, r.confusion_matrix, r.gate_results, r.gate_note, r.curves
"""

REPORT_RUN = f"SELECT {REPORT_RUN_COLUMNS} FROM ckpt_eval.evaluation_runs r WHERE r.run_id = %(run)s"

# The latest run of each (checkpoint, dataset) among the named checkpoints (NULL: all) and the dataset
# (NULL: all), at most %(limit)s of them.
REPORT_LATEST_RUNS = f"""
SELECT {REPORT_RUN_COLUMNS}
FROM (SELECT runs.*, row_number() OVER (PARTITION BY runs.checkpoint_id, runs.dataset
                                        ORDER BY runs.finished_at DESC, runs.run_id DESC) AS recency
      FROM ckpt_eval.evaluation_runs runs
      WHERE (%(names)s::text[] IS NULL OR runs.checkpoint_name = ANY(%(names)s::text[]))
        AND (%(dataset)s::text IS NULL OR runs.dataset = %(dataset)s)) r
WHERE r.recency = 1
ORDER BY r.dataset, r.checkpoint_name
LIMIT %(limit)s
"""

REPORT_METRICS = """
SELECT run_id, metric, class_label, value FROM ckpt_eval.evaluation_metrics WHERE run_id = ANY(%(runs)s::bigint[])
"""

# A dataset's succeeded runs over time (the history figure), the newest %(limit)s of them.
REPORT_HISTORY = """
SELECT h.run_id, h.checkpoint_name, h.finished_at, h.verdict, m.metric, m.value
FROM (SELECT run_id, checkpoint_name, finished_at, verdict FROM ckpt_eval.evaluation_runs
      WHERE dataset = %(dataset)s AND status = 'succeeded'
      ORDER BY finished_at DESC, run_id DESC LIMIT %(limit)s) h
JOIN ckpt_eval.evaluation_metrics m ON m.run_id = h.run_id AND m.class_label = ''
WHERE m.metric = ANY(%(metrics)s::text[])
ORDER BY h.finished_at, h.run_id
"""
