-- ckpt-eval schema and registry of the shipped demo checkpoints.
-- ckpt-eval schema version: 5   (the deployment applies this file only when this number is newer
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
    distributed_by_pair text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (checkpoint_name, dataset)' ELSE '' END;
    distributed_by_scoring_run text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (scoring_run_id)' ELSE '' END;
    distributed_by_promotion text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (promotion_id)' ELSE '' END;
    distributed_by_gate text := CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (gate_id)' ELSE '' END;
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

    -- Version 3: the evaluation datasets. Built-in kinds name data shipped with the app or its data
    -- directory; 'table' names a table or view the owner granted the app role SELECT on; 'csv' and
    -- 'parquet' name a file in the data directory. fingerprint is the content version last evaluated.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.datasets (
        name              text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
        kind              text NOT NULL
                          CHECK (kind IN (''idx'', ''digits'', ''breast_cancer'', ''csv'', ''parquet'', ''table'')),
        source            text CHECK (length(source) BETWEEN 1 AND 1024),
        split             text NOT NULL DEFAULT ''test'' CHECK (split IN (''test'', ''train'')),
        feature_columns   text[] CHECK (array_length(feature_columns, 1) BETWEEN 1 AND 100000),
        label_column      text CHECK (length(label_column) BETWEEN 1 AND 200),
        class_names       text[] CHECK (array_length(class_names, 1) BETWEEN 2 AND 100000),
        description       text CHECK (length(description) <= 2000),
        fingerprint       text CHECK (fingerprint ~ ''^[0-9a-f]{64}$''),
        fingerprinted_at  timestamptz,
        registered_at     timestamptz NOT NULL DEFAULT now()
    )' || distributed_by_name;

    -- Version 3: evaluation work is a (checkpoint, dataset) pair with its own job state, claim,
    -- lease and fence. dataset_fingerprint is the dataset version the pair's latest run saw.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.evaluations (
        checkpoint_name      text NOT NULL,
        dataset              text NOT NULL,
        checkpoint_id        bigint NOT NULL,
        status               text NOT NULL DEFAULT ''pending''
                             CHECK (status IN (''pending'', ''running'', ''done'', ''failed'')),
        attempt              integer NOT NULL DEFAULT 0,
        lease_owner          text,
        lease_token          text,
        lease_expires_at     timestamptz,
        requested_at         timestamptz NOT NULL DEFAULT now(),
        updated_at           timestamptz NOT NULL DEFAULT now(),
        dataset_fingerprint  text,
        attached_at          timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (checkpoint_name, dataset)
    )' || distributed_by_pair;

    -- Version 4: batch scoring. A scoring job names a checkpoint, an input (a registered dataset of
    -- kind 'table': its source and feature columns), the input's integer row key and an output table
    -- (made by ckpt_eval.create_scoring_job). active_run is the scoring run its workers share; it is
    -- set and cleared by compare-and-set, so at most one run of a job is in progress.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.scoring_jobs (
        name              text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
        checkpoint_name   text NOT NULL,
        input_dataset     text NOT NULL,
        key_column        text NOT NULL CHECK (length(key_column) BETWEEN 1 AND 63),
        output_schema     text NOT NULL CHECK (length(output_schema) BETWEEN 1 AND 63),
        output_table      text NOT NULL CHECK (length(output_table) BETWEEN 1 AND 56),
        chunk_rows        integer NOT NULL DEFAULT 50000 CHECK (chunk_rows BETWEEN 1 AND 500000),
        allow_ungated     boolean NOT NULL DEFAULT false,
        active_run        bigint,
        created_at        timestamptz NOT NULL DEFAULT now()
    )' || distributed_by_name;

    -- One row per scoring run: which checkpoint (and bytes) scored, how much, and how it ended.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.scoring_runs (
        scoring_run_id     bigserial PRIMARY KEY,
        job_name           text NOT NULL,
        checkpoint_id      bigint NOT NULL,
        checkpoint_name    text NOT NULL,
        checkpoint_sha256  text NOT NULL,
        class_names        text[],
        rescore            boolean NOT NULL,
        status             text NOT NULL CHECK (status IN (''running'', ''done'', ''failed'')),
        planned_rows       bigint NOT NULL,
        chunks             integer NOT NULL,
        rows_scored        bigint,
        rows_skipped       bigint,
        failed_chunks      integer,
        started_by         text NOT NULL,
        app_version        text NOT NULL,
        started_at         timestamptz NOT NULL,
        finished_at        timestamptz
    )' || distributed_by_scoring_run;

    -- The work of a scoring run: key ranges of the input, each claimed, leased and fenced like an
    -- evaluation pair. A finished chunk keeps the token that finished it (a finish whose commit
    -- outcome was unknown is resolved by it); error says why a chunk failed or which rows it skipped.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.scoring_chunks (
        scoring_run_id    bigint NOT NULL,
        chunk_no          integer NOT NULL,
        low_key           bigint NOT NULL,
        high_key          bigint NOT NULL,
        planned_rows      integer NOT NULL,
        clean             boolean NOT NULL DEFAULT false,
        status            text NOT NULL DEFAULT ''pending''
                          CHECK (status IN (''pending'', ''running'', ''done'', ''failed'')),
        attempt           integer NOT NULL DEFAULT 0,
        lease_owner       text,
        lease_token       text,
        lease_expires_at  timestamptz,
        rows_scored       integer,
        rows_skipped      integer,
        error             text,
        updated_at        timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scoring_run_id, chunk_no)
    )' || distributed_by_scoring_run;

    -- Plain (non-unique) indexes; CREATE INDEX IF NOT EXISTS does not exist on Greenplum 6.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes
                   WHERE schemaname = 'ckpt_eval' AND indexname = 'checkpoints_checkpoint_id_idx') THEN
        EXECUTE 'CREATE INDEX checkpoints_checkpoint_id_idx ON ckpt_eval.checkpoints (checkpoint_id)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes
                   WHERE schemaname = 'ckpt_eval' AND indexname = 'evaluation_runs_checkpoint_idx') THEN
        EXECUTE 'CREATE INDEX evaluation_runs_checkpoint_idx ON ckpt_eval.evaluation_runs (checkpoint_id, finished_at)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes
                   WHERE schemaname = 'ckpt_eval' AND indexname = 'evaluations_dataset_idx') THEN
        EXECUTE 'CREATE INDEX evaluations_dataset_idx ON ckpt_eval.evaluations (dataset)';
    END IF;

    -- Version 3: each run records the package (and version) that provided its architecture.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                   WHERE attrelid = 'ckpt_eval.evaluation_runs'::regclass AND attname = 'arch_package'
                     AND NOT attisdropped) THEN
        EXECUTE 'ALTER TABLE ckpt_eval.evaluation_runs ADD COLUMN arch_package text';
        EXECUTE 'ALTER TABLE ckpt_eval.evaluation_runs ADD COLUMN arch_version text';
    END IF;
    -- Version 3: a checkpoint may be registered for several datasets (ckpt_eval.evaluations); its own
    -- dataset column keeps the one it was registered with, so rows inserted the version-2 way still work.
    EXECUTE 'ALTER TABLE ckpt_eval.checkpoints ALTER COLUMN dataset DROP NOT NULL';

    -- Version 5: champions and gates. A promotion makes a checkpoint its dataset's champion; the
    -- latest promotion of a dataset is the current one (ckpt_eval.current_champions), the earlier ones
    -- are its history. Nothing is ever updated or deleted.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.champions (
        promotion_id     bigserial PRIMARY KEY,
        dataset          text NOT NULL,
        checkpoint_name  text NOT NULL,
        checkpoint_id    bigint NOT NULL,
        promoted_by      text NOT NULL CHECK (length(promoted_by) BETWEEN 1 AND 300),
        promoted_at      timestamptz NOT NULL DEFAULT now(),
        reason           text CHECK (length(reason) <= 2000)
    )' || distributed_by_promotion;
    -- A gate: the rules (JSON, see gates.py) of one checkpoint or of one dataset; the latest gate of a
    -- scope is the one in force, the earlier ones its history.
    EXECUTE 'CREATE TABLE IF NOT EXISTS ckpt_eval.gates (
        gate_id          bigserial PRIMARY KEY,
        checkpoint_name  text,
        dataset          text,
        rules            text NOT NULL CHECK (length(rules) <= 20000),
        created_by       text NOT NULL CHECK (length(created_by) BETWEEN 1 AND 300),
        created_at       timestamptz NOT NULL DEFAULT now(),
        CHECK ((checkpoint_name IS NULL) <> (dataset IS NULL))
    )' || distributed_by_gate;
    -- Version 5: a run records every gate rule with the values compared (JSON), why change rules were
    -- skipped, and a binary task's ROC and precision-recall curves (JSON, at most 201 points each).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                   WHERE attrelid = 'ckpt_eval.evaluation_runs'::regclass AND attname = 'gate_results'
                     AND NOT attisdropped) THEN
        EXECUTE 'ALTER TABLE ckpt_eval.evaluation_runs ADD COLUMN gate_results text';
        EXECUTE 'ALTER TABLE ckpt_eval.evaluation_runs ADD COLUMN gate_note text';
        EXECUTE 'ALTER TABLE ckpt_eval.evaluation_runs ADD COLUMN curves text';
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
CREATE OR REPLACE FUNCTION ckpt_eval.next_scoring_run_id() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog
    AS $body$ SELECT nextval('ckpt_eval.scoring_runs_scoring_run_id_seq'::regclass) $body$;
CREATE OR REPLACE FUNCTION ckpt_eval.next_promotion_id() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog
    AS $body$ SELECT nextval('ckpt_eval.champions_promotion_id_seq'::regclass) $body$;
CREATE OR REPLACE FUNCTION ckpt_eval.next_gate_id() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog
    AS $body$ SELECT nextval('ckpt_eval.gates_gate_id_seq'::regclass) $body$;
ALTER TABLE ckpt_eval.champions ALTER COLUMN promotion_id SET DEFAULT ckpt_eval.next_promotion_id();
ALTER TABLE ckpt_eval.gates ALTER COLUMN gate_id SET DEFAULT ckpt_eval.next_gate_id();
ALTER TABLE ckpt_eval.checkpoints ALTER COLUMN checkpoint_id SET DEFAULT ckpt_eval.next_checkpoint_id();
ALTER TABLE ckpt_eval.scoring_runs ALTER COLUMN scoring_run_id SET DEFAULT ckpt_eval.next_scoring_run_id();
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

-- The datasets every version-2 deployment knew, and the embedded tabular demo.
INSERT INTO ckpt_eval.datasets (name, kind, source, description)
SELECT 'fashion_mnist', 'idx', 'fashion_mnist', 'FashionMNIST test split (IDX files in the data directory)'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.datasets WHERE name = 'fashion_mnist');
INSERT INTO ckpt_eval.datasets (name, kind, source, description)
SELECT 'mnist', 'idx', 'mnist', 'MNIST test split (IDX files in the data directory)'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.datasets WHERE name = 'mnist');
INSERT INTO ckpt_eval.datasets (name, kind, description)
SELECT 'digits', 'digits', 'scikit-learn''s embedded 8x8 digits, test split'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.datasets WHERE name = 'digits');
INSERT INTO ckpt_eval.datasets (name, kind, class_names, description)
SELECT 'breast_cancer', 'breast_cancer', ARRAY['malignant', 'benign'],
       'scikit-learn''s embedded breast cancer data (30 features, 2 classes), test split'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.datasets WHERE name = 'breast_cancer');

-- Migration to version 3: every checkpoint becomes the pair (checkpoint, its dataset), keeping its job
-- state; a lease held by a worker of the old version is handed back (the deployment stops workers
-- first). The pair remembers the dataset version of its latest run, so nothing is evaluated again
-- unless its data changed. The job adopts rows inserted the version-2 way the same way on every run.
INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id, status, attempt, requested_at,
                                   updated_at, dataset_fingerprint)
SELECT c.name, c.dataset, c.checkpoint_id,
       CASE WHEN c.status = 'running' THEN 'pending' ELSE c.status END,
       c.attempt, c.requested_at, c.updated_at, r.dataset_sha256
FROM ckpt_eval.checkpoints c
LEFT JOIN (
    SELECT runs.checkpoint_id, runs.dataset, runs.dataset_sha256,
           row_number() OVER (PARTITION BY runs.checkpoint_id, runs.dataset
                              ORDER BY runs.finished_at DESC, runs.run_id DESC) AS recency
    FROM ckpt_eval.evaluation_runs runs
) r ON r.checkpoint_id = c.checkpoint_id AND r.dataset = c.dataset AND r.recency = 1
WHERE c.dataset IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluations e WHERE e.checkpoint_name = c.name AND e.dataset = c.dataset);

-- The contract for analysts: one row per evaluated (checkpoint, dataset) pair, its latest run and
-- headline metrics (before version 3 a checkpoint had exactly one dataset, so one row per checkpoint).
CREATE OR REPLACE VIEW ckpt_eval.latest_evaluations AS
SELECT c.checkpoint_id,
       c.name AS checkpoint_name,
       c.arch,
       r.dataset,
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
           row_number() OVER (PARTITION BY runs.checkpoint_id, runs.dataset
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

-- Version 5: each dataset's current champion (its latest promotion).
CREATE OR REPLACE VIEW ckpt_eval.current_champions AS
SELECT promotion_id, dataset, checkpoint_name, checkpoint_id, promoted_by, promoted_at, reason
FROM (SELECT p.*, row_number() OVER (PARTITION BY p.dataset ORDER BY p.promotion_id DESC) AS recency
      FROM ckpt_eval.champions p) ranked
WHERE recency = 1;

-- Version 4: a scoring job and its output table, made by the schema owner (the deployment calls this
-- for each job of its configuration; an operator may call it with psql). Safe to call again: the
-- table and view are made when missing, the job's definition is updated (never its active run). The
-- input dataset may be registered later (ckpt-eval dataset add); `ckpt-eval score` checks it.
-- The output holds one row per (row key, scoring run): exactly-once is enforced by the chunk fence
-- (the transaction that writes a chunk's rows first updates its chunk, fenced by the lease token).
-- Each row holds only what cannot be derived, and the table has no index, because the server's work
-- per field and per index entry is what a COPY of predictions costs: no class name (the run's
-- class_names has it), no checkpoint name, for two classes only the positive class's probability; the
-- _latest view shows all of them. Planning a run joins the input's keys against the output's by hash,
-- and a chunk reads its key range without an anti-join unless other rows lie within it (sql.py). The
-- table is distributed by the row key on Greenplum, so the join back to the input is co-located. One job
-- per (output table, checkpoint): two jobs writing the same checkpoint's predictions into one table
-- would each score the other's rows.
CREATE OR REPLACE FUNCTION ckpt_eval.create_scoring_job(
    job_name text, checkpoint text, input_dataset text, key_column text,
    output_schema text, output_table text, chunk_rows integer DEFAULT 50000, allow_ungated boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $body$
DECLARE
    is_greenplum boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pg_catalog' AND c.relname = 'gp_segment_configuration');
BEGIN
    IF length(output_table) > 56 THEN
        RAISE EXCEPTION 'output table name % is longer than 56 characters', output_table;
    END IF;
    IF EXISTS (SELECT 1 FROM ckpt_eval.scoring_jobs j
               WHERE j.name <> job_name AND j.checkpoint_name = checkpoint
                 AND j.output_schema = create_scoring_job.output_schema
                 AND j.output_table = create_scoring_job.output_table) THEN
        RAISE EXCEPTION 'another scoring job already writes checkpoint % into %.%', checkpoint, output_schema,
            output_table;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I (
        row_key               bigint NOT NULL,
        scoring_run_id        bigint NOT NULL,
        checkpoint_id         bigint NOT NULL,
        predicted_index       integer NOT NULL,
        probabilities         double precision[],
        positive_probability  double precision,
        scored_at             timestamptz NOT NULL
    )', output_schema, output_table) || CASE WHEN is_greenplum THEN ' DISTRIBUTED BY (row_key)' ELSE '' END;
    -- The latest prediction of each (row, checkpoint): what analysts join to the input.
    EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS
        SELECT ranked.row_key, ranked.checkpoint_id, c.name AS checkpoint_name, ranked.scoring_run_id,
               ranked.predicted_index, r.class_names[ranked.predicted_index + 1] AS predicted_class,
               coalesce(ranked.probabilities,
                        ARRAY[1 - ranked.positive_probability, ranked.positive_probability]) AS probabilities,
               ranked.positive_probability, ranked.scored_at
        FROM (SELECT p.*, row_number() OVER (PARTITION BY p.row_key, p.checkpoint_id
                                             ORDER BY p.scoring_run_id DESC) AS recency
              FROM %I.%I p) ranked
        JOIN ckpt_eval.scoring_runs r ON r.scoring_run_id = ranked.scoring_run_id
        LEFT JOIN ckpt_eval.checkpoints c ON c.checkpoint_id = ranked.checkpoint_id
        WHERE ranked.recency = 1', output_schema, output_table || '_latest', output_schema, output_table);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ckpt_eval_app', output_schema);
    EXECUTE format('GRANT SELECT, INSERT ON %I.%I TO ckpt_eval_app', output_schema, output_table);
    EXECUTE format('GRANT SELECT ON %I.%I TO ckpt_eval_app', output_schema, output_table || '_latest');
    UPDATE ckpt_eval.scoring_jobs j
    SET checkpoint_name = checkpoint, input_dataset = create_scoring_job.input_dataset,
        key_column = create_scoring_job.key_column, output_schema = create_scoring_job.output_schema,
        output_table = create_scoring_job.output_table, chunk_rows = create_scoring_job.chunk_rows,
        allow_ungated = create_scoring_job.allow_ungated
    WHERE j.name = job_name;
    IF NOT FOUND THEN
        INSERT INTO ckpt_eval.scoring_jobs (name, checkpoint_name, input_dataset, key_column, output_schema,
                                            output_table, chunk_rows, allow_ungated)
        VALUES (job_name, checkpoint, input_dataset, key_column, output_schema, output_table, chunk_rows,
                allow_ungated);
    END IF;
END
$body$;
REVOKE ALL ON FUNCTION ckpt_eval.create_scoring_job(text, text, text, text, text, text, integer, boolean) FROM PUBLIC;

-- Privileges: read the registry, claim and finish jobs, append runs and metrics. Nothing else:
-- no DDL, no DELETE, no UPDATE of results or of a checkpoint's path, hash or gate.
GRANT USAGE ON SCHEMA ckpt_eval TO ckpt_eval_app;
GRANT SELECT ON ckpt_eval.checkpoints, ckpt_eval.evaluation_runs, ckpt_eval.evaluation_metrics,
                ckpt_eval.latest_evaluations, ckpt_eval.schema_version TO ckpt_eval_app;
GRANT INSERT (name, path, arch, dataset, sha256, min_accuracy, min_f1_macro)
    ON ckpt_eval.checkpoints TO ckpt_eval_app;
-- Version 3: the job state lives in ckpt_eval.evaluations; the app role no longer updates checkpoints
-- (a worker of version 2 left running after the upgrade stops at once with a privilege error).
REVOKE UPDATE ON ckpt_eval.checkpoints FROM ckpt_eval_app;
GRANT SELECT ON ckpt_eval.datasets, ckpt_eval.evaluations TO ckpt_eval_app;
GRANT INSERT (name, kind, source, split, feature_columns, label_column, class_names, description)
    ON ckpt_eval.datasets TO ckpt_eval_app;
GRANT UPDATE (fingerprint, fingerprinted_at) ON ckpt_eval.datasets TO ckpt_eval_app;
GRANT INSERT (checkpoint_name, dataset, checkpoint_id, dataset_fingerprint) ON ckpt_eval.evaluations TO ckpt_eval_app;
GRANT UPDATE (status, attempt, lease_owner, lease_token, lease_expires_at, requested_at, updated_at,
              dataset_fingerprint)
    ON ckpt_eval.evaluations TO ckpt_eval_app;
-- Runs: every column but the key, which only the owner's function assigns (an app-chosen run_id
-- could take an id the job is about to be given).
REVOKE INSERT ON ckpt_eval.evaluation_runs FROM ckpt_eval_app;
GRANT INSERT (checkpoint_id, checkpoint_name, attempt, dataset, dataset_sha256, checkpoint_sha256, status, verdict,
              verdict_reasons, error, started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid,
              app_version, lease_token, min_accuracy, min_f1_macro, confusion_matrix, arch_package, arch_version,
              gate_results, gate_note, curves)
    ON ckpt_eval.evaluation_runs TO ckpt_eval_app;
GRANT INSERT ON ckpt_eval.evaluation_metrics TO ckpt_eval_app;
-- Version 4, scoring: read the jobs, share a job's run (compare-and-set of active_run), record runs
-- (keys from the owner's function), claim, extend and finish chunks. Output tables are granted by
-- ckpt_eval.create_scoring_job (SELECT and INSERT only), inputs by the dataset sources' grants.
GRANT SELECT ON ckpt_eval.scoring_jobs, ckpt_eval.scoring_runs, ckpt_eval.scoring_chunks TO ckpt_eval_app;
GRANT UPDATE (active_run) ON ckpt_eval.scoring_jobs TO ckpt_eval_app;
GRANT INSERT (job_name, checkpoint_id, checkpoint_name, checkpoint_sha256, class_names, rescore, status, planned_rows,
              chunks, started_by, app_version, started_at)
    ON ckpt_eval.scoring_runs TO ckpt_eval_app;
GRANT UPDATE (status, rows_scored, rows_skipped, failed_chunks, finished_at) ON ckpt_eval.scoring_runs TO ckpt_eval_app;
GRANT INSERT (scoring_run_id, chunk_no, low_key, high_key, planned_rows, clean, updated_at)
    ON ckpt_eval.scoring_chunks TO ckpt_eval_app;
GRANT UPDATE (status, attempt, lease_owner, lease_token, lease_expires_at, rows_scored, rows_skipped, error, updated_at)
    ON ckpt_eval.scoring_chunks TO ckpt_eval_app;
-- Version 5: read champions and gates; set gates (like registering a checkpoint with its thresholds).
-- Promoting is the owner's, unless the deployment lets the app role (greenplum_app_may_promote grants
-- INSERT on ckpt_eval.champions; this file never does, so re-applying it keeps the deployment's choice).
GRANT SELECT ON ckpt_eval.champions, ckpt_eval.current_champions, ckpt_eval.gates TO ckpt_eval_app;
GRANT INSERT (checkpoint_name, dataset, rules, created_by) ON ckpt_eval.gates TO ckpt_eval_app;
-- Keys only through the owner's functions: no privilege on any sequence (version 1 granted USAGE).
REVOKE ALL ON SEQUENCE ckpt_eval.checkpoints_checkpoint_id_seq, ckpt_eval.evaluation_runs_run_id_seq,
    ckpt_eval.scoring_runs_scoring_run_id_seq, ckpt_eval.champions_promotion_id_seq,
    ckpt_eval.gates_gate_id_seq FROM ckpt_eval_app, PUBLIC;
REVOKE ALL ON FUNCTION ckpt_eval.next_checkpoint_id(), ckpt_eval.next_run_id(), ckpt_eval.next_scoring_run_id(),
    ckpt_eval.next_promotion_id(), ckpt_eval.next_gate_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ckpt_eval.next_checkpoint_id(), ckpt_eval.next_run_id(), ckpt_eval.next_scoring_run_id(),
    ckpt_eval.next_promotion_id(), ckpt_eval.next_gate_id() TO ckpt_eval_app;

-- Demo checkpoints shipped in checkpoints/ (trained by `ckpt-eval train` on digits, fixed seeds).
INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256)
SELECT 'digits-mlp-good', 'digits-mlp-good.pt', 'digits_mlp', 'digits',
       '32e2d7731ab5e65432c20863b8e43f0bfc30b365d8d0c3d82f965eac3c4506b3'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.checkpoints WHERE name = 'digits-mlp-good');

INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256)
SELECT 'digits-mlp-undertrained', 'digits-mlp-undertrained.pt', 'digits_mlp', 'digits',
       '7b055463733e6094f852a621f2ee9658c0f29c4dd45352623eed7bec25acc638'
WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.checkpoints WHERE name = 'digits-mlp-undertrained');

INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id)
SELECT c.name, c.dataset, c.checkpoint_id FROM ckpt_eval.checkpoints c
WHERE c.name IN ('digits-mlp-good', 'digits-mlp-undertrained') AND c.dataset IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ckpt_eval.evaluations e WHERE e.checkpoint_name = c.name AND e.dataset = c.dataset);

INSERT INTO ckpt_eval.schema_version (version)
SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 1);
INSERT INTO ckpt_eval.schema_version (version)
SELECT 2 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 2);
INSERT INTO ckpt_eval.schema_version (version)
SELECT 3 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 3);
INSERT INTO ckpt_eval.schema_version (version)
SELECT 4 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 4);
INSERT INTO ckpt_eval.schema_version (version)
SELECT 5 WHERE NOT EXISTS (SELECT 1 FROM ckpt_eval.schema_version WHERE version = 5);

RESET ROLE;
