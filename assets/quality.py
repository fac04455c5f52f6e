"""Turn check outcomes (`core.quality.outcome`) into asset check results and record them in SQL."""

from collections.abc import Iterable, Mapping

import dagster as dg

from assets.metadata import records_table
from core.quality.metrics import ConfusionMatrix
from core.quality.outcome import (
    CheckOutcome,
    offending_paths,
    readable_offending,
    record_outcomes,
)
from core.quality.plots import confusion_markdown
from core.warehouse import Warehouse

_SEVERITY = {"ERROR": dg.AssetCheckSeverity.ERROR, "WARN": dg.AssetCheckSeverity.WARN}
# What `Show schema` says about the offending sample's common columns.
OFFENDING_COLUMNS = {
    "path": "the image's file in this drop (else where it was first seen)",
    "other_path": "the other image of the pair",
    "image_id": "start of the image's SHA-256 (no file of it is recorded)",
}


def threshold_text(outcome: CheckOutcome) -> str | None:
    """The bound as a sentence: text, since a constant plotted over time is only noise."""
    if outcome.threshold is None:
        return None
    verb = "fails" if outcome.severity == "ERROR" else "warns"
    side = "below" if outcome.better == "higher" else "above"
    return f"{verb} {side} {outcome.threshold:g}"


def subjects_markdown(outcome: CheckOutcome) -> str | None:
    """A folded outcome's subjects as a table: each one's result, value and own counts."""
    subjects = outcome.details.get("subjects")
    if not subjects:
        return None
    names = list(dict.fromkeys(n for part in subjects.values() for n in part["counts"]))
    key = outcome.details.get("subject_key", "subject")
    lines = [
        "| " + " | ".join([key, "passed", "value", *names]) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for subject, part in subjects.items():
        value = "" if part["value"] is None else f"{part['value']:.4g}"
        cells = [str(part["counts"].get(n, "")) for n in names]
        mark = "**" if subject == outcome.details.get("worst") else ""
        passed = "skipped" if part.get("skipped") else "yes" if part["passed"] else "no"
        lines.append(f"| {mark}{subject}{mark} | {passed} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(outcome: CheckOutcome) -> str:
    """The result in words, a warning called a warning (Dagster labels every failure "Failed",
    a WARN one in yellow), a check without enough data "skipped"."""
    if outcome.skipped:
        return f"skipped: {outcome.skipped}"
    if outcome.passed:
        return "passed"
    return "warning: worth a look, the run goes on" if outcome.severity == "WARN" else "failed"


def description(outcome: CheckOutcome, drop: str | None) -> str:
    """The check's one line in the UI, naming the drop (the check panel's Partition column
    stays empty: the checks are not partitioned) and calling a warning a warning."""
    text = outcome.summary
    if not outcome.passed and outcome.severity == "WARN":
        text = f"warning: {text}"
    return f"drop {drop} · {text}" if drop else text


def check_metadata(
    outcome: CheckOutcome, *, drop: str | None = None, paths: Mapping[str, str] | None = None
) -> dict[str, object]:
    """What the UI's check panel shows: the drop, the result in words, a one-line summary, the
    value (plotted over time, 4 significant digits) and its bound as text, counts, per-subject
    results of a folded check, and a sample of offending rows as a table with file paths
    (`paths`: image_id -> path)."""
    metadata: dict[str, object] = {
        "outcome": dg.MetadataValue.text(verdict(outcome)),
        "summary": dg.MetadataValue.text(outcome.summary),
    }
    if drop:
        metadata["drop"] = dg.MetadataValue.text(drop)
    if outcome.value is not None:
        metadata["value"] = dg.MetadataValue.float(float(f"{outcome.value:.4g}"))
    if (bound := threshold_text(outcome)) is not None:
        metadata["threshold"] = dg.MetadataValue.text(bound)
    for name, count in outcome.counts.items():
        metadata[name] = dg.MetadataValue.int(int(count))
    for name, setting in outcome.details.get("settings", {}).items():
        metadata[name] = dg.MetadataValue.text(str(setting))
    if (table := subjects_markdown(outcome)) is not None:
        metadata["worst_subject"] = dg.MetadataValue.text(str(outcome.details.get("worst")))
        metadata["subjects"] = dg.MetadataValue.md(table)
    if outcome.offending:
        rows = readable_offending(outcome.offending, paths or {})
        columns = dict.fromkeys(key for row in rows for key in row)
        metadata["offending_sample"] = records_table(
            rows, {name: OFFENDING_COLUMNS.get(name, "") for name in columns}
        )
    parts = outcome.details.get("parts") or {"": outcome.details}
    confusion, distribution = [], []
    for subject, details in parts.items():
        heading = f"**{subject}**\n\n" if subject else ""
        if "confusion" in details:
            matrix = ConfusionMatrix.model_validate(details["confusion"])
            confusion.append(
                heading + confusion_markdown(matrix, true_axis="clip", predicted_axis="vlm")
            )
        if "categories" in details:  # drift: the two distributions side by side
            lines = ["| label | this drop | earlier drops |", "|---|---:|---:|"]
            lines += [
                f"| {c} | {details['current'][c]} | {details['reference'][c]} |"
                for c in details["categories"]
            ]
            distribution.append(heading + "\n".join(lines))
    if confusion:
        metadata["confusion"] = dg.MetadataValue.md("\n\n".join(confusion))
    if distribution:
        metadata["distribution"] = dg.MetadataValue.md("\n\n".join(distribution))
    return metadata


def as_check_result(
    outcome: CheckOutcome,
    *,
    asset_key: dg.AssetKey | str | None = None,
    extra_metadata: Mapping[str, object] | None = None,
    drop: str | None = None,
    paths: Mapping[str, str] | None = None,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.check_name,
        asset_key=dg.AssetKey(asset_key) if isinstance(asset_key, str) else asset_key,
        passed=outcome.passed,
        severity=_SEVERITY[outcome.severity],
        description=description(outcome, drop),
        metadata={
            **check_metadata(outcome, drop=drop, paths=paths),
            **(extra_metadata or {}),
        },
    )


def record_and_report(
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    outcomes: Iterable[CheckOutcome],
    *,
    asset: str,
    extra_metadata: Mapping[str, Mapping[str, object]] | None = None,
) -> list[dg.AssetCheckResult]:
    """Write outcomes to `quality_results` (keyed by run, asset, check, partition) and convert them."""
    outcomes = list(outcomes)
    partitioned = context.assets_def.partitions_def is not None
    partition = context.partition_key if partitioned and context.has_partition_key else None
    record_outcomes(
        warehouse, outcomes, run_id=context.run.run_id, asset=asset, partition=partition
    )
    extra = extra_metadata or {}
    paths = offending_paths(warehouse, partition, [r for o in outcomes for r in o.offending])
    return [
        as_check_result(
            outcome,
            extra_metadata=extra.get(outcome.check_name),
            drop=partition,
            paths=paths,
        )
        for outcome in outcomes
    ]
