-- ckpt-eval schema and registry of the shipped demo checkpoints.
-- ckpt-eval schema version: 2   (the deployment applies this file only when this number is newer
--                                than the highest row of ckpt_eval.schema_version; keep both in step)
--
-- Apply as a superuser to the database ckpt_eval:
--     psql -v ON_ERROR_STOP=1 -d ckpt_eval -f init.sql
-- Safe to apply again: every object is created only when missing, demo rows only when absent, and
-- a database made by an older version is migrated in place (its recorded runs are kept).
-- Runs unchanged on PostgreSQL 15, Greenplum 6/7 and Cloudberry: one primary key per table,
-- which is also the distribution key; DISTRIBUTED BY is appended only on a Greenplum-family
-- server; none of the constructs Greenplum 6 lacks (upserts, skipping row locks, triggers,
-- identity columns, sequence-session functions, MERGE: tests/unit/test_sql_portability.py).
-- See README.md "Schema" for the contract of each table and of the latest_evaluations view.

-- Roles ------------------------------------------------------------------------------------------
-- ckpt_eval_owner owns the schema (used by the deployment only); ckpt_eval_app is the job's role.
-- No password is set here, so neither can log in until the deployment sets one.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ckpt_eval_owner') THEN
        CREATE ROLE ckpt_eval_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ckpt_eval_app') THEN
        CREATE ROLE ckpt_eval_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$roles$;

-- The app may connect, and nothing else at database level: no TEMP tables, no new schemas.
DO $database$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ckpt_eval_app', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ckpt_eval_owner', current_database());
END
$database$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS ckpt_eval AUTHORIZATION ckpt_eval_owner;
REVOKE ALL ON SCHEMA ckpt_eval FROM PUBLIC;

-- Tables -----------------------------------------------------------------------------------------
-- Created as the owner role so that it, not the superuser, owns them.
SET ROLE ckpt_eval_owner;

DO $tables$
DECLARE
    is_greenplum boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pg_catalog' AND c.relname = 'gp_segment_configuration');
    distributed_by_name text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (name)' ELSE '' END;
    distributed_by_run text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (run_id)' ELSE '' END;
    distributed_by_version text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (version)' ELSE '' END;
BEGIN
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.schema_version (
        version     integer PRIMARY KEY,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )' || distributed_by_version;

    -- The registry and the job state of each checkpoint. The name is the primary key (the one
    -- unique constraint Greenplum allows); checkpoint_id, the operator's handle, comes from its
    -- sequence and is never written by hand.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.checkpoints (
        name              text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
        checkpoint_id     bigserial NOT NULL,
        path              text NOT NULL CHECK (length(path) BETWEEN 1 AND 1024),
        arch              text NOT NULL,
        dataset           text NOT NULL,
        sha256            text NOT NULL CHECK (sha256 ~ ''^[0-9a-f]{64}$''),
        min_accuracy      double precision CHECK (min_accuracy BETWEEN 0 AND 1),
        min_f1_macro      double precision CHECK (min_f1_macro BETWEEN 0 AND 1),
        registered_at     timestamptz NOT NULL DEFAULT now(),
        status            text NOT NULL DEFAULT ''pending''
                          CHECK (status IN (''pending'', ''running'', ''done'', ''failed'')),
        attempt           integer NOT NULL DEFAULT 0,
        lease_owner       text,
        lease_token       text,
        lease_expires_at  timestamptz,
        requested_at      timestamptz NOT NULL DEFAULT now(),
        updated_at        timestamptz NOT NULL DEFAULT now()
    )' || distributed_by_name;

    -- One row per evaluation attempt that reached a result; history is never rewritten.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.evaluation_runs (
        run_id             bigserial PRIMARY KEY,
        checkpoint_id      bigint NOT NULL,
        checkpoint_name    text NOT NULL,
        attempt            integer NOT NULL,
        dataset            text NOT NULL,
        dataset_sha256     text,
        checkpoint_sha256  text,
        status             text NOT NULL CHECK (status IN (''succeeded'', ''failed'')),
        verdict            text NOT NULL CHECK (verdict IN (''pass'', ''fail'')),
        verdict_reasons    text,
        error              text,
        started_at         timestamptz NOT NULL,
        finished_at        timestamptz NOT NULL,
        duration_seconds   double precision NOT NULL,
        n_samples          integer,
        worker_host        text NOT NULL,
        worker_pid         integer NOT NULL,
        app_version        text NOT NULL,
        lease_token        text NOT NULL,
        min_accuracy       double precision,
        min_f1_macro       double precision,
        confusion_matrix   text
    )' || distributed_by_run;

    -- Metric values of a run; class_label '' is an overall metric, otherwise the class index.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.evaluation_metrics (
        run_id       bigint NOT NULL,
        metric       text NOT NULL,
        class_label  text NOT NULL DEFAULT '''',
        value        double precision,
        PRIMARY KEY (run_id, metric, class_label)
    )' || distributed_by_run;

    -- Plain (non-unique) indexes; CREATE INDEX IF NOT EXISTS does not exist on Greenplum 6.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes
                   WHERE schemaname = 'ckpt_eval' AND indexname = 'checkpoints_checkpoint_id_idx') THEN
        EXECUTE 'CREATE INDEX checkpoints_checkpoint_id_idx ON ckpt_eval.checkpoints (checkpoint_id)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes
                   WHERE schemaname = 'ckpt_eval' AND indexname = 'evaluation_runs_checkpoint_idx') THEN
        EXECUTE 'CREATE INDEX evaluation_runs_checkpoint_idx ON ckpt_eval.evaluation_runs (checkpoint_id, finished_at)';
    END IF;
END
$tables$;

-- New keys come from functions the owner defines (SECURITY DEFINER), used as the column defaults:
-- Greenplum 6 makes nextval() need UPDATE on a sequence, which would also let the app role
-- setval() it. This way the app role holds no privilege at all on any sequence, on every server.
CREATE OR REPLACE FUNCTION ckpt_eval.next_checkpoint_id() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog
    AS $body$ SELECT nextval('ckpt_eval.checkpoints_checkpoint_id_seq'::regclass) $body$;
CREATE OR REPLACE FUNCTION ckpt_eval.next_run_id() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog
    AS $body$ SELECT nextval('ckpt_eval.evaluation_runs_run_id_seq'::regclass) $body$;
ALTER TABLE ckpt_eval.checkpoints ALTER COLUMN checkpoint_id SET DEFAULT ckpt_eval.next_checkpoint_id();
ALTER TABLE ckpt_eval.evaluation_runs ALTER COLUMN run_id SET DEFAULT ckpt_eval.next_run_id();

-- Migration to version 2: a checkpoint is only ever evaluated against a recorded sha256. Rows an older
-- version let in without one are kept (their runs fail with "no sha256 is recorded"); once none is
-- left, the column refuses them for good.
DO $sha256_required$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'ckpt_eval' AND c.relname = 'checkpoints' AND a.attname = 'sha256'
                 AND NOT a.attnotnull) THEN
        IF EXISTS (SELECT 1 FROM ckpt_eval.checkpoints WHERE sha256 IS NULL) THEN
            RAISE NOTICE 'ckpt_eval.checkpoints has rows without sha256: they fail their runs until the owner sets one';
        ELSE
            ALTER TABLE ckpt_eval.checkpoints ALTER COLUMN sha256 SET NOT NULL;
        END IF;
    END IF;
END
$sha256_required$;

-- The contract for analysts: one row per checkpoint, its latest run and headline metrics.
CREATE OR REPLACE VIEW ckpt_eval.latest_evaluations AS
SELECT c.checkpoint_id,
       c.name AS checkpoint_name,
       c.arch,
       c.dataset,
       r.run_id,
       r.attempt,
       r.status,
       r.verdict,
       m.accuracy,
       m.f1_macro,
       m.f1_weighted,
       m.loss,
       r.n_samples,
       r.error,
       r.dataset_sha256,
       r.started_at,
       r.finished_at,
       r.duration_seconds
FROM ckpt_eval.checkpoints c
JOIN (
    SELECT runs.*,
           row_number() OVER (PARTITION BY runs.checkpoint_id
                              ORDER BY runs.finished_at DESC, runs.run_id DESC) AS recency
    FROM ckpt_eval.evaluation_runs runs
) r ON r.checkpoint_id = c.checkpoint_id AND r.recency = 1
LEFT JOIN (
    SELECT run_id,
           max(CASE WHEN metric = 'accuracy' THEN value END) AS accuracy,
           max(CASE WHEN metric = 'f1_macro' THEN value END) AS f1_macro,
           max(CASE WHEN metric = 'f1_weighted' THEN value END) AS f1_weighted,
           max(CASE WHEN metric = 'loss' THEN value END) AS loss
    FROM ckpt_eval.evaluation_metrics
    WHERE class_label = ''
    GROUP BY run_id
) m ON m.run_id = r.run_id;

-- Privileges: read the registry, claim and finish jobs, append runs and metrics. Nothing else:
-- no DDL, no DELETE, no UPDATE of results or of a checkpoint's path, hash or gate.
GRANT USAGE ON SCHEMA ckpt_eval TO ckpt_eval_app;
GRANT SELECT ON ckpt_eval.checkpoints, ckpt_eval.evaluation_runs, ckpt_eval.evaluation_metrics,
                ckpt_eval.latest_evaluations, ckpt_eval.schema_version TO ckpt_eval_app;
GRANT INSERT (name, path, arch, dataset, sha256, min_accuracy, min_f1_macro)
    ON ckpt_eval.checkpoints TO ckpt_eval_app;
GRANT UPDATE (status, attempt, lease_owner, lease_token, lease_expires_at, requested_at, updated_at)
    ON ckpt_eval.checkpoints TO ckpt_eval_app;
-- Runs: every column but the key, which only the owner's function assigns (an app-chosen run_id
-- could take an id the job is about to be given).
REVOKE INSERT ON ckpt_eval.evaluation_runs FROM ckpt_eval_app;
GRANT INSERT (checkpoint_id, checkpoint_name, attempt, dataset, dataset_sha256, checkpoint_sha256, status, verdict,
              verdict_reasons, error, started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid,
              app_version, lease_token, min_accuracy, min_f1_macro, confusion_matrix)
    ON ckpt_eval.evaluation_runs TO ckpt_eval_app;
GRANT INSERT ON ckpt_eval.evaluation_metrics TO ckpt_eval_app;
-- Keys only through the owner's functions: no privilege on any sequence (version 1 granted USAGE).
REVOKE ALL ON SEQUENCE ckpt_eval.checkpoints_checkpoint_id_seq, ckpt_eval.evaluation_runs_run_id_seq
    FROM ckpt_eval_app, PUBLIC;
REVOKE ALL ON FUNCTION ckpt_eval.next_checkpoint_id(), ckpt_eval.next_run_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ckpt_eval.next_checkpoint_id(), ckpt_eval.next_run_id() TO ckpt_eval_app;

-- Demo checkpoints shipped in checkpoints/ (trained by `ckpt-eval train` on digits, fixed seeds).
INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256)
SELECT 'digits-mlp-good', 'digits-mlp-good.pt', 'digits_mlp', 'digits',
       '32e2d7731ab5e65432c20863b8e43f0bfc30b365d8d0c3d82f965eac3c4506b3'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.checkpoints WHERE name = 'digits-mlp-good');

INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256)
SELECT 'digits-mlp-undertrained', 'digits-mlp-undertrained.pt', 'digits_mlp', 'digits',
       '7b055463733e6094f852a621f2ee9658c0f29c4dd45352623eed7bec25acc638'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.checkpoints WHERE name = 'digits-mlp-undertrained');

INSERT INTO ckpt_eval.schema_version (version)
SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 1);
INSERT INTO ckpt_eval.schema_version (version)
SELECT 2 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 2);

RESET ROLE;
