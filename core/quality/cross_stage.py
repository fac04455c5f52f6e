"""Checks across stages: label drift of a drop against earlier drops (zero-shot labels or a task
field), CLIP/VLM agreement, and whether the labelled images were ever ingested.

`assets/embeddings.py` and `assets/extraction.py` declare `label_drift`; `assets/evaluation.py`
declares the other two.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from core.quality import drift
from core.quality.fields import LabelField
from core.quality.metrics import confusion_matrix
from core.quality.outcome import (
    SAMPLE_ROWS,
    CheckOutcome,
    drop_image_count,
    execute,
    ident,
    missing_table,
    no_images,
    share,
    too_few,
)
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGES, table_exists

LABEL_DRIFT = "label_drift"
AGREEMENT = "clip_vlm_agreement"
LABELLED_INGESTED = "labelled_images_ingested"
# Fewer labelled images on either side and a distribution is mostly noise.
DRIFT_MIN_IMAGES = 10


class LabelSource(BaseModel):
    """A label per image: a column of a table, filtered (zero-shot top labels, a task field)."""

    table: str
    column: str
    filters: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def zero_shot(cls, label_set: str, model_id: str) -> LabelSource:
        return cls(
            table="clip_zero_shot",
            column="top_label",
            filters={"label_set": label_set, "model_id": model_id},
        )

    @classmethod
    def task_field(
        cls, task: str, column: str, model_id: str, task_fingerprint: str | None = None
    ) -> LabelSource:
        filters = {"model_id": model_id}
        if task_fingerprint:
            filters["task_fingerprint"] = task_fingerprint
        return cls(table=f"task_{task}", column=column, filters=filters)

    @classmethod
    def zero_shot_set(cls, label_set: str, model_id: str) -> LabelSource:
        """A multi-label label set's decided values (`clip_zero_shot.labels`)."""
        return cls(
            table="clip_zero_shot",
            column="labels",
            filters={"label_set": label_set, "model_id": model_id},
        )

    def select(self, alias: str = "s", *, raw: bool = False) -> tuple[str, dict[str, str]]:
        """`SELECT image_id, label FROM ...` and its parameters (named `<alias>0`, `<alias>1`, ...);
        the label as text, or as stored with `raw` (a list column stays a list)."""
        where = " AND ".join(
            f"{alias}.{ident(name)} = ${alias}{i}" for i, name in enumerate(self.filters)
        )
        column = f"{alias}.{ident(self.column)}"
        sql = (
            f"SELECT {alias}.image_id, {column if raw else f'CAST({column} AS VARCHAR)'} AS label"
            f" FROM {ident(self.table)} {alias}" + (f" WHERE {where}" if where else "")
        )
        return sql, {f"{alias}{i}": value for i, value in enumerate(self.filters.values())}

    def describe(self) -> str:
        filters = ", ".join(f"{k}={v}" for k, v in self.filters.items())
        return f"{self.table}.{self.column} ({filters})"


def label_drift(
    warehouse: Warehouse,
    drop_id: str,
    source: LabelSource,
    *,
    categories: Sequence[str] | None = None,
    threshold: float = drift.DEFAULT_PSI_THRESHOLD,
    min_images: int = DRIFT_MIN_IMAGES,
) -> CheckOutcome:
    """This drop's label distribution against all drops ingested before it (PSI; chi-square too).

    Images the drop shares with earlier drops count on both sides; skipped (passes and says
    so) when either side has fewer than `min_images` labelled images, no earlier drop included.
    """
    labels, params = source.select()
    params = {**params, "drop": drop_id}
    with warehouse.reader() as conn:
        if not drop_image_count(conn, drop_id):
            return no_images(LABEL_DRIFT, "WARN", subject=source.describe())
        if not table_exists(conn, source.table):
            return missing_table(conn, drop_id, LABEL_DRIFT, source.table, "WARN")
        rows = execute(
            conn,
            f"""
            WITH me AS (SELECT first_ingested_at AS t FROM drops WHERE drop_id = $drop),
            earlier AS (
                SELECT DISTINCT f.image_id FROM image_files f JOIN drops d USING (drop_id)
                WHERE d.first_ingested_at < (SELECT t FROM me) AND f.drop_id <> $drop
            ),
            labels AS ({labels})
            SELECT 'current' AS side, label, count(*) FROM labels
                WHERE image_id IN ({DROP_IMAGES}) GROUP BY label
            UNION ALL
            SELECT 'reference', label, count(*) FROM labels
                WHERE image_id IN (SELECT image_id FROM earlier) GROUP BY label
            """,
            params,
        ).fetchall()
    current = {str(label): int(n) for side, label, n in rows if side == "current"}
    reference = {str(label): int(n) for side, label, n in rows if side == "reference"}
    base = {"current_images": sum(current.values()), "reference_images": sum(reference.values())}
    for side, have, unit in (
        ("current", base["current_images"], "images"),
        ("reference", base["reference_images"], "images in earlier drops"),
    ):
        if have < min_images:
            return too_few(
                LABEL_DRIFT,
                have=have,
                need=min_images,
                unit=unit,
                subject=source.describe(),
                threshold=threshold,
                counts=base,
                details={"current": current, "reference": reference, "short_side": side},
            )
    result = drift.compare(current, reference, categories, threshold=threshold)
    return CheckOutcome(
        check_name=LABEL_DRIFT,
        passed=not result.drifted,
        severity="WARN",
        summary=f"{source.describe()}: PSI {result.psi:.3f} vs earlier drops"
        f" (warn above {threshold}), chi-square {result.chi_square:.2f} on {result.degrees_of_freedom} dof",
        value=result.psi,
        threshold=threshold,
        counts=base,
        offending=[
            {"label": c, "current": result.current[c], "reference": result.reference[c]}
            for c in result.categories
        ][:SAMPLE_ROWS],
        details=result.model_dump(),
    )


def models_of_drop(warehouse: Warehouse, drop_id: str, source: LabelSource) -> list[str]:
    """Models that labelled this drop's images in `source`, most images first (then newest name)."""
    with warehouse.reader() as conn:
        if not table_exists(conn, source.table):
            return []
        filters = " AND ".join(
            f"s.{ident(name)} = $f{i}"
            for i, name in enumerate(source.filters)
            if name != "model_id"
        )
        rows = execute(
            conn,
            f"""
            SELECT s.model_id, count(DISTINCT s.image_id) AS images
            FROM {ident(source.table)} s JOIN ({DROP_IMAGES}) d USING (image_id)
            {"WHERE " + filters if filters else ""}
            GROUP BY s.model_id ORDER BY images DESC, s.model_id DESC
            """,
            {
                "drop": drop_id,
                **{
                    f"f{i}": value
                    for i, (name, value) in enumerate(source.filters.items())
                    if name != "model_id"
                },
            },
        ).fetchall()
    return [str(model_id) for model_id, _ in rows]


def agreement(
    warehouse: Warehouse,
    drop_id: str,
    field: LabelField,
    *,
    clip_model_id: str,
    vlm_model_id: str,
    task_fingerprint: str | None = None,
    min_rate: float = 0.5,
) -> CheckOutcome:
    """How often CLIP zero-shot's top label equals the VLM's value, with the confusion table;
    for a multi-label field, `multi_label_agreement`."""
    if not (field.zero_shot_label_set and field.task and field.column):
        raise ValueError(f"field {field.name!r} is not predicted by both CLIP and a VLM task")
    if field.kind == "multi_choice":
        return multi_label_agreement(
            warehouse,
            drop_id,
            field,
            clip_model_id=clip_model_id,
            vlm_model_id=vlm_model_id,
            task_fingerprint=task_fingerprint,
            min_rate=min_rate,
        )
    pairs = _agreement_pairs(
        warehouse,
        drop_id,
        field,
        LabelSource.zero_shot(field.zero_shot_label_set, clip_model_id),
        LabelSource.task_field(field.task, field.column, vlm_model_id, task_fingerprint),
        raw=False,
    )
    if isinstance(pairs, CheckOutcome):
        return pairs
    clip_labels = [str(c) for _, c, _ in pairs]
    vlm_labels = [str(v) for _, _, v in pairs]
    agreed = sum(c == v for c, v in zip(clip_labels, vlm_labels, strict=True))
    rate = share(agreed, len(pairs))
    matrix = confusion_matrix(clip_labels, vlm_labels, labels=field.values)
    return _agreement_outcome(
        field,
        min_rate,
        rate=rate,
        agreed=agreed,
        compared=len(pairs),
        summary=f"{field.name}: CLIP {clip_model_id} and VLM {vlm_model_id} agree on "
        f"{agreed} of {len(pairs)} images"
        + (f" ({rate:.1%}; warn below {min_rate:.0%})" if rate is not None else ""),
        offending=[
            {"image_id": image_id, "clip": c, "vlm": v} for image_id, c, v in pairs if c != v
        ],
        details={
            "field": field.name,
            "confusion": matrix.model_dump(),
            "rows": "clip",
            "columns": "vlm",
        },
    )


def multi_label_agreement(
    warehouse: Warehouse,
    drop_id: str,
    field: LabelField,
    *,
    clip_model_id: str,
    vlm_model_id: str,
    task_fingerprint: str | None = None,
    min_rate: float = 0.5,
) -> CheckOutcome:
    """Agreement on a multi-label field: the mean Jaccard of CLIP's decided set (its label set's
    decision rule) and the VLM's set over the images both labelled; `agreed` counts identical
    sets, and per value: images where both, only CLIP or only the VLM chose it."""
    pairs = _agreement_pairs(
        warehouse,
        drop_id,
        field,
        LabelSource.zero_shot_set(field.zero_shot_label_set or "", clip_model_id),
        LabelSource.task_field(
            field.task or "", field.column or "", vlm_model_id, task_fingerprint
        ),
        raw=True,
    )
    if isinstance(pairs, CheckOutcome):
        return pairs
    sets = [(image_id, set(c), set(v)) for image_id, c, v in pairs]
    jaccard = [len(c & v) / len(c | v) if c | v else 1.0 for _, c, v in sets]
    rate = sum(jaccard) / len(jaccard) if jaccard else None
    agreed = sum(c == v for _, c, v in sets)
    per_value = {
        value: {
            "both": sum(value in c and value in v for _, c, v in sets),
            "clip_only": sum(value in c and value not in v for _, c, v in sets),
            "vlm_only": sum(value in v and value not in c for _, c, v in sets),
        }
        for value in field.values
    }
    return _agreement_outcome(
        field,
        min_rate,
        rate=rate,
        agreed=agreed,
        compared=len(sets),
        summary=f"{field.name}: CLIP {clip_model_id} and VLM {vlm_model_id} chose the same set "
        f"on {agreed} of {len(sets)} images"
        + (f"; mean Jaccard {rate:.1%} (warn below {min_rate:.0%})" if rate is not None else ""),
        offending=[
            {"image_id": image_id, "clip": sorted(c), "vlm": sorted(v)}
            for image_id, c, v in sets
            if c != v
        ],
        details={"field": field.name, "measure": "jaccard", "per_value": per_value},
    )


def _agreement_pairs(
    warehouse: Warehouse,
    drop_id: str,
    field: LabelField,
    clip_source: LabelSource,
    vlm_source: LabelSource,
    *,
    raw: bool,
) -> list[tuple] | CheckOutcome:
    """(image_id, CLIP label, VLM label) for the drop's images both labelled, or the missing-table
    outcome; with `raw` the labels stay as stored (lists) and images either left empty are out."""
    clip, clip_params = clip_source.select("c", raw=raw)
    vlm, vlm_params = vlm_source.select("v", raw=raw)
    both_labelled = " AND c.label IS NOT NULL AND v.label IS NOT NULL" if raw else ""
    with warehouse.reader() as conn:
        for table in ("clip_zero_shot", vlm_source.table):
            if not table_exists(conn, table):
                return missing_table(conn, drop_id, AGREEMENT, table, "WARN", subject=field.name)
        return execute(
            conn,
            f"""
            SELECT c.image_id, c.label, v.label FROM ({clip}) c JOIN ({vlm}) v USING (image_id)
            WHERE c.image_id IN ({DROP_IMAGES}){both_labelled} ORDER BY c.image_id
            """,
            {**clip_params, **vlm_params, "drop": drop_id},
        ).fetchall()


def _agreement_outcome(
    field: LabelField,
    min_rate: float,
    *,
    rate: float | None,
    agreed: int,
    compared: int,
    summary: str,
    offending: list[dict],
    details: dict,
) -> CheckOutcome:
    """The agreement check's outcome: a WARN when the rate is below `min_rate`."""
    return CheckOutcome(
        check_name=AGREEMENT,
        passed=rate is None or rate >= min_rate,
        severity="WARN",
        summary=summary,
        value=rate,
        better="higher",
        threshold=min_rate,
        counts={"images_compared": compared, "agreed": agreed},
        offending=offending[:SAMPLE_ROWS],
        details=details,
    )


def labelled_images_ingested(warehouse: Warehouse, image_ids: dict[str, str]) -> CheckOutcome:
    """Every labelled image (image_id -> its labelled file) is in `images`: an image never
    ingested has no prediction and silently shrinks what the evaluation is over."""
    with warehouse.reader() as conn:
        known = {
            row[0]
            for row in execute(
                conn,
                "SELECT image_id FROM images WHERE list_contains($ids, image_id)",
                {"ids": sorted(image_ids)},
            ).fetchall()
        }
    missing = [
        {"image_id": iid, "path": path}
        for iid, path in sorted(image_ids.items())
        if iid not in known
    ]
    return CheckOutcome(
        check_name=LABELLED_INGESTED,
        passed=not missing,
        severity="WARN",
        summary=f"{len(image_ids) - len(missing)} of {len(image_ids)} labelled images are ingested",
        value=share(len(image_ids) - len(missing), len(image_ids)),
        better="higher",
        threshold=1.0,
        counts={"labelled_images": len(image_ids), "not_ingested": len(missing)},
        offending=missing[:SAMPLE_ROWS],
    )
