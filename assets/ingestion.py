"""The `images` asset: one drop's files hashed, decoded and recorded in the warehouse."""

import dagster as dg
from pydantic import Field

from assets.metadata import GROUP, column_schema, counts_markdown, definition_schema, preview_table
from assets.quality import record_and_report
from core.ingest import checks
from core.ingest.accounting import account_for_drop
from core.ingest.decode import DecodeLimits
from core.ingest.ingest import (
    DropIngestor,
    IngestOptions,
    IngestReport,
    default_workers,
    recorded_paths,
)
from core.ingest.scan import DropRef, is_loose_drop_id
from core.ingest.summary import drop_rows
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource

NOTHING_LOST_CHECK = checks.NOTHING_LOST
UNIQUE_IMAGE_ID_CHECK = checks.UNIQUE_IMAGE_ID
REJECTION_RATE_CHECK = checks.REJECTION_RATE
PREVIEW_ROWS = 20
REJECTED_ROWS = 100  # rejected files named in the metadata, each with its reason and message


class IngestConfig(dg.Config):
    files: list[str] | None = Field(
        default=None,
        description="Loose drops only: the files the sensor grouped, relative to the drop root.",
    )
    workers: int = Field(default_factory=default_workers, description="Hash/decode threads.")
    batch_size: int = Field(default=1024, ge=1, description="Most files written per transaction.")
    batch_mb: float = Field(default=256, gt=0, description="Most file megabytes per transaction.")
    max_file_mb: float = Field(default=256, gt=0, description="Larger files are `too_large`.")
    max_megapixels: float = Field(
        default=150,
        gt=0,
        description="Larger canvases are `too_large` (this limit applies, also above Pillow's "
        "own default of 178.9).",
    )
    max_aspect_ratio: float = Field(
        default=50,
        ge=1,
        description="Images whose longer side is more than this many times the shorter are "
        "`extreme_aspect_ratio` (a model's resize would blow them up).",
    )
    max_rejection_rate: float = Field(
        default=0.2, ge=0, le=1, description="Warn when more of the drop's files are rejected."
    )

    def options(self) -> IngestOptions:
        limits = DecodeLimits(
            max_bytes=int(self.max_file_mb * 1024 * 1024),
            max_pixels=int(self.max_megapixels * 1_000_000),
            max_aspect_ratio=self.max_aspect_ratio,
        )
        return IngestOptions(
            limits=limits,
            workers=self.workers,
            batch_size=self.batch_size,
            batch_bytes=int(self.batch_mb * 1024 * 1024),
        )


def resolve_drop(drop_id: str, files: list[str] | None, warehouse: Warehouse) -> DropRef:
    if not is_loose_drop_id(drop_id):
        return DropRef.folder(drop_id)
    files = files or recorded_paths(warehouse, drop_id)
    if not files:
        raise dg.Failure(
            f"loose drop {drop_id!r} has no file list: launch it from the drop sensor's run, or "
            "re-execute that run, so its `files` config comes along"
        )
    return DropRef.loose(drop_id, files)


def _metadata(report: IngestReport, warehouse: Warehouse) -> dict[str, object]:
    rows = drop_rows(
        warehouse, report.drop_id, preview_rows=PREVIEW_ROWS, rejected_rows=REJECTED_ROWS
    )
    mb_per_s = report.bytes_read / 1e6 / report.seconds if report.seconds else 0.0
    return {
        "dagster/row_count": rows.images_total,
        "dagster/partition_row_count": rows.image_files,
        "dagster/column_schema": column_schema(warehouse, "images"),
        "dagster/table_name": "images",
        "files_seen": report.files_seen,
        "files_unchanged": report.files_unchanged,
        "files_processed": report.files_processed,
        "images_new": report.images_new,
        "files_duplicate": report.files_duplicate,
        "files_rejected_in_drop": rows.rejected_files,
        "rejected_this_run": counts_markdown(report.rejected, key="reason"),
        "files_vanished": len(report.vanished_paths),
        "files_per_s": dg.MetadataValue.float(round(report.files_per_s, 2)),
        "mb_per_s": dg.MetadataValue.float(round(mb_per_s, 2)),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "preview": preview_table(rows.preview),
        "rejected_preview": preview_table(rows.rejected_preview),
        "rejected_not_shown": max(0, rows.rejected_files - rows.rejected_preview.height),
    }


@dg.asset(
    partitions_def=image_drops,
    group_name=GROUP,
    kinds={"duckdb", "python"},
    metadata=definition_schema("images"),
    check_specs=[
        dg.AssetCheckSpec(
            NOTHING_LOST_CHECK,
            asset="images",
            blocking=True,
            description="Every file seen in the drop has exactly one image_files or rejected_files row.",
        ),
        dg.AssetCheckSpec(
            UNIQUE_IMAGE_ID_CHECK,
            asset="images",
            blocking=True,
            description="Image ids are SHA-256 hex, unique, and each first seen at exactly one path.",
        ),
        dg.AssetCheckSpec(
            REJECTION_RATE_CHECK,
            asset="images",
            description="Warns when the share of rejected files exceeds `max_rejection_rate`.",
        ),
    ],
)
def images(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    warehouse: WarehouseResource,
    drop_folder: DropFolderResource,
) -> dg.MaterializeResult:
    """Decoded, deduplicated images of one drop (`images`, `image_files`, `rejected_files`)."""
    store = warehouse.get()
    drop = resolve_drop(context.partition_key, config.files, store)
    ingestor = DropIngestor(store, drop_folder.path, config.options(), log=context.log.info)
    report = ingestor.ingest(drop)
    accounting = account_for_drop(store, drop.drop_id, report.seen_paths, report.seen_entries)
    if report.vanished_paths:
        context.log.warning(
            f"{len(report.vanished_paths)} files recorded earlier are gone from the drop; "
            f"their rows are kept, marked vanished_at (first: {report.vanished_paths[:5]})"
        )
    outcomes = [
        checks.nothing_lost(accounting),
        checks.unique_image_ids(store, drop.drop_id),
        checks.rejection_rate(store, drop.drop_id, max_rate=config.max_rejection_rate),
    ]
    results = record_and_report(context, store, outcomes, asset="images")
    return dg.MaterializeResult(metadata=_metadata(report, store), check_results=results)
