"""Evaluation against a labelled set: CLIP zero-shot, the VLM and zero-shot kNN, side by side.

Predictions come from the warehouse by `image_id` (`clip_zero_shot`, `task_<task>` tables,
`clip_embeddings`), for every model that has them. Metrics are computed over the labelled images
that have a prediction; `coverage` says how many that is.

The unit of work is one field's predictions by one model (a `Unit`: zero-shot labels, a VLM
task's values, or image embeddings for the many-class kNN). Its fingerprint hashes the labels of
the field and the prediction rows it reads; `evaluate_changed` evaluates only the units whose
fingerprint differs from the one stored in `evaluation_inputs`, and replaces their rows in
`evaluations` (delete-then-insert per key, one transaction). `evaluate` computes every unit; the
two give the same numbers (tested).

Zero-shot kNN is `core.quality.knn` (the SigLIP validation's definition). For the small label sets
the stored zero-shot probabilities give its ranking exactly: one text embedding per label, and
both the softmax and the 1/distance vote are monotonic in cosine. Top-k is reported only where
the set has more than k labels. The many-class set (`core.quality.imagenet`) needs the class-text
embeddings, so it is evaluated for the model the `clip_model` resource loads.

With stand-in models (model_id starting with "standin") the numbers are meaningless: random
weights (chance level on ImageNet classes: top-1 about 1/998). The report says so in its banner
and in each row's details.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel

from core.clip.loading import ClipModel
from core.clip.store import read_embeddings
from core.quality import evaluation_store as sql
from core.quality import imagenet, knn
from core.quality.fields import FIELDS, LabelField
from core.quality.labelled import LabelledSet
from core.quality.metrics import (
    ClassCounts,
    ConfusionMatrix,
    accuracy,
    adjacent_accuracy,
    binary_f1,
    confusion_matrix,
    macro_f1,
    mean_absolute_error,
    multi_label_metrics,
    per_class_counts,
    ranked,
    top_k_accuracy,
)
from core.warehouse import Warehouse

Source = Literal["clip_zero_shot", "vlm", "knn"]
STANDIN_PREFIX = "standin"
STANDIN_NOTE = (
    "stand-in models with random weights: these numbers are meaningless; they show the code path "
    "works, not how well anything labels images"
)


# Metrics of the other field kinds: yes/no F1; multi-label micro-F1, subset accuracy, Jaccard;
# integer and number MAE (see `_evaluate` and core.quality.metrics).
# Expected calibration error: the VLM's per-field confidence (`vlm_field_confidence`) against
# whether its answer matched the label (see `calibration`).
ECE = "expected_calibration_error"
CALIBRATION_BINS = 10
KIND_METRICS = ("f1", "micro_f1", "subset_accuracy", "jaccard", "mae", ECE)


def is_standin(model_id: str) -> bool:
    return model_id.lower().startswith(STANDIN_PREFIX)


class SourceEvaluation(BaseModel):
    """One field, one source, one model: the metrics and the tables behind them."""

    field: str
    source: Source
    model_id: str
    task: str  # VLM task, or the zero-shot label set
    task_fingerprint: str | None = None
    n_labelled: int
    n: int  # labelled images with a prediction: what the metrics are over
    metrics: dict[str, float]
    per_class: list[ClassCounts] = []
    confusion: ConfusionMatrix | None = None
    # per metric where it differs from the result's: the images it is over, and its own details
    metric_n: dict[str, int] = {}
    metric_details: dict[str, dict] = {}

    @property
    def standin(self) -> bool:
        return is_standin(self.model_id)


class EvaluationReport(BaseModel):
    run_id: str
    labelled_source: str
    results: list[SourceEvaluation]

    @property
    def standin_models(self) -> list[str]:
        return sorted({r.model_id for r in self.results if r.standin})

    @property
    def banner(self) -> str | None:
        if not self.standin_models:
            return None
        return f"!!! {', '.join(self.standin_models)}: {STANDIN_NOTE} !!!"

    def side_by_side(self) -> pl.DataFrame:
        """One row per field, source and model; the metric columns line up for comparison."""
        order = {"clip_zero_shot": 0, "vlm": 1, "knn": 2}
        rows = [
            {
                "field": r.field,
                "source": r.source,
                "model_id": r.model_id,
                "n": r.n,
                "coverage": r.metrics.get("coverage"),
                "accuracy": r.metrics.get("accuracy"),
                "macro_f1": r.metrics.get("macro_f1"),
                "adjacent_accuracy": r.metrics.get("adjacent_accuracy"),
                **{name: r.metrics.get(name) for name in KIND_METRICS},
                "top1": r.metrics.get("top1_accuracy"),
                "top5": r.metrics.get("top5_accuracy"),
                "standin": r.standin,
            }
            for r in sorted(self.results, key=lambda r: (r.field, order[r.source], r.model_id))
        ]
        schema = {
            "field": pl.String,
            "source": pl.String,
            "model_id": pl.String,
            "n": pl.Int64,
            **dict.fromkeys(
                ("coverage", "accuracy", "macro_f1", "adjacent_accuracy", *KIND_METRICS),
                pl.Float64,
            ),
            **dict.fromkeys(("top1", "top5"), pl.Float64),
            "standin": pl.Boolean,
        }
        return pl.DataFrame(rows, schema=schema)

    def markdown(self) -> str:
        frame = self.side_by_side()
        header = "| " + " | ".join(frame.columns) + " |"
        lines = [header, "|" + "---|" * len(frame.columns)]
        for row in frame.iter_rows():
            cells = [
                "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row
            ]
            lines.append("| " + " | ".join(cells) + " |")
        table = "\n".join(lines)
        return f"**{self.banner}**\n\n{table}" if self.banner else table


def calibration(
    confidences: list[float], correct: list[bool], bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict[str, float | int]]]:
    """Expected calibration error over `bins` equal-width confidence bins (a confidence of 1
    falls in the last): sum over bins of (images in bin / all) * |accuracy - mean confidence|;
    and the reliability bins that are not empty."""
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for confidence, hit in zip(confidences, correct, strict=True):
        grouped.setdefault(min(int(confidence * bins), bins - 1), []).append((confidence, hit))
    total = len(confidences)
    ece, table = 0.0, []
    for index in sorted(grouped):
        members = grouped[index]
        mean = sum(c for c, _ in members) / len(members)
        accuracy_ = sum(h for _, h in members) / len(members)
        ece += len(members) / total * abs(accuracy_ - mean)
        table.append(
            {
                "lower": index / bins,
                "upper": (index + 1) / bins,
                "n": len(members),
                "mean_confidence": mean,
                "accuracy": accuracy_,
            }
        )
    return ece, table


def _calibration_metric(
    truth: dict[str, str], predictions: dict[str, str], confidences: dict[str, float]
) -> tuple[float, int, dict] | None:
    """ECE of the labelled images with a prediction and a confidence; None when none has one
    (a backend without logprobs): no number is made up."""
    ids = sorted(set(truth) & set(predictions) & set(confidences))
    if not ids:
        return None
    ece, bins = calibration(
        [confidences[i] for i in ids], [predictions[i] == truth[i] for i in ids]
    )
    details = {
        "bins": bins,
        "n_bins": CALIBRATION_BINS,
        "correct": "the answer equals the label (a multi-label set: the same set)",
        "confidence": "vlm_field_confidence of the field: exp(sum of its token logprobs)",
    }
    return ece, len(ids), details


def _pairs(truth: dict[str, str], predictions: dict[str, str]) -> tuple[list[str], list, list]:
    ids = sorted(set(truth) & set(predictions))
    return ids, [truth[i] for i in ids], [predictions[i] for i in ids]


def _evaluate(
    field: LabelField,
    source: Source,
    model_id: str,
    task: str,
    truth: dict[str, str],
    predictions: dict[str, str],
    *,
    fingerprint: str | None = None,
    confidences: dict[str, float] | None = None,
) -> SourceEvaluation:
    """The metrics of `field`'s kind over the labelled images with a prediction; values are in
    the canonical text form of `core.quality.labelled.canonical` on both sides. With
    `confidences` (image -> the answer's confidence), its expected calibration error too."""
    ids, y_true, y_pred = _pairs(truth, predictions)
    metrics: dict[str, float] = {"coverage": len(ids) / len(truth)}
    per_class: list[ClassCounts] = []
    confusion: ConfusionMatrix | None = None
    if field.kind == "multi_choice":
        sets_true = [frozenset(v.split("|")) - {""} for v in y_true]
        sets_pred = [frozenset(v.split("|")) - {""} for v in y_pred]
        found, per_class = multi_label_metrics(sets_true, sets_pred, field.values)
        metrics |= found
    elif field.kind in ("integer", "number"):
        metrics["mae"] = mean_absolute_error([float(v) for v in y_true], [float(v) for v in y_pred])
        if field.kind == "integer":
            metrics["accuracy"] = accuracy(y_true, y_pred)
    else:
        values = ("true", "false") if field.kind == "yes_no" else field.values
        metrics |= {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred)}
        if field.kind == "yes_no":
            metrics["f1"] = binary_f1([v == "true" for v in y_true], [v == "true" for v in y_pred])
        if field.ordinal:
            off_scale = (field.cannot_tell,) if field.cannot_tell else ()
            metrics["adjacent_accuracy"] = adjacent_accuracy(
                y_true, y_pred, field.values, off_scale=off_scale
            )
        per_class = per_class_counts(y_true, y_pred, values)
        confusion = confusion_matrix(y_true, y_pred, values)
    metric_n: dict[str, int] = {}
    metric_details: dict[str, dict] = {}
    calibrated = _calibration_metric(truth, predictions, confidences) if confidences else None
    if calibrated is not None:
        metrics[ECE], metric_n[ECE], metric_details[ECE] = calibrated
    return SourceEvaluation(
        field=field.name,
        source=source,
        model_id=model_id,
        task=task,
        task_fingerprint=fingerprint,
        n_labelled=len(truth),
        n=len(ids),
        metrics=metrics,
        per_class=per_class,
        confusion=confusion,
        metric_n=metric_n,
        metric_details=metric_details,
    )


def _canonical_prediction(field: LabelField, value: object) -> str | None:
    """A stored answer in the labelled sets' canonical text form; None for a null answer."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        chosen = {str(v) for v in value}
        known = [v for v in field.values if v in chosen]
        return "|".join(known + sorted(chosen - set(known)))
    if field.kind == "number":
        return repr(float(value))  # type: ignore[arg-type]
    return str(value)


EVALUATION_VERSION = "4"  # bump when a metric's definition changes: every unit re-evaluates
Predictor = Literal["zero_shot", "vlm", "embedding_knn"]
SOURCES: dict[str, tuple[Source, ...]] = {
    "zero_shot": ("clip_zero_shot", "knn"),
    "vlm": ("vlm",),
    "embedding_knn": ("knn",),
}


class Unit(BaseModel, frozen=True):
    """One field's predictions by one model: what one fingerprint covers."""

    field: str
    predictor: Predictor
    model_id: str
    task: str  # VLM task, zero-shot label set, or imagenet.LABEL_SET
    fingerprint: str
    images: int  # labelled images with a prediction

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.field, self.predictor, self.model_id, self.task)

    @property
    def sources(self) -> tuple[Source, ...]:
        return SOURCES[self.predictor]

    def describe(self) -> str:
        return f"{self.field} / {self.predictor} / {self.model_id}"


def _fingerprint(*parts: object) -> str:
    payload = json.dumps([EVALUATION_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def input_units(
    warehouse: Warehouse,
    labelled: LabelledSet,
    *,
    clip_identity: str = "",
    fields: dict[str, LabelField] | None = None,
) -> list[Unit]:
    """Every unit the warehouse holds predictions for, with the fingerprint of its inputs.

    `clip_identity` names the CLIP model configuration that would embed the many-class texts;
    it is part of those units' fingerprints, so a new configuration re-evaluates them."""
    fields = FIELDS if fields is None else fields
    units: list[Unit] = []
    for name in labelled.fields():
        field = fields[name]
        truth = labelled.labels(name)
        ids = sorted(truth)
        truth_hash = _fingerprint(sorted(truth.items()))
        found: list[tuple[Predictor, str, str, list[tuple]]] = []
        if field.zero_shot_label_set:
            label_set = field.zero_shot_label_set
            hashes = sql.zero_shot_hashes(warehouse, label_set, ids)
            found.append(("zero_shot", label_set, "", hashes))
        if field.task_table and field.column:
            hashes = sql.vlm_hashes(warehouse, field.task_table, field.column, ids)
            found.append(("vlm", field.task or "", "", hashes))
        if name == imagenet.FIELD:
            hashes = sql.embedding_hashes(warehouse, imagenet.EMBEDDING_KIND, ids)
            extra = f"{imagenet.fingerprint()}|{clip_identity}"
            found.append(("embedding_knn", imagenet.LABEL_SET, extra, hashes))
        for predictor, task, extra, hashes in found:
            for model_id, images, digest in hashes:
                units.append(
                    Unit(
                        field=name,
                        predictor=predictor,
                        model_id=model_id,
                        task=task,
                        fingerprint=_fingerprint(predictor, task, extra, truth_hash, digest),
                        images=int(images),
                    )
                )
    return units


def _knn(
    field: LabelField,
    model_id: str,
    task: str,
    truth: dict[str, str],
    rankings: dict[str, list[str]],
    n_classes: int,
) -> SourceEvaluation:
    ids = sorted(set(truth) & set(rankings))
    y_true = [truth[i] for i in ids]
    ordered = [rankings[i] for i in ids]
    metrics = {"coverage": len(ids) / len(truth)}
    for k in knn.reported_top_k(n_classes):
        metrics[f"top{k}_accuracy"] = top_k_accuracy(y_true, ordered, k)
    return SourceEvaluation(
        field=field.name,
        source="knn",
        model_id=model_id,
        task=task,
        n_labelled=len(truth),
        n=len(ids),
        metrics=metrics,
    )


def evaluate_unit(
    warehouse: Warehouse,
    labelled: LabelledSet,
    unit: Unit,
    clip: ClipModel | None = None,
    *,
    fields: dict[str, LabelField] | None = None,
) -> list[SourceEvaluation]:
    """The metrics of one unit, from its prediction rows."""
    field = (FIELDS if fields is None else fields)[unit.field]
    truth = labelled.labels(unit.field)
    ids = sorted(truth)
    if unit.predictor == "zero_shot":
        rows = sql.zero_shot_rows(warehouse, unit.task, unit.model_id, ids)
        if field.kind == "multi_choice":  # the set the label set's decision rule chose
            chosen = {i: _canonical_prediction(field, d) for i, _, _, d in rows if d is not None}
            decided = {i: v for i, v in chosen.items() if v is not None}
            return [_evaluate(field, "clip_zero_shot", unit.model_id, unit.task, truth, decided)]
        tops = {image_id: top for image_id, top, _, _ in rows}
        rankings = {image_id: ranked(probabilities) for image_id, _, probabilities, _ in rows}
        n_classes = max((len(p) for _, _, p, _ in rows), default=0)
        return [
            _evaluate(field, "clip_zero_shot", unit.model_id, unit.task, truth, tops),
            _knn(field, unit.model_id, unit.task, truth, rankings, n_classes),
        ]
    if unit.predictor == "vlm":
        by_fingerprint: dict[str, dict[str, str]] = {}
        confidences: dict[str, dict[str, float]] = {}
        for fingerprint, image_id, raw, confidence in sql.vlm_rows(
            warehouse, field.task_table or "", field.column or "", unit.model_id, ids
        ):
            value = _canonical_prediction(field, raw)
            by_fingerprint.setdefault(fingerprint, {})
            if value is not None:  # a null answer is no prediction: it lowers coverage
                by_fingerprint[fingerprint][image_id] = value
                if confidence is not None:
                    confidences.setdefault(fingerprint, {})[image_id] = float(confidence)
        if not by_fingerprint:
            return []
        # One task version per model: the one covering most labelled images (then by name).
        fingerprint, predictions = min(by_fingerprint.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        return [
            _evaluate(
                field,
                "vlm",
                unit.model_id,
                unit.task,
                truth,
                predictions,
                fingerprint=fingerprint,
                confidences=confidences.get(fingerprint),
            )
        ]
    if clip is None or clip.model_id != unit.model_id:
        raise ValueError(f"{unit.describe()}: needs the CLIP model {unit.model_id} loaded")
    classes = imagenet.class_embeddings(clip)
    found, vectors = read_embeddings(
        warehouse, int(classes.shape[1]), unit.model_id, imagenet.EMBEDDING_KIND, ids
    )
    scores = knn.knn_scores(np.asarray(vectors), classes, imagenet.CLASS_NAMES)
    rankings = {image_id: knn.ranking(s) for image_id, s in zip(found, scores, strict=True)}
    return [_knn(field, unit.model_id, unit.task, truth, rankings, len(imagenet.VALUES))]


def evaluate(
    warehouse: Warehouse,
    labelled: LabelledSet,
    *,
    run_id: str,
    clip: ClipModel | None = None,
    fields: dict[str, LabelField] | None = None,
) -> EvaluationReport:
    """Every unit, from scratch (no stored state read or written); many-class kNN units only
    for `clip`'s model."""
    results: list[SourceEvaluation] = []
    for unit in input_units(warehouse, labelled, fields=fields):
        if unit.predictor == "embedding_knn" and (clip is None or clip.model_id != unit.model_id):
            continue
        results += evaluate_unit(warehouse, labelled, unit, clip, fields=fields)
    return EvaluationReport(run_id=run_id, labelled_source=labelled.source, results=results)


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def evaluation_rows(result: SourceEvaluation, labelled_source: str) -> list[tuple]:
    """(model_id, task, field, source, metric, value, n, details JSON) per metric."""
    details = {
        "labelled_source": labelled_source,
        "n_labelled": result.n_labelled,
        "task_fingerprint": result.task_fingerprint,
        "per_class": [c.model_dump() for c in result.per_class],
        "confusion": result.confusion.model_dump() if result.confusion else None,
    }
    if result.standin:
        details["note"] = STANDIN_NOTE
    text = json.dumps(details)
    return [
        (
            result.model_id,
            result.task,
            result.field,
            result.source,
            metric,
            _finite(value),
            result.metric_n.get(metric, result.n),
            json.dumps(details | result.metric_details[metric])
            if metric in result.metric_details
            else text,
        )
        for metric, value in result.metrics.items()
    ]


class IncrementalEvaluation(BaseModel):
    """What one run did for one labelled set: the units it evaluated, skipped and left alone."""

    labelled_source: str
    report: EvaluationReport  # the newly evaluated results only
    evaluated: list[Unit] = []
    unchanged: list[Unit] = []
    removed: list[tuple[str, str, str, str]] = []  # units whose predictions are gone
    skipped: dict[str, str] = {}  # unit -> why it could not be evaluated here
    rows_written: int = 0

    @property
    def summary(self) -> str:
        if not self.evaluated and not self.removed:
            text = (
                f"nothing changed since the last evaluation: {len(self.unchanged)} results "
                "current, none evaluated"
            )
        else:
            text = (
                f"evaluated {len(self.evaluated)} of {len(self.evaluated) + len(self.unchanged)}"
                f" units whose inputs changed; {len(self.unchanged)} unchanged"
            )
            if self.removed:
                text += f"; {len(self.removed)} removed (their predictions are gone)"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped"
        return text


def evaluate_changed(
    warehouse: Warehouse,
    labelled: LabelledSet,
    *,
    run_id: str,
    load_clip: Callable[[], ClipModel] | None = None,
    clip_identity: str = "",
    evaluated_at: dt.datetime | None = None,
    fields: dict[str, LabelField] | None = None,
) -> IncrementalEvaluation:
    """Evaluate the units whose inputs changed since they were last evaluated, and replace their
    rows (and drop those of units whose predictions are gone) in one transaction.

    `load_clip` is called only when a many-class kNN unit changed; units of another model than
    the one it loads are recorded as skipped (with their fingerprint, so they are not retried
    until their inputs or the CLIP configuration change)."""
    warehouse.ensure_schema()
    at = evaluated_at or dt.datetime.now(dt.UTC)
    stored = sql.stored_inputs(warehouse, labelled.source)
    units = input_units(warehouse, labelled, clip_identity=clip_identity, fields=fields)
    changed = [u for u in units if stored.get(u.key) != u.fingerprint]
    unchanged = [u for u in units if stored.get(u.key) == u.fingerprint]
    present = {u.key for u in units}
    removed = [key for key in stored if key not in present]
    clip: ClipModel | None = None
    if load_clip is not None and any(u.predictor == "embedding_knn" for u in changed):
        clip = load_clip()
    results: list[SourceEvaluation] = []
    written, skipped = [], {}
    for unit in changed:
        if unit.predictor == "embedding_knn" and (clip is None or clip.model_id != unit.model_id):
            loaded = clip.model_id if clip else "no CLIP model"
            skipped[unit.describe()] = f"its class texts need {unit.model_id}; loaded: {loaded}"
            written.append((unit.key, unit.fingerprint, unit.images, unit.sources, []))
            continue
        unit_results = evaluate_unit(warehouse, labelled, unit, clip, fields=fields)
        results += unit_results
        rows = [row for r in unit_results for row in evaluation_rows(r, labelled.source)]
        written.append((unit.key, unit.fingerprint, unit.images, unit.sources, rows))
    removed_with_sources = [(key, SOURCES[key[1]]) for key in removed]
    inserted = 0
    if written or removed_with_sources:
        inserted = sql.replace_results(
            warehouse, labelled.source, written, removed_with_sources, run_id=run_id, at=at
        )
    return IncrementalEvaluation(
        labelled_source=labelled.source,
        report=EvaluationReport(run_id=run_id, labelled_source=labelled.source, results=results),
        evaluated=[u for u in changed if u.describe() not in skipped],
        unchanged=unchanged,
        removed=removed,
        skipped=skipped,
        rows_written=inserted,
    )
