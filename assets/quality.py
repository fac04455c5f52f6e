"""Turn check outcomes (`core.quality.outcome`) into asset check results and record them in SQL."""

from collections.abc import Iterable, Mapping

import dagster as dg

from core.quality.metrics import ConfusionMatrix
from core.quality.outcome import CheckOutcome, record_outcomes
from core.quality.plots import confusion_markdown
from core.warehouse import Warehouse

_SEVERITY = {"ERROR": dg.AssetCheckSeverity.ERROR, "WARN": dg.AssetCheckSeverity.WARN}


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
        lines.append(
            f"| {mark}{subject}{mark} | {'yes' if part['passed'] else 'no'} | {value} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def check_metadata(outcome: CheckOutcome) -> dict[str, object]:
    """What the UI's check panel shows: a one-line summary, the value (plotted over time) and
    its bound as text, counts, per-subject results of a folded check, and a sample."""
    metadata: dict[str, object] = {"summary": dg.MetadataValue.text(outcome.summary)}
    if outcome.value is not None:
        metadata["value"] = dg.MetadataValue.float(float(outcome.value))
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
        metadata["offending_sample"] = dg.MetadataValue.json(outcome.offending)
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
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.check_name,
        asset_key=dg.AssetKey(asset_key) if isinstance(asset_key, str) else asset_key,
        passed=outcome.passed,
        severity=_SEVERITY[outcome.severity],
        description=outcome.summary,
        metadata={**check_metadata(outcome), **(extra_metadata or {})},
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
    return [
        as_check_result(outcome, extra_metadata=extra.get(outcome.check_name))
        for outcome in outcomes
    ]
