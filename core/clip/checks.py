"""Checks of the CLIP assets: embeddings (one per image and kind, dimension, finite, unit norm),
near-duplicates, and zero-shot rows (one per image and label set, well-formed probabilities).

`clip_embeddings`: image_id, model_id, kind, dim, embedding FLOAT[D] (view: FLOAT[]);
`clip_zero_shot`: one row per image, model and label set. `assets/embeddings.py` declares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import polars as pl

from core.clip.near_duplicates import near_duplicate_pairs
from core.quality.outcome import (
    SAMPLE_ROWS,
    CheckOutcome,
    drop_image_count,
    ident,
    merge_outcomes,
    missing_table,
    no_images,
    records,
    scalar,
    too_few,
)
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGES, first_paths, table_exists

EMBEDDING_ONE_PER_IMAGE = "embedding_one_per_image"
EMBEDDING_DIMENSION = "embedding_dimension"
EMBEDDING_FINITE = "embedding_finite"
EMBEDDING_UNIT_NORM = "embedding_unit_norm"
NEAR_DUPLICATES = "no_near_duplicates"
ZERO_SHOT_ONE_PER_IMAGE = "zero_shot_one_per_image"
ZERO_SHOT_PROBABILITIES = "zero_shot_probabilities"
ZERO_SHOT_COLLAPSE = "zero_shot_label_collapse"

_VECTOR = "CAST(e.embedding AS DOUBLE[])"


def embedding_checks(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    *,
    expected_dim: int,
    kind: str = "global",
    norm_tolerance: float = 1e-3,
    table: str = "clip_embeddings",
) -> list[CheckOutcome]:
    """One row per image and model, the model's dimension, finite values, unit L2 norm."""
    names = (EMBEDDING_ONE_PER_IMAGE, EMBEDDING_DIMENSION, EMBEDDING_FINITE, EMBEDDING_UNIT_NORM)
    params = {"drop": drop_id, "model": model_id, "kind": kind}
    with warehouse.reader() as conn:
        # No image of the drop reached the model (all rejected, or every file gone before CLIP
        # read it): nothing to check, and no vector table need exist yet.
        images, unavailable = _images_and_unavailable(conn, params)
        if images == unavailable:
            return [
                _nothing_to_check(name, f"{model_id} ({kind})", images, unavailable)
                for name in names
            ]
        if not table_exists(conn, table):
            return [missing_table(conn, drop_id, name, table) for name in names]
        rows = f"""
            SELECT e.* FROM {ident(table)} e JOIN ({DROP_IMAGES}) d USING (image_id)
            WHERE e.model_id = $model AND e.kind = $kind
        """
        images = scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        per_image = records(
            conn,
            f"""
            SELECT d.image_id, count(e.image_id) AS rows, any_value(c.status) AS unreadable
            FROM ({DROP_IMAGES}) d LEFT JOIN ({rows}) e USING (image_id)
            LEFT JOIN clip_failures c ON c.image_id = d.image_id AND c.model_id = $model
            GROUP BY d.image_id HAVING count(e.image_id) <> 1 ORDER BY rows, d.image_id
            """,
            params,
        )
        # No file of the image still holds its bytes (core/copies.py): counted, not failed.
        unreadable = [r for r in per_image if r["rows"] == 0 and r["unreadable"] is not None]
        per_image = [
            {"image_id": r["image_id"], "rows": r["rows"]}
            for r in per_image
            if not (r["rows"] == 0 and r["unreadable"] is not None)
        ]
        dims = records(
            conn,
            f"""
            SELECT e.image_id, e.dim, len({_VECTOR}) AS length FROM ({rows}) e
            WHERE e.dim IS DISTINCT FROM $dim OR len({_VECTOR}) IS DISTINCT FROM $dim
            ORDER BY e.image_id
            """,
            {**params, "dim": expected_dim},
        )
        stats = f"""
            SELECT e.image_id,
                   list_bool_and(
                       list_transform({_VECTOR}, lambda x: coalesce(isfinite(x), false))
                   ) AS finite,  -- a NULL element is no number either
                   sqrt(list_sum(list_transform({_VECTOR}, lambda x: x * x))) AS norm
            FROM ({rows}) e
        """
        not_finite = records(
            conn, f"SELECT image_id FROM ({stats}) WHERE NOT finite ORDER BY image_id", params
        )
        off_norm = records(
            conn,
            f"""
            SELECT image_id, norm FROM ({stats})
            WHERE finite AND abs(norm - 1) > $tol ORDER BY abs(norm - 1) DESC, image_id
            """,
            {**params, "tol": norm_tolerance},
        )
        total_rows = scalar(conn, f"SELECT count(*) FROM ({rows})", params)
    missing = sum(1 for row in per_image if row["rows"] == 0)
    repeated = len(per_image) - missing
    counts = {"images": int(images), "rows": int(total_rows)}
    subject = f"{model_id} ({kind})"
    unavailable = len(unreadable)
    aside = f"; {unavailable} unavailable (no file holds their bytes)" if unavailable else ""
    return [
        CheckOutcome.from_offenders(
            EMBEDDING_ONE_PER_IMAGE,
            per_image,
            summary=f"{subject}: {missing} images without and {repeated} with several embeddings"
            + aside
            if per_image
            else f"{subject}: one embedding for each of {images - unavailable} images" + aside,
            counts={**counts, "missing": missing, "repeated": repeated, "unavailable": unavailable},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_DIMENSION,
            dims,
            summary=f"{subject}: {len(dims)} embeddings are not {expected_dim}-dimensional",
            settings={"expected_dimension": expected_dim},
            counts={**counts, "wrong_dimension": len(dims)},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_FINITE,
            not_finite,
            summary=f"{subject}: {len(not_finite)} embeddings hold NaN, infinity or NULL",
            counts={**counts, "not_finite": len(not_finite)},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_UNIT_NORM,
            off_norm,
            summary=f"{subject}: {len(off_norm)} embeddings have |norm - 1| > {norm_tolerance}",
            settings={"norm_tolerance": norm_tolerance},
            counts={**counts, "off_norm": len(off_norm)},
        ),
    ]


def _images_and_unavailable(
    conn: duckdb.DuckDBPyConnection, params: dict[str, object]
) -> tuple[int, int]:
    """The drop's images, and how many of them the model found no readable file for."""
    images = drop_image_count(conn, str(params["drop"]))
    if not images or not table_exists(conn, "clip_failures"):
        return images, 0
    unavailable = scalar(
        conn,
        f"SELECT count(*) FROM ({DROP_IMAGES}) d JOIN clip_failures c"
        " ON c.image_id = d.image_id AND c.model_id = $model",
        params,
    )
    return int(images), int(unavailable)


def _nothing_to_check(name: str, subject: str, images: int, unavailable: int) -> CheckOutcome:
    """Passed, and says why: no image of the drop reached the model."""
    if not images:
        return no_images(name, subject=subject, counts={"unavailable": 0})
    return CheckOutcome(
        check_name=name,
        passed=True,
        severity="ERROR",
        summary=f"{subject}: nothing to check: all {images} images are unavailable"
        " (no file holds their bytes)",
        counts={"images": images, "unavailable": unavailable},
    )


def embedding_checks_by_kind(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    dims: Mapping[str, int],
    *,
    norm_tolerance: float = 1e-3,
) -> list[CheckOutcome]:
    """`embedding_checks` for every kind the model writes (global, s2), folded per check."""
    return merge_outcomes(
        {
            kind: embedding_checks(
                warehouse,
                drop_id,
                model_id,
                expected_dim=dim,
                kind=kind,
                norm_tolerance=norm_tolerance,
            )
            for kind, dim in dims.items()
        },
        key="kind",
    )


# ---------------------------------------------------------------------------------------------
# zero-shot (clip_zero_shot: one row per image, model and label set)


def zero_shot_checks(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    label_set: str,
    *,
    labels: Sequence[str],
    fingerprint: str,
    tolerance: float = 1e-4,
) -> list[CheckOutcome]:
    """Every image of the drop has a row of the current label-set version; its probabilities
    cover exactly the label set's labels, sum to 1, and the top label is their argmax."""
    params = {"drop": drop_id, "model": model_id, "set": label_set, "fp": fingerprint}
    with warehouse.reader() as conn:
        images = scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        missing = records(
            conn,
            f"""
            SELECT d.image_id, z.label_set_fingerprint AS stale_fingerprint
            FROM ({DROP_IMAGES}) d LEFT JOIN clip_zero_shot z ON z.image_id = d.image_id
                AND z.model_id = $model AND z.label_set = $set
            WHERE (z.image_id IS NULL OR z.label_set_fingerprint <> $fp)
              AND NOT EXISTS (  -- unreadable for this model: no embedding to label
                SELECT 1 FROM clip_failures c
                WHERE c.image_id = d.image_id AND c.model_id = $model)
            ORDER BY d.image_id
            """,
            params,
        )
        bad = records(
            conn,
            f"""
            WITH rows AS (
                SELECT z.image_id, z.top_label, z.top_probability,
                       map_extract_value(z.probabilities, z.top_label) AS top_in_map,
                       map_keys(z.probabilities) AS keys, map_values(z.probabilities) AS probs
                FROM clip_zero_shot z JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE z.model_id = $model AND z.label_set = $set
            )
            SELECT image_id, top_label, round(list_sum(probs), 6) AS probability_sum,
                   CASE WHEN list_sort(keys) <> list_sort($labels) THEN 'labels differ from the set'
                        WHEN NOT list_bool_and(list_transform(
                                probs, lambda p: coalesce(isfinite(p) AND p >= 0, false)))
                            THEN 'negative or non-finite probability'
                        WHEN abs(list_sum(probs) - 1) > $tol THEN 'probabilities do not sum to 1'
                        WHEN NOT list_contains(keys, top_label) THEN 'top label not in the set'
                        WHEN abs(top_in_map - list_max(probs)) > $tol
                            OR abs(top_probability - top_in_map) > $tol
                            THEN 'top label is not the most probable'
                   END AS problem
            FROM rows WHERE problem IS NOT NULL ORDER BY image_id
            """,
            {**params, "labels": list(labels), "tol": tolerance},
        )
        rows = scalar(
            conn,
            f"SELECT count(*) FROM clip_zero_shot z JOIN ({DROP_IMAGES}) d USING (image_id)"
            " WHERE z.model_id = $model AND z.label_set = $set",
            params,
        )
    subject = f"{label_set}/{model_id}"
    if not images:
        return [
            _nothing_to_check(name, subject, 0, 0)
            for name in (ZERO_SHOT_ONE_PER_IMAGE, ZERO_SHOT_PROBABILITIES)
        ]
    return [
        CheckOutcome.from_offenders(
            ZERO_SHOT_ONE_PER_IMAGE,
            missing,
            summary=f"{subject}: {len(missing)} of {images} images lack a current row"
            if missing
            else f"{subject}: a current row for each of {images} images",
            counts={"images": int(images), "missing_or_stale": len(missing)},
        ),
        CheckOutcome.from_offenders(
            ZERO_SHOT_PROBABILITIES,
            bad,
            summary=f"{subject}: {len(bad)} of {rows} rows have malformed probabilities",
            settings={"probability_tolerance": tolerance},
            counts={"rows": int(rows), "malformed": len(bad)},
        ),
    ]


def near_duplicates(
    warehouse: Warehouse, drop_id: str, model_id: str, dim: int, threshold: float
) -> tuple[CheckOutcome, pl.DataFrame]:
    """Pairs of different images of the drop (vs itself and earlier drops) at cosine >=
    `threshold`, each with its images' first paths: re-encoded or resized copies."""
    pairs = near_duplicate_pairs(
        warehouse, drop_id, model_id=model_id, dim=dim, threshold=threshold
    )
    with warehouse.reader() as conn:
        if not drop_image_count(conn, drop_id):
            return no_images(NEAR_DUPLICATES, "WARN", subject=model_id), pairs
    if pairs.height:
        paths = first_paths(
            warehouse, sorted(set(pairs["image_id"]) | set(pairs["other_image_id"]))
        )
        pairs = pairs.with_columns(
            pairs["image_id"].replace_strict(paths, default=None).alias("path"),
            pairs["other_image_id"].replace_strict(paths, default=None).alias("other_path"),
        )
    outcome = CheckOutcome(
        check_name=NEAR_DUPLICATES,
        passed=pairs.height == 0,
        severity="WARN",
        summary=f"{model_id}: {pairs.height} pairs of different images at cosine >= {threshold}",
        value=float(pairs.height),
        threshold=0.0,
        counts={"pairs": pairs.height},
        offending=pairs.head(SAMPLE_ROWS).to_dicts(),
        details={"settings": {"min_cosine": threshold}},
    )
    return outcome, pairs


def zero_shot_collapse(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    label_set: str,
    *,
    fingerprint: str,
    min_images: int = 10,
) -> CheckOutcome:
    """A model guard: one label is the top label of every image of a drop of at least
    `min_images` images (a collapsed or broken model, or prompts that favour one label); the
    value is how many distinct top labels the drop got."""
    params = {"drop": drop_id, "model": model_id, "set": label_set, "fp": fingerprint}
    subject = f"{label_set}/{model_id}"
    with warehouse.reader() as conn:
        if not drop_image_count(conn, drop_id):
            return no_images(ZERO_SHOT_COLLAPSE, "WARN", subject=subject)
        tops = records(
            conn,
            f"""
            SELECT z.top_label AS label, count(*) AS images,
                   round(avg(z.top_probability), 4) AS mean_probability
            FROM clip_zero_shot z JOIN ({DROP_IMAGES}) d USING (image_id)
            WHERE z.model_id = $model AND z.label_set = $set AND z.label_set_fingerprint = $fp
            GROUP BY z.top_label ORDER BY images DESC, label
            """,
            params,
        )
    images = sum(row["images"] for row in tops)
    if images < min_images:
        return too_few(
            ZERO_SHOT_COLLAPSE,
            have=images,
            need=min_images,
            subject=subject,
            threshold=2.0,
            better="higher",
            counts={"images": images, "distinct_top_labels": len(tops)},
        )
    collapsed = len(tops) == 1
    if collapsed:
        summary = f"{subject}: every one of {images} images has top label {tops[0]['label']!r}"
    else:
        summary = f"{subject}: {len(tops)} distinct top labels over {images} images"
    return CheckOutcome(
        check_name=ZERO_SHOT_COLLAPSE,
        passed=not collapsed,
        severity="WARN",
        summary=summary,
        value=float(len(tops)),
        threshold=2.0,
        better="higher",
        counts={"images": images, "distinct_top_labels": len(tops)},
        offending=tops[:SAMPLE_ROWS] if collapsed else [],
        details={"settings": {"min_images": min_images}},
    )
