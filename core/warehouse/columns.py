"""What each warehouse column means, beside the schema that creates it.

The Dagster UI shows these as column descriptions of the table assets; `table_columns` takes
the names and types from the migrations themselves (applied to an in-memory database once), so
a column a migration adds without a description here is caught by the tests.
"""

from __future__ import annotations

import re
from functools import cache

import duckdb

from core.warehouse.schema import migrate

_DROP = "drop id: the drop folder's name, the Dagster partition key"
_OS_PATH = (
    "the real name as bytes, when `path` is escaped (a backslash or a non-UTF-8 byte); NULL"
    " otherwise"
)
_IMAGE = "SHA-256 of the file bytes, hex: the image's identity"
_CREATED = "when the row was written (UTC)"
_MODEL = "the model that produced the row (open_clip / checkpoint name; `standin-...` offline)"

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "drops": {
        "drop_id": _DROP,
        "kind": "'folder' (a sub-folder of the drop root) or 'loose' (files at the root)",
        "first_ingested_at": "when the drop was first ingested",
        "last_ingested_at": "when the drop was last ingested",
        "files_seen": "files found at the last ingestion",
        "files_ingested": "image_files rows of the drop",
        "files_rejected": "rejected_files rows of the drop",
        "images_new": "images this drop was the first to bring",
        "files_vanished": "rows of the drop whose file is gone",
    },
    "images": {
        "image_id": _IMAGE,
        "byte_size": "file size in bytes",
        "format": "Pillow's format name: JPEG, PNG, HEIF, ...",
        "mode": "the file's own colour mode; the models always get RGB",
        "width": "pixels, after EXIF orientation (as displayed)",
        "height": "pixels, after EXIF orientation (as displayed)",
        "exif_orientation": "the EXIF orientation tag that was applied, if any",
        "frame_count": "frames in the file; > 1: animated, the first frame is used",
        "captured_at": "EXIF DateTimeOriginal, camera local time",
        "notes": "what decoding changed or chose (orientation, first frame, ...)",
        "first_drop_id": "the drop that first brought these bytes",
        "first_path": "where these bytes were first seen, relative to the drop root",
        "ingested_at": "when the image was first ingested",
    },
    "image_files": {
        "drop_id": _DROP,
        "path": "relative to the drop root",
        "image_id": "the images row these bytes are",
        "is_duplicate": "the bytes were already known (another path or drop)",
        "byte_size": "file size in bytes when ingested",
        "mtime_ns": "file modification time when ingested (ns since the epoch)",
        "ingested_at": "when the file was ingested",
        "vanished_at": "set when the latest ingestion found the file gone; the row is kept",
        "changed_at": "set when a model stage read bytes here that no longer hash to image_id",
        "os_path": _OS_PATH,
    },
    "rejected_files": {
        "drop_id": _DROP,
        "path": "relative to the drop root",
        "reason": "machine-readable reason (core.ingest.reasons.RejectReason)",
        "error": "the error text",
        "byte_size": "file size in bytes, when it could be read",
        "mtime_ns": "file modification time (ns since the epoch), when it could be read",
        "sha256": "SHA-256 of the bytes, when they could be read",
        "rejected_at": "when the file was rejected",
        "limits": "the limits in force ('max_bytes=N;max_pixels=N;max_aspect_ratio=N')",
        "vanished_at": "set when the latest ingestion found the file gone; the row is kept",
        "os_path": _OS_PATH,
    },
    "write_guards": {
        "name": "the table whose inserts this row serialises ('images')",
        "bumps": "transactions that inserted into it (each bumps the row; see issue 19)",
    },
    "clip_embeddings": {
        "image_id": _IMAGE,
        "model_id": _MODEL,
        "kind": "'global' (the whole image) or 's2' (multi-scale tiles, pooled)",
        "dim": "vector length: the model's embedding dimension",
        "embedding": "the L2-normalised CLIP vector (cosine = dot product)",
        "created_at": _CREATED,
    },
    "clip_failures": {
        "image_id": _IMAGE,
        "model_id": _MODEL,
        "status": "'unavailable' or 'changed_since_ingest'",
        "error": "the error text",
        "drop_id": "the partition that tried",
        "created_at": _CREATED,
    },
    "clip_zero_shot": {
        "image_id": _IMAGE,
        "model_id": _MODEL,
        "label_set": "the label set scored (core.tasks.label_sets)",
        "label_set_fingerprint": "hash of the labels, phrases and templates used",
        "top_label": "the most probable label",
        "top_probability": "its probability",
        "probabilities": "every label's probability; they sum to 1",
        "created_at": _CREATED,
        "labels": "multi-label sets: the values the decision rule chose (top_k, threshold, or "
        "above 1/n); NULL for single choice",
    },
    "vlm_extractions": {
        "image_id": _IMAGE,
        "task": "the extraction task (core.tasks.registry)",
        "task_fingerprint": "hash of instruction + schema + token budget: the task's version",
        "model_id": "the VLM that answered",
        "status": "'ok', 'invalid', 'truncated', 'rejected' or 'error'",
        "raw_text": "the model's output as returned",
        "parsed_json": "the validated output; `ok` rows only",
        "error": "why the row is not `ok`",
        "latency_ms": "per image, including retries",
        "prompt_tokens": "prompt tokens the server counted",
        "completion_tokens": "generated tokens",
        "cached_tokens": "prompt tokens served from the prefix cache",
        "attempts": "requests made for this image and task",
        "drop_id": "the partition that extracted it",
        "created_at": _CREATED,
    },
    "vlm_field_confidence": {
        "image_id": _IMAGE,
        "task": "the extraction task",
        "task_fingerprint": "the task's version (as vlm_extractions)",
        "model_id": "the VLM that answered",
        "field": "the value's path: '<field>', '<list>', '<list>[0]', '<list>[0].<field>'",
        "confidence": "exp(sum of the logprobs of the value's tokens): its probability among "
        "the answers the grammar allowed; NULL when the backend returned no logprobs",
        "created_at": _CREATED,
    },
    "quality_results": {
        "run_id": "Dagster run id (or 'manual')",
        "asset": "asset key, '/'-joined",
        "check_name": "the asset check",
        "partition": "drop id; '' when unpartitioned",
        "passed": "whether the check passed",
        "severity": "'ERROR' or 'WARN': what a failure means",
        "value": "the measured rate / count / statistic",
        "threshold": "the bound it was held against",
        "details": "counts, a sample of offending rows, tables",
        "evaluated_at": "when the check ran",
    },
    "evaluations": {
        "run_id": "Dagster run id of the evaluation",
        "model_id": "the model evaluated",
        "task": "VLM task name, or the zero-shot label set",
        "field": "labelled field: a top-level field of the labeling spec (its labelled_as name)",
        "source": "'clip_zero_shot', 'vlm' or 'knn'",
        "metric": "accuracy, macro_f1, adjacent_accuracy, ...",
        "value": "the metric's value",
        "n": "labelled images the metric is over",
        "details": "confusion matrix, per-class counts, notes",
        "evaluated_at": "when the evaluation ran",
        "labelled_set": "the configured labelled set's path, or 'human_labels'",
    },
    "evaluation_inputs": {
        "labelled_set": "the configured labelled set's path, or 'human_labels'",
        "field": "labelled field: a top-level field of the labeling spec (its labelled_as name)",
        "predictor": "'zero_shot', 'vlm' or 'embedding_knn'",
        "model_id": _MODEL,
        "task": "VLM task name, or the zero-shot label set",
        "fingerprint": "hash of the labels and predictions evaluated: unchanged means skip",
        "images": "labelled images with a prediction",
        "run_id": "Dagster run id of the evaluation that stored these metrics",
        "evaluated_at": "when those metrics were computed",
    },
    "label_agreement": {
        "drop_id": _DROP,
        "field": "the labelled field both CLIP zero-shot and the VLM predict",
        "clip_model_id": "CLIP model of the zero-shot labels (NULL: none to compare)",
        "vlm_model_id": "VLM of the extraction labels (NULL: none to compare)",
        "images_compared": "images of the drop labelled by both",
        "agreed": "of those, images where both give the same label (multi-label: the same set)",
        "agreement_rate": "agreed / images_compared, or for multi-label the mean Jaccard of the "
        "two sets (see measure); NULL when none were compared",
        "confusion": "JSON counts: rows CLIP's label, columns the VLM's (single choice)",
        "run_id": "Dagster run id that wrote the row",
        "evaluated_at": "when the agreement was computed",
        "measure": "'exact' (single choice) or 'jaccard' (multi-label)",
        "per_value": "multi-label: JSON per value, images where both, only CLIP or only the "
        "VLM chose it",
    },
    "review_queue": {
        "drop_id": _DROP,
        "rank": "1 = review first",
        "image_id": _IMAGE,
        "path": "relative to the drop root",
        "score": "weighted sum of the reasons",
        "reasons": "names of the reasons that hold",
        "clip_vlm_disagree": "CLIP zero-shot and the VLM disagree on a field",
        "disagree_fields": "e.g. '<field>: clip=<label> vlm=<label>'",
        "zero_shot_margin": "smallest top-1 minus top-2 zero-shot probability",
        "low_margin": "the margin is below the configured threshold",
        "extraction_failed": "a VLM task has no `ok` result",
        "failed_tasks": "e.g. '<task>: truncated'",
        "near_duplicate_conflict": "a near-duplicate image got different labels",
        "near_duplicate_of": "image_id of the conflicting near-duplicate",
        "conflict_fields": "the fields the near-duplicates disagree on",
        "consistency_violation": "a consistency rule of the labeling spec is broken",
        "consistency_violations": "the broken rules, e.g. '<rule>: <task> answered, <list> empty'",
        "low_confidence": "a labelled field's confidence is below the spec's "
        "`review.low_confidence_below`",
        "min_confidence": "the lowest confidence of the image's labelled fields (current task "
        "versions); NULL without logprobs",
        "low_confidence_fields": "e.g. ['<field>: 0.31'], lowest first",
        "clip_model_id": "the CLIP model whose labels were judged",
        "vlm_model_id": "the VLM whose labels were judged",
        "created_at": _CREATED,
    },
    "human_labels": {
        "image_id": _IMAGE,
        "task": "extraction task of the labeling spec",
        "field": "'<field>', '<list>.count', '<list>[0].<field>', ...",
        "value": "the label the reviewer gave",
        "reviewer": "Label Studio user (e-mail or user id)",
        "reviewed_at": "the annotation's last update",
        "source_file": "the export file it was imported from",
        "annotation_id": "Label Studio's annotation id",
        "imported_at": "when it was imported",
    },
}

# Embeddings live in one table per dimension, clip_embeddings_d<D>, with the view's columns.
_PER_DIMENSION = re.compile(r"^clip_embeddings_d\d+$")


def _described_table(table: str) -> str:
    return "clip_embeddings" if _PER_DIMENSION.match(table) else table


def describe(table: str, column: str) -> str | None:
    """The column's description, or None for one nobody documented (task tables' fields)."""
    return DESCRIPTIONS.get(_described_table(table), {}).get(column)


@cache
def _schema_columns() -> dict[str, list[tuple[str, str]]]:
    conn = duckdb.connect(":memory:")
    try:
        migrate(conn)
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        conn.close()
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        columns.setdefault(str(table), []).append((str(column), str(kind)))
    return columns


def table_columns(table: str) -> list[tuple[str, str, str | None]]:
    """(name, type, description) of each column the migrations give `table`, in order."""
    columns = _schema_columns().get(_described_table(table))
    if columns is None:
        raise KeyError(f"no table or view {table!r} in the warehouse schema")
    return [(name, kind, describe(table, name)) for name, kind in columns]


def schema_tables() -> list[str]:
    """Every table and view the migrations create."""
    return sorted(_schema_columns())
