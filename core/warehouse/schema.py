"""Versioned schema of the warehouse.

Each migration runs once, in order; `schema_migrations` records which ran. Features append
migrations with new numbers and never edit one that has shipped.

A migration whose statements duckdb 1.5 cannot commit together is split by `-- step` lines into
steps, each its own transaction, the last one recording the migration; every step must be safe
to run again after a crash between steps (`IF NOT EXISTS`, `IF EXISTS`, idempotent updates).
On a table holding rows, duckdb 1.5.5 fails the commit ("another transaction has altered this
table") of a transaction that adds a column WITH a default and then alters or updates that table
again: end a step after such an ADD COLUMN.

The file backend applies them in its first write transaction of a process. The lake (DuckLake)
has no PRIMARY KEY, UNIQUE, fixed-size ARRAY or list DEFAULT: a new lake is created in one
snapshot from `lake_baseline()`, the tables these migrations produce (run on an in-memory
DuckDB) without those constraints, with every migration of LAKE_BASELINE recorded as applied.
Migrations not in LAKE_BASELINE run as written on both backends, so they must use only
what DuckLake supports (plain columns, NOT NULL, scalar defaults; upserts are MERGE INTO).
"""

from __future__ import annotations

import contextlib
import re

import duckdb

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "ingestion tables",
        """
        CREATE TABLE drops (
            drop_id           VARCHAR PRIMARY KEY,
            kind              VARCHAR NOT NULL,      -- 'folder' or 'loose'
            first_ingested_at TIMESTAMPTZ NOT NULL,
            last_ingested_at  TIMESTAMPTZ NOT NULL,
            files_seen        INTEGER NOT NULL,      -- at the last ingestion
            files_ingested    INTEGER NOT NULL,      -- image_files rows of the drop
            files_rejected    INTEGER NOT NULL,      -- rejected_files rows of the drop
            images_new        INTEGER NOT NULL       -- images this drop was the first to bring
        );

        CREATE TABLE images (
            image_id          VARCHAR PRIMARY KEY,   -- SHA-256 of the file bytes, hex
            byte_size         BIGINT NOT NULL,
            format            VARCHAR NOT NULL,      -- Pillow's format name: JPEG, PNG, ...
            mode              VARCHAR NOT NULL,      -- the file's own mode; models get RGB
            width             INTEGER NOT NULL,      -- after EXIF orientation
            height            INTEGER NOT NULL,
            exif_orientation  SMALLINT,
            frame_count       INTEGER NOT NULL,      -- > 1: animated, the first frame is used
            captured_at       TIMESTAMP,             -- EXIF DateTimeOriginal, camera local time
            notes             VARCHAR[] NOT NULL,    -- what decoding changed or chose
            first_drop_id     VARCHAR NOT NULL,
            first_path        VARCHAR NOT NULL,      -- relative to the drop root
            ingested_at       TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE image_files (
            drop_id           VARCHAR NOT NULL,
            path              VARCHAR NOT NULL,      -- relative to the drop root
            image_id          VARCHAR NOT NULL,
            is_duplicate      BOOLEAN NOT NULL,      -- the bytes were already known
            byte_size         BIGINT NOT NULL,
            mtime_ns          BIGINT NOT NULL,
            ingested_at       TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (drop_id, path)
        );

        CREATE TABLE rejected_files (
            drop_id           VARCHAR NOT NULL,
            path              VARCHAR NOT NULL,      -- relative to the drop root
            reason            VARCHAR NOT NULL,      -- see core.ingest.reasons.RejectReason
            error             VARCHAR NOT NULL,
            byte_size         BIGINT,
            mtime_ns          BIGINT,
            sha256            VARCHAR,
            rejected_at       TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (drop_id, path)
        );
        """,
    ),
    (
        2,
        "clip embeddings and zero-shot labels",
        """
        -- Embeddings live in one table per dimension, clip_embeddings_d<D> (embedding FLOAT[D]),
        -- created by the writer when a model of a new dimension first writes; this view unions
        -- them with the vector as a plain FLOAT[] list (see docs/embeddings.md).
        CREATE VIEW clip_embeddings AS
        SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS model_id, NULL::VARCHAR AS kind,
               NULL::INTEGER AS dim, NULL::FLOAT[] AS embedding, NULL::TIMESTAMPTZ AS created_at
        WHERE false;

        CREATE TABLE clip_zero_shot (
            image_id          VARCHAR NOT NULL,
            model_id          VARCHAR NOT NULL,
            label_set         VARCHAR NOT NULL,      -- see core.tasks.label_sets
            label_set_fingerprint VARCHAR NOT NULL,  -- labels, phrases and templates used
            top_label         VARCHAR NOT NULL,
            top_probability   DOUBLE NOT NULL,
            probabilities     MAP(VARCHAR, DOUBLE) NOT NULL,  -- every label; sums to 1
            created_at        TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (image_id, model_id, label_set)
        );
        """,
    ),
    (
        3,
        "vlm extractions",
        """
        -- One row per image, task version and model. Typed task tables (task_<name>,
        -- task_<name>__<field>) are derived from the task definitions and created by the writer.
        CREATE TABLE vlm_extractions (
            image_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,
            task_fingerprint  VARCHAR NOT NULL,      -- hash of instruction + schema + token budget
            model_id          VARCHAR NOT NULL,
            status            VARCHAR NOT NULL,      -- 'ok', 'invalid', 'truncated', 'rejected', 'error'
            raw_text          VARCHAR,               -- the model's output as returned
            parsed_json       JSON,                  -- validated output, `ok` rows only
            error             VARCHAR,
            latency_ms        DOUBLE,                -- per image, including retries
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            cached_tokens     INTEGER,               -- prompt tokens served from the prefix cache
            attempts          INTEGER NOT NULL,
            drop_id           VARCHAR NOT NULL,      -- the partition that extracted it
            created_at        TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (image_id, task, task_fingerprint, model_id)
        );
        """,
    ),
    (
        4,
        "quality results and evaluations",
        """
        CREATE TABLE quality_results (
            run_id            VARCHAR NOT NULL,      -- Dagster run id (or 'manual')
            asset             VARCHAR NOT NULL,      -- asset key, '/'-joined
            check_name        VARCHAR NOT NULL,
            partition         VARCHAR NOT NULL,      -- drop id; '' when unpartitioned
            passed            BOOLEAN NOT NULL,
            severity          VARCHAR NOT NULL,      -- 'ERROR' or 'WARN': what a failure means
            value             DOUBLE,                -- the measured rate / count / statistic
            threshold         DOUBLE,                -- the bound it was held against
            details           JSON NOT NULL,         -- counts, offending rows sample, tables
            evaluated_at      TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (run_id, asset, check_name, partition)
        );

        CREATE TABLE evaluations (
            run_id            VARCHAR NOT NULL,
            model_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,      -- VLM task name, or the zero-shot label set
            field             VARCHAR NOT NULL,      -- labelled field of the labeling spec
            source            VARCHAR NOT NULL,      -- 'clip_zero_shot', 'vlm' or 'knn'
            metric            VARCHAR NOT NULL,      -- accuracy, macro_f1, adjacent_accuracy, ...
            value             DOUBLE,
            n                 INTEGER NOT NULL,      -- labelled images the metric is over
            details           JSON NOT NULL,         -- confusion matrix, per-class counts, notes
            evaluated_at      TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (run_id, model_id, task, field, source, metric)
        );
        """,
    ),
    (
        111,
        "limits recorded on rejections",
        """
        -- The limits in force when the row was written ('max_bytes=N;max_pixels=N'): a
        -- `too_large` verdict is re-evaluated when the run's limits differ.
        ALTER TABLE rejected_files ADD COLUMN limits VARCHAR;
        """,
    ),
    (
        112,
        "vanished and changed files, clip failures",
        """
        -- Set when the latest ingestion (or a model stage) found the file gone; the row is kept
        -- (the image was in the drop) and cleared when the file is seen again.
        ALTER TABLE image_files ADD COLUMN vanished_at TIMESTAMPTZ;
        ALTER TABLE rejected_files ADD COLUMN vanished_at TIMESTAMPTZ;
        -- Set when a model stage read bytes at this path that no longer hash to image_id (or
        -- found no regular file there): the next ingestion of the drop re-hashes the file.
        ALTER TABLE image_files ADD COLUMN changed_at TIMESTAMPTZ;
        -- Rows of the drop whose file is gone; files_seen = files_ingested + files_rejected
        -- counts only files present at the last ingestion.
        ALTER TABLE drops ADD COLUMN files_vanished INTEGER DEFAULT 0;

        -- Images CLIP could not read: no copy still exists with bytes that hash to image_id.
        -- Not retried until an ingestion records a usable copy again.
        CREATE TABLE clip_failures (
            image_id          VARCHAR NOT NULL,
            model_id          VARCHAR NOT NULL,
            status            VARCHAR NOT NULL,      -- 'unavailable' or 'changed_since_ingest'
            error             VARCHAR NOT NULL,
            drop_id           VARCHAR NOT NULL,      -- the partition that tried
            created_at        TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (image_id, model_id)
        );
        """,
    ),
    # Issue 14 (review loop). Numbered 1401+ so features landing in parallel cannot collide.
    (
        1401,
        "review queue and human labels",
        """
        -- The images of a drop whose labels most likely are wrong, best candidates first;
        -- rewritten whole per drop by the review_queue asset (see core/review/queue.py).
        CREATE TABLE review_queue (
            drop_id           VARCHAR NOT NULL,
            rank              INTEGER NOT NULL,      -- 1 = review first
            image_id          VARCHAR NOT NULL,
            path              VARCHAR NOT NULL,      -- relative to the drop root
            score             DOUBLE NOT NULL,       -- weighted sum of the reasons below
            reasons           VARCHAR[] NOT NULL,    -- names of the reasons that hold
            clip_vlm_disagree BOOLEAN NOT NULL,
            disagree_fields   VARCHAR[] NOT NULL,    -- e.g. ['<field>: clip=<label> vlm=<label>']
            zero_shot_margin  DOUBLE,                -- smallest top-1 minus top-2 probability
            low_margin        BOOLEAN NOT NULL,
            extraction_failed BOOLEAN NOT NULL,
            failed_tasks      VARCHAR[] NOT NULL,    -- e.g. ['<task>: truncated']
            near_duplicate_conflict BOOLEAN NOT NULL,
            near_duplicate_of VARCHAR,               -- image_id of the conflicting near-duplicate
            conflict_fields   VARCHAR[] NOT NULL,
            people_count_mismatch BOOLEAN NOT NULL,
            people_listed     INTEGER,               -- entities in the listing task (2113 drops it)
            clip_model_id     VARCHAR,
            vlm_model_id      VARCHAR,
            created_at        TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (drop_id, image_id)
        );

        -- Corrections and confirmations from people (Label Studio exports, core/review).
        CREATE TABLE human_labels (
            image_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,      -- extraction task of the labeling spec
            field             VARCHAR NOT NULL,      -- '<field>', '<list>.count', '<list>[0].<field>'
            value             VARCHAR NOT NULL,
            reviewer          VARCHAR NOT NULL,      -- Label Studio user (e-mail or user id)
            reviewed_at       TIMESTAMPTZ NOT NULL,  -- the annotation's last update
            source_file       VARCHAR NOT NULL,      -- the export file it was imported from
            annotation_id     BIGINT,
            imported_at       TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (image_id, task, field, reviewer)
        );
        """,
    ),
    (
        1402,
        "evaluations keyed by labelled set",
        """
        -- Evaluations against several labelled sets in one run (the configured one and
        -- human_labels): the labelled set joins the key. DuckDB cannot alter a primary key,
        -- so the table is rebuilt with its rows.
        CREATE TABLE evaluations_keyed (
            run_id            VARCHAR NOT NULL,
            model_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,
            field             VARCHAR NOT NULL,
            source            VARCHAR NOT NULL,
            metric            VARCHAR NOT NULL,
            value             DOUBLE,
            n                 INTEGER NOT NULL,
            details           JSON NOT NULL,
            evaluated_at      TIMESTAMPTZ NOT NULL,
            labelled_set      VARCHAR NOT NULL,      -- the configured set's path, or 'human_labels'
            PRIMARY KEY (run_id, labelled_set, model_id, task, field, source, metric)
        );
        INSERT INTO evaluations_keyed
        SELECT run_id, model_id, task, field, source, metric, value, n, details, evaluated_at,
               coalesce(json_extract_string(details, '$.labelled_source'), 'configured')
        FROM evaluations;
        DROP TABLE evaluations;
        ALTER TABLE evaluations_keyed RENAME TO evaluations;
        """,
    ),
    # Issue 12 item 5 (incremental evaluation). It rebuilds the table 1402 keyed by labelled set,
    # so it must sort after it: 1451 (later issue-14 migrations stay below 1450).
    (
        1451,
        "current evaluations, their input fingerprints, label agreement per drop",
        """
        -- `evaluations` holds the current result of each (labelled set, model, task, field,
        -- source): a run rewrites only the results whose inputs changed (delete-then-insert per
        -- key); run_id says which run computed it. Rebuilt because DuckDB cannot alter a key;
        -- the newest row of each key is kept.
        CREATE TABLE evaluations_current (
            labelled_set      VARCHAR NOT NULL,      -- the configured set's path, or 'human_labels'
            model_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,      -- VLM task name, or the zero-shot label set
            field             VARCHAR NOT NULL,      -- labelled field of the labeling spec
            source            VARCHAR NOT NULL,      -- 'clip_zero_shot', 'vlm' or 'knn'
            metric            VARCHAR NOT NULL,      -- accuracy, macro_f1, top1_accuracy, ...
            value             DOUBLE,
            n                 INTEGER NOT NULL,      -- labelled images the metric is over
            details           JSON NOT NULL,         -- confusion matrix, per-class counts, notes
            run_id            VARCHAR NOT NULL,      -- the Dagster run that computed it
            evaluated_at      TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (labelled_set, model_id, task, field, source, metric)
        );
        INSERT INTO evaluations_current
        SELECT labelled_set, model_id, task, field, source, metric, value, n, details, run_id,
               evaluated_at
        FROM evaluations
        QUALIFY row_number() OVER (
            PARTITION BY labelled_set, model_id, task, field, source, metric
            ORDER BY evaluated_at DESC, run_id DESC) = 1;
        DROP TABLE evaluations;
        ALTER TABLE evaluations_current RENAME TO evaluations;

        -- What each evaluated combination was computed from: a hash of the labels and of the
        -- prediction rows it read. A run evaluates a combination only when the hash differs.
        CREATE TABLE evaluation_inputs (
            labelled_set      VARCHAR NOT NULL,
            field             VARCHAR NOT NULL,
            predictor         VARCHAR NOT NULL,      -- 'zero_shot', 'vlm' or 'embedding_knn'
            model_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,
            fingerprint       VARCHAR NOT NULL,
            images            INTEGER NOT NULL,      -- labelled images with a prediction
            run_id            VARCHAR NOT NULL,
            evaluated_at      TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (labelled_set, field, predictor, model_id, task)
        );

        -- CLIP zero-shot vs VLM agreement per drop and field (the label_agreement asset),
        -- rewritten whole for a drop on each materialization.
        CREATE TABLE label_agreement (
            drop_id           VARCHAR NOT NULL,
            field             VARCHAR NOT NULL,      -- a field with CLIP-vs-VLM agreement
            clip_model_id     VARCHAR,               -- NULL: no CLIP labels to compare
            vlm_model_id      VARCHAR,               -- NULL: no VLM labels to compare
            images_compared   INTEGER NOT NULL,
            agreed            INTEGER NOT NULL,
            agreement_rate    DOUBLE,                -- agreed / images_compared; NULL when 0
            confusion         JSON,                  -- rows: CLIP's label, columns: the VLM's
            run_id            VARCHAR NOT NULL,
            evaluated_at      TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (drop_id, field)
        );
        """,
    ),
    # Issue 21 item 12. Numbered 2112 so migrations of other issue-21 items cannot collide.
    (
        2112,
        "the real name of a file beside its escaped key",
        """
        -- The path relative to the drop root as the OS spells it (bytes), when it differs from
        -- `path`: a name with a backslash or a byte that is not UTF-8, whose `path` is escaped
        -- (core/ingest/scan.py display_path). Model stages open the file by this name. NULL for
        -- every plain name, whose `path` is its real name.
        ALTER TABLE image_files ADD COLUMN os_path BLOB;
        ALTER TABLE rejected_files ADD COLUMN os_path BLOB;
        """,
    ),
    # Issue 18 (labeling spec): the queue's consistency signal follows the spec's `consistency:`
    # rules instead of one built-in rule; rows written before keep their meaning: the old
    # signal's name becomes their violation.
    (
        2113,
        "review queue consistency rules from the labeling spec",
        """
        -- In steps (see STEP and the module docstring): duckdb 1.5 cannot commit an UPDATE
        -- of a column added with a default in the same transaction. Each step is safe to rerun.
        ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS consistency_violation BOOLEAN DEFAULT false;
        -- step
        ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS consistency_violations VARCHAR[] DEFAULT [];
        -- step
        UPDATE review_queue SET
            consistency_violation = people_count_mismatch,
            consistency_violations = CASE WHEN people_count_mismatch
                THEN ['people_count_mismatch'] ELSE [] END,
            reasons = list_transform(reasons, lambda r: CASE WHEN r = 'people_count_mismatch'
                THEN 'consistency_violation' ELSE r END);
        -- step
        ALTER TABLE review_queue DROP COLUMN IF EXISTS people_count_mismatch;
        ALTER TABLE review_queue DROP COLUMN IF EXISTS people_listed;
        ALTER TABLE review_queue ALTER COLUMN consistency_violation SET NOT NULL;
        ALTER TABLE review_queue ALTER COLUMN consistency_violations SET NOT NULL;
        """,
    ),
    # Issue 18 (labeling spec): multi-label fields in zero-shot and agreement.
    (
        2114,
        "multi-label zero-shot sets and agreement",
        """
        -- A multi-label label set's decided values (LabelSet.decide: top_k, threshold, or above
        -- the uniform share), in label order; NULL for a single-choice label set.
        ALTER TABLE clip_zero_shot ADD COLUMN labels VARCHAR[];
        -- How agreement_rate is measured: 'exact' (single choice: same value) or 'jaccard'
        -- (multi-label: mean Jaccard of the two sets; `agreed` counts identical sets), and per
        -- value of a multi-label field: images where both, only CLIP or only the VLM chose it.
        ALTER TABLE label_agreement ADD COLUMN measure VARCHAR DEFAULT 'exact';
        ALTER TABLE label_agreement ADD COLUMN per_value JSON;
        """,
    ),
    # Issue 22 item 4: per-field confidence from the answer tokens' logprobs. A child table, not
    # a column per field: see docs/extraction.md ("Per-field confidence"). No primary key (the
    # lake has none); written delete-then-insert with its `vlm_extractions` rows.
    (
        2201,
        "per-field confidence of vlm answers",
        """
        CREATE TABLE vlm_field_confidence (
            image_id          VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,
            task_fingerprint  VARCHAR NOT NULL,
            model_id          VARCHAR NOT NULL,
            field             VARCHAR NOT NULL,      -- '<field>', '<list>', '<list>[0].<field>'
            confidence        DOUBLE,                -- exp(sum of the value's token logprobs);
                                                     -- NULL: the backend returned no logprobs
            created_at        TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    # Issue 22 item 4: the review queue's low_confidence signal.
    (
        2202,
        "review queue low confidence signal",
        """
        ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS min_confidence DOUBLE;
        ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS low_confidence BOOLEAN DEFAULT false;
        -- step
        ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS low_confidence_fields VARCHAR[] DEFAULT [];
        """,
    ),
    # Issue 19 (the lake): writers that insert content-addressed rows (`images`) also bump
    # their guard row in the same transaction. On DuckLake two such transactions committing at
    # once then conflict (both delete the guard's old row) and the loser replays, seeing the
    # winner's images, so two drops with the same bytes never make two `images` rows. On the
    # file the writers' lock already serialises them and the bump costs one row update.
    (
        1901,
        "write guards for content-addressed inserts",
        """
        CREATE TABLE write_guards (
            name              VARCHAR NOT NULL,      -- the table whose inserts it serialises
            bumps             BIGINT NOT NULL        -- one per committed transaction
        );
        INSERT INTO write_guards VALUES ('images', 0);
        """,
    ),
]

SCHEMA_VERSION = max(number for number, _, _ in MIGRATIONS)
STEP = re.compile(r"^\s*-- step\s*$", re.MULTILINE)  # splits a migration into transactions
# The migrations a new lake's baseline includes (all that existed when the lake backend came);
# any other migration runs on the lake as written.
LAKE_BASELINE = frozenset(
    {1, 2, 3, 4, 111, 112, 1401, 1402, 1451, 1901, 2112, 2113, 2114, 2201, 2202}
)


def applied_versions(conn: duckdb.DuckDBPyConnection) -> set[int]:
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchone()
    if not exists or exists[0] == 0:
        return set()
    return {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}


def migrate(conn: duckdb.DuckDBPyConnection, *, only: frozenset[int] | None = None) -> set[int]:
    """Apply, in order, each migration `conn`'s database has not recorded, one transaction each.

    Numbers may have gaps and a lower number may arrive after a higher one has run (features
    land in any order): every known, unrecorded migration runs, in ascending order.
    """
    applied = applied_versions(conn)
    unknown = applied - {number for number, _, _ in MIGRATIONS}
    if unknown:
        raise RuntimeError(
            f"warehouse has schema migrations {sorted(unknown)} this code does not know; "
            "upgrade the pipeline before writing to it"
        )
    if not applied:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    for number, name, ddl in sorted(MIGRATIONS):
        if number in applied or (only is not None and number not in only):
            continue
        steps = STEP.split(ddl)
        for index, step in enumerate(steps):
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(step)
                if index == len(steps) - 1:
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                        [number, name],
                    )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT ended it
                    conn.execute("ROLLBACK")
                raise
        applied.add(number)
    return applied


def _lake_default(data_type: str, default: str | None) -> str:
    """The column's DEFAULT clause, where DuckLake has one: literal scalars only."""
    if default is None or data_type.endswith("]") or "(" in default.replace("CAST(", ""):
        return ""
    return f" DEFAULT {default}"


def lake_baseline() -> list[str]:
    """CREATE statements for a new lake with the migrations of LAKE_BASELINE: the migrations' tables and views as
    an in-memory DuckDB ends up with them, minus what DuckLake lacks (keys, fixed arrays)."""
    conn = duckdb.connect()
    try:
        migrate(conn, only=LAKE_BASELINE)
        statements = []
        tables = conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY table_name"
        ).fetchall()
        for (table,) in tables:
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            body = ", ".join(
                f'"{name}" {data_type}'
                + ("" if nullable == "YES" else " NOT NULL")
                + _lake_default(data_type, default)
                for name, data_type, nullable, default in columns
            )
            statements.append(f'CREATE TABLE "{table}" ({body})')
        views = conn.execute(
            "SELECT sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
        ).fetchall()
        statements += [sql.rstrip().rstrip(";") for (sql,) in views]
        guards = conn.execute("SELECT name, bumps FROM write_guards").fetchall()
        statements += [f"INSERT INTO write_guards VALUES ('{n}', {b})" for n, b in guards]
        return statements
    finally:
        conn.close()
