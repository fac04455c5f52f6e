"""Quality assets downstream of both labellers: CLIP/VLM agreement per drop, and the evaluation
against a labelled set (all drops, one row set per run in `evaluations`)."""

import dagster as dg
from pydantic import Field

from assets.embeddings import clip_zero_shot
from assets.extraction import vlm_extractions
from assets.metadata import definition_schema
from assets.quality import record_and_report
from core.quality import checks
from core.quality.checks import CheckOutcome, LabelSource
from core.quality.evaluation import EvaluationReport, evaluate, write_evaluations
from core.quality.fields import AGREEMENT_FIELDS, FIELDS
from core.quality.labelled import LabelledSet, count_by_field
from core.quality.metrics import ConfusionMatrix
from core.quality.plots import confusion_metadata_markdown
from core.review.store import human_labelled_set
from core.tasks.registry import TASKS
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.labelled_set import LabelledSetResource
from resources.warehouse import WarehouseResource

AGREEMENT_CHECK = checks.AGREEMENT
LABELLED_INGESTED_CHECK = checks.LABELLED_INGESTED


class AgreementConfig(dg.Config):
    min_rate: float = Field(
        default=0.5, ge=0, le=1, description="Warn when CLIP and the VLM agree on fewer images."
    )


def agreement_outcome(
    store: Warehouse, drop_id: str, field_name: str, min_rate: float
) -> CheckOutcome:
    """Agreement on one field between the CLIP and VLM models that labelled most of the drop
    (current task version); passes with a note when either side has no labels yet."""
    field = FIELDS[field_name]
    task = TASKS[field.task or ""]
    clip_models = checks.models_of_drop(
        store, drop_id, LabelSource.zero_shot(field.zero_shot_label_set or "", "")
    )
    vlm_models = checks.models_of_drop(
        store,
        drop_id,
        LabelSource.task_field(task.name, field.column or "", "", task.fingerprint),
    )
    if not clip_models or not vlm_models:
        return CheckOutcome(
            check_name=AGREEMENT_CHECK,
            passed=True,
            severity="WARN",
            summary=f"{field_name}: nothing to compare (CLIP models {clip_models}, "
            f"VLM models {vlm_models})",
        )
    return checks.agreement(
        store,
        drop_id,
        field,
        clip_model_id=clip_models[0],
        vlm_model_id=vlm_models[0],
        task_fingerprint=task.fingerprint,
        min_rate=min_rate,
    )


@dg.asset(
    partitions_def=image_drops,
    deps=[clip_zero_shot, vlm_extractions],
    group_name="quality",
    kinds={"duckdb", "python"},
    check_specs=[
        dg.AssetCheckSpec(
            AGREEMENT_CHECK,
            asset="label_agreement",
            description="Warns when CLIP zero-shot's top label equals the VLM's value on fewer "
            "than `min_rate` of the drop's images (scenery; age group).",
        )
    ],
)
def label_agreement(
    context: dg.AssetExecutionContext, config: AgreementConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """How often the two labellers agree on the fields both produce, with confusion tables:
    a drop where a cheap CLIP baseline and the VLM disagree a lot deserves a look."""
    store = warehouse.get()
    drop_id = context.partition_key
    per_field = {
        name: [agreement_outcome(store, drop_id, name, config.min_rate)]
        for name in AGREEMENT_FIELDS
    }
    metadata: dict[str, object] = {}
    for name, (outcome,) in per_field.items():
        if outcome.value is not None:
            metadata[f"{name}/agreement_rate"] = dg.MetadataValue.float(round(outcome.value, 4))
        metadata[f"{name}/images_compared"] = outcome.counts.get("images_compared", 0)
        if "confusion" in outcome.details:
            markdown, _ = confusion_metadata_markdown(
                ConfusionMatrix.model_validate(outcome.details["confusion"]),
                title=f"{name}: CLIP zero-shot (rows) vs VLM (columns)",
                true_axis="clip",
                predicted_axis="vlm",
            )
            metadata[f"{name}/confusion"] = dg.MetadataValue.md(markdown)
    results = record_and_report(
        context,
        store,
        checks.merge_outcomes(per_field, key="field"),
        asset="label_agreement",
    )
    return dg.MaterializeResult(metadata=metadata, check_results=results)


@dg.asset(
    deps=[clip_zero_shot, vlm_extractions],
    group_name="quality",
    kinds={"duckdb", "python"},
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
) -> dg.MaterializeResult:
    """Accuracy, macro-F1, adjacent-bin accuracy and kNN top-k of every model against the
    labelled set and against `human_labels` (`evaluations`, keyed by run and labelled set):
    CLIP zero-shot and the VLM side by side."""
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
            metadata={"labelled_set": "none configured"}, check_results=results
        )
    metadata: dict[str, object] = {"dagster/table_name": "evaluations"}
    written = 0
    for labelled_items, prefix in ((labelled, ""), (human, "human_labels/")):
        if labelled_items is None:
            continue
        report = evaluate(store, labelled_items, run_id=context.run.run_id)
        written += write_evaluations(store, report)
        if report.banner and not prefix:
            context.log.warning(report.banner)
        metadata.update(_report_metadata(report, labelled_items, prefix))
    metadata["dagster/row_count"] = int(store.rows("SELECT count(*) FROM evaluations")[0][0])
    metadata["rows_written"] = written
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


def _report_metadata(
    report: EvaluationReport, labelled: LabelledSet, prefix: str
) -> dict[str, object]:
    """One labelled set's side-by-side table and confusion matrices, keys under `prefix`."""
    metadata: dict[str, object] = {
        f"{prefix}labelled_set": labelled.source,
        f"{prefix}labelled_per_field": dg.MetadataValue.json(count_by_field(labelled)),
        f"{prefix}side_by_side": dg.MetadataValue.md(
            report.markdown() or "nothing to evaluate yet"
        ),
    }
    if report.banner:
        metadata[f"{prefix}warning"] = dg.MetadataValue.text(report.banner)
    for result in report.results:
        if result.confusion is None:
            continue
        key = f"{result.field}/{result.source}/{result.model_id}"
        markdown, _ = confusion_metadata_markdown(
            result.confusion,
            title=f"{key} (n={result.n})",
            true_axis="labelled",
            predicted_axis="predicted",
        )
        lines = ["| class | labelled | predicted | correct | precision | recall | F1 |"]
        lines += ["|---|---:|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {c.label} | {c.support} | {c.predicted} | {c.correct} | {c.precision:.3f}"
            f" | {c.recall:.3f} | {c.f1:.3f} |"
            for c in result.per_class
            if c.support or c.predicted
        ]
        metadata[f"{prefix}confusion/{key}"] = dg.MetadataValue.md(
            markdown + "\n\n" + "\n".join(lines)
        )
    return metadata
