"""Quality assets downstream of both labellers: CLIP/VLM agreement per drop (`label_agreement`),
and the evaluation against labelled sets (`evaluations`), which each run brings up to date by
evaluating only what changed since the last one."""

from contextlib import ExitStack
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.embeddings import CLIP_POOL, clip_zero_shot
from assets.extraction import vlm_extractions
from assets.metadata import GROUP, definition_schema
from assets.quality import record_and_report
from core.clip.loading import ClipModel
from core.quality import cross_stage as checks
from core.quality.agreement import FieldAgreement, drop_agreement, write_agreement
from core.quality.evaluation import (
    ECE,
    KIND_METRICS,
    STANDIN_NOTE,
    IncrementalEvaluation,
    evaluate_changed,
    is_standin,
)
from core.quality.evaluation_store import (
    current_confusions,
    current_results,
    evaluation_row_count,
)
from core.quality.labelled import LabelledSet, count_by_field
from core.quality.metrics import ConfusionMatrix
from core.quality.outcome import CheckOutcome, merge_outcomes
from core.quality.plots import confusion_inline_markdown
from core.review.store import human_labelled_set
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.clip_model import ClipModelResource
from resources.labelled_set import LabelledSetResource
from resources.warehouse import WarehouseResource

AGREEMENT_CHECK = checks.AGREEMENT
LABELLED_INGESTED_CHECK = checks.LABELLED_INGESTED


class AgreementConfig(dg.Config):
    min_rate: float = Field(
        default=0.5, ge=0, le=1, description="Warn when CLIP and the VLM agree on fewer images."
    )


def _table(records: list[dict], columns: list[tuple[str, str, str]]) -> dg.MetadataValue:
    """A Dagster table: (name, type, description) columns; the UI renders it inline."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description=text) for name, kind, text in columns]
    )
    return dg.MetadataValue.table([dg.TableRecord(r) for r in records], schema=schema)


def _agreement_metadata(agreements: list[FieldAgreement]) -> dict[str, object]:
    metadata: dict[str, object] = {
        "agreement": _table(
            [
                {
                    "field": a.field,
                    "clip model": a.clip_model_id,
                    "vlm model": a.vlm_model_id,
                    "images": a.images_compared,
                    "agreed": a.agreed,
                    "rate": None if a.outcome.value is None else round(a.outcome.value, 4),
                    "measure": a.measure,
                }
                for a in agreements
            ],
            [
                ("field", "string", "labelled field both CLIP and the VLM predict"),
                ("clip model", "string", "CLIP model that labelled most of the drop"),
                ("vlm model", "string", "VLM model that labelled most of the drop"),
                ("images", "int", "images both labelled"),
                ("agreed", "int", "images where CLIP's label (set) equals the VLM's"),
                ("rate", "float", "agreed / images; multi-label: mean Jaccard of the sets"),
                ("measure", "string", "exact (single choice) or jaccard (multi-label)"),
            ],
        )
    }
    for a in agreements:
        if a.outcome.value is not None:  # one float per field: the UI plots it over drops
            metadata[f"{a.field} agreement"] = dg.MetadataValue.float(round(a.outcome.value, 4))
        if a.confusion is not None and a.images_compared:
            metadata[f"{a.field} confusion"] = dg.MetadataValue.md(
                confusion_inline_markdown(
                    a.confusion,
                    caption=f"CLIP `{a.clip_model_id}` vs VLM `{a.vlm_model_id}`, "
                    f"{a.images_compared} images",
                    true_axis="clip",
                    predicted_axis="vlm",
                )
            )
        if a.per_value and a.images_compared:
            metadata[f"{a.field} per value"] = dg.MetadataValue.md(
                "| value | both | CLIP only | VLM only |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {value} | {c['both']} | {c['clip_only']} | {c['vlm_only']} |"
                    for value, c in a.per_value.items()
                )
            )
    return metadata


@dg.asset(
    partitions_def=image_drops,
    deps=[clip_zero_shot, vlm_extractions],
    group_name=GROUP,
    kinds={"duckdb", "python"},
    check_specs=[
        dg.AssetCheckSpec(
            AGREEMENT_CHECK,
            asset="label_agreement",
            description="Warns when CLIP zero-shot's top label equals the VLM's value on fewer "
            "than `min_rate` of the drop's images (multi-label fields: when the mean Jaccard "
            "of the two sets is below it), on each field of the labeling spec with CLIP-vs-VLM "
            "agreement.",
        )
    ],
)
def label_agreement(
    context: dg.AssetExecutionContext, config: AgreementConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """How often the two labellers agree on the fields both produce, per drop and field
    (`label_agreement` table, with confusion matrices): a drop where a cheap CLIP baseline and
    the VLM disagree a lot deserves a look."""
    store = warehouse.get()
    drop_id = context.partition_key
    agreements = drop_agreement(store, drop_id, config.min_rate)
    rows = write_agreement(store, drop_id, agreements, run_id=context.run.run_id)
    metadata = {
        "dagster/table_name": "label_agreement",
        "dagster/partition_row_count": rows,
        **_agreement_metadata(agreements),
    }
    results = record_and_report(
        context,
        store,
        merge_outcomes({a.field: [a.outcome] for a in agreements}, key="field"),
        asset="label_agreement",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=results)


RESULT_COLUMNS = {
    "field": ("string", "labelled field"),
    "model": ("string", "model_id of the predictions"),
    "n": ("int", "labelled images with a prediction: what the metrics are over"),
    "coverage": ("float", "n / labelled images of the field"),
    "accuracy": ("float", "share of exact answers"),
    "macro_f1": ("float", "F1 averaged over the classes present"),
    "adjacent": ("float", "answer within one bin (ordinal fields; cannot_tell left out)"),
    "f1": ("float", "yes/no fields: F1 of yes"),
    "micro_f1": ("float", "multi-label: F1 over every value's counts pooled"),
    "subset_accuracy": ("float", "multi-label: share of exactly right sets"),
    "jaccard": ("float", "multi-label: mean |truth & answer| / |truth | answer|"),
    "mae": ("float", "integer and number fields: mean absolute error"),
    "ece": (
        "float",
        "VLM: expected calibration error of its per-field confidence (10 bins; the bins are in "
        "evaluations.details)",
    ),
    "top1": ("float", "zero-shot kNN top-1 accuracy"),
    "top5": ("float", "zero-shot kNN top-5 accuracy (label sets of more than 5 classes)"),
    "this run": ("bool", "evaluated by this run (its inputs changed); else as of an earlier run"),
}
# Column names as the panel shows them: short where the metric's name would widen the table.
SHORT = {"adjacent_accuracy": "adjacent", ECE: "ece"}
METRICS = (
    "coverage",
    "accuracy",
    "macro_f1",
    "adjacent",
    *(SHORT.get(name, name) for name in KIND_METRICS),
    "top1",
    "top5",
)


def set_name(source: str) -> str:
    """A labelled set as a person reads it: `human_labels`, or its path relative to the working
    directory (the repository for `make ui`) when it lies below it."""
    try:
        return Path(source).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return source


def _result_tables(records: list[dict], suffix: str) -> dict[str, object]:
    """One table per source (clip_zero_shot, vlm, knn) of one labelled set, with only the
    metrics that source has: narrow enough for the metadata panel, nothing repeated per row."""
    tables: dict[str, object] = {}
    for source in dict.fromkeys(r["source"] for r in records):
        rows = [r for r in records if r["source"] == source]
        names = ["field", "model", "n"]
        names += [m for m in METRICS if any(r[m] is not None for r in rows)]
        names.append("this run")
        tables[f"{source} results{suffix}"] = _table(
            [{name: row[name] for name in names} for row in rows],
            [(name, *RESULT_COLUMNS[name]) for name in names],
        )
    return tables


def _results_metadata(store: Warehouse, run_id: str, sets: list[LabelledSet]) -> dict:
    metadata: dict[str, object] = {}
    for labelled in sets:
        name = set_name(labelled.source)
        suffix = f" · {name}" if len(sets) > 1 else ""
        metadata[f"labelled set{suffix}"] = dg.MetadataValue.text(name)
        records = [
            {
                "source": row["source"],
                "field": row["field"],
                "model": row["model"],
                "n": row["n"],
                "coverage": row["coverage"],
                "accuracy": row["accuracy"],
                "macro_f1": row["macro_f1"],
                "adjacent": row["adjacent_accuracy"],
                **{SHORT.get(name, name): row[name] for name in KIND_METRICS},
                "top1": row["top1"],
                "top5": row["top5"],
                "this run": row["run_id"] == run_id,
            }
            for row in current_results(store, labelled.source).iter_rows(named=True)
        ]
        metadata |= _result_tables(records, suffix)
        standins = sorted({r["model"] for r in records if is_standin(r["model"])})
        if standins:
            metadata[f"warning{suffix}"] = dg.MetadataValue.text(
                f"{STANDIN_NOTE} ({', '.join(standins)})"
            )
        metadata[f"labelled images{suffix}"] = _table(
            [
                {"field": field, "labels": len(counts), "images": sum(counts.values())}
                for field, counts in sorted(count_by_field(labelled).items())
            ],
            [
                ("field", "string", "labelled field"),
                ("labels", "int", "distinct labels used"),
                ("images", "int", "labelled images"),
            ],
        )
    for labelled in sets:
        confusions = current_confusions(store, labelled.source)
        per_slot: dict[tuple[str, str], int] = {}
        for field, source, _, _, _ in confusions:
            per_slot[(field, source)] = per_slot.get((field, source), 0) + 1
        for field, source, model_id, n, matrix in confusions:
            key = f"{field} · {source}"
            if per_slot[(field, source)] > 1:
                key += f" · {model_id}"
            if labelled.source == "human_labels":
                key += " · human labels"
            metadata[key] = dg.MetadataValue.md(
                confusion_inline_markdown(
                    ConfusionMatrix.model_validate(matrix), caption=f"`{model_id}`, n={n}"
                )
            )
    return metadata


@dg.asset(
    deps=[clip_zero_shot, vlm_extractions],
    group_name=GROUP,
    kinds={"duckdb", "python"},
    pool=CLIP_POOL,  # it may load CLIP (kNN over ImageNet classes): on CUDA, in the `gpu` pool
    metadata=definition_schema("evaluations"),
    check_specs=[
        dg.AssetCheckSpec(
            LABELLED_INGESTED_CHECK,
            asset="evaluation",
            description="Warns when labelled images were never ingested: they have no "
            "predictions and the metrics are over fewer images than labelled.",
        )
    ],
)
def evaluation(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    labelled_set: LabelledSetResource,
    clip_model: ClipModelResource,
) -> dg.MaterializeResult:
    """The metric of each field kind (single choice: accuracy, macro-F1, confusion; ordinal:
    adjacent-bin accuracy; multi-label: per-value and micro/macro F1, subset accuracy, Jaccard;
    yes/no: F1; integer and number: MAE) and zero-shot kNN top-k of every model against
    the labelled set and against `human_labels` (`evaluations`, one current row per labelled
    set, model, task, field, source and metric). Only what changed since the last run is
    evaluated: a unit's inputs are fingerprinted in `evaluation_inputs`."""
    store = warehouse.get()
    labelled = labelled_set.load()
    human = human_labelled_set(store)  # reviews imported from Label Studio, a second set
    if labelled is None and human is None:
        outcome = CheckOutcome(
            check_name=LABELLED_INGESTED_CHECK,
            passed=True,
            severity="WARN",
            summary="no labelled set configured (IMAGE_PIPELINE_LABELLED) and no human_labels: "
            "nothing evaluated",
        )
        results = record_and_report(context, store, [outcome], asset="evaluation")
        return dg.MaterializeResult(
            metadata={"labelled set": "none configured"}, check_results=results
        )
    spec = clip_model.spec()
    identity = f"{spec.derived_model_id()}|standin_fallback={clip_model.allow_standin_fallback}"
    sets = [s for s in (labelled, human) if s is not None]
    runs: list[IncrementalEvaluation] = []
    with ExitStack() as held:  # CLIP, when a unit needs it, is released before the step ends
        clip: list[ClipModel] = []

        def load_clip() -> ClipModel:
            if not clip:
                clip.append(
                    held.enter_context(
                        clip_model.loaded(info=context.log.info, warn=context.log.warning)
                    )
                )
            return clip[0]

        for labelled_items in sets:
            run = evaluate_changed(
                store,
                labelled_items,
                run_id=context.run.run_id,
                load_clip=load_clip,
                clip_identity=identity,
            )
            context.log.info(f"{labelled_items.source}: {run.summary}")
            for unit, reason in run.skipped.items():
                context.log.warning(f"{unit}: not evaluated, {reason}")
            runs.append(run)
        clip.clear()
    metadata: dict[str, object] = {
        "dagster/table_name": "evaluations",
        "dagster/row_count": evaluation_row_count(store),
        "summary": dg.MetadataValue.md(
            "\n".join(f"- `{set_name(run.labelled_source)}`: {run.summary}" for run in runs)
        ),
        "evaluated": sum(len(run.evaluated) for run in runs),
        "unchanged": sum(len(run.unchanged) for run in runs),
        "rows_written": sum(run.rows_written for run in runs),
        **_results_metadata(store, context.run.run_id, sets),
    }
    if labelled is None:
        outcome = CheckOutcome(
            check_name=LABELLED_INGESTED_CHECK,
            passed=True,
            severity="WARN",
            summary="no labelled set configured; evaluated against human_labels only",
        )
    else:
        outcome = checks.labelled_images_ingested(
            store, {item.image_id: item.path for item in labelled.items}
        )
    results = record_and_report(context, store, [outcome], asset="evaluation")
    return dg.MaterializeResult(metadata=metadata, check_results=results)
