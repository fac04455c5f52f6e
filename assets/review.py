"""Find and fix: the review queue of a drop, and the drop's page and contact sheet."""

import dagster as dg
from pydantic import Field

from assets.evaluation import label_agreement
from assets.metadata import GROUP, column_schema, counts_markdown, definition_schema, preview_table
from assets.quality import record_and_report
from core.clip.near_duplicates import DEFAULT_THRESHOLD
from core.quality.outcome import CheckOutcome
from core.review import gallery, queue
from orchestration.partitions import image_drops
from resources.drop_folder import DropFolderResource
from resources.reports import ReportsResource, reports_dir
from resources.warehouse import WarehouseResource

QUEUE_CONSISTENT_CHECK = queue.QUEUE_CONSISTENT
QUEUE_FLAGGED_SHARE_CHECK = queue.QUEUE_FLAGGED_SHARE
DROP_PAGE_THUMBNAILS_CHECK = "drop_page_thumbnails"
PREVIEW_ROWS = 20


class ReviewQueueConfig(dg.Config):
    top_n: int = Field(
        default=queue.DEFAULT_TOP_N, ge=0, description="The queue holds at least this many."
    )
    top_fraction: float = Field(
        default=queue.DEFAULT_TOP_FRACTION,
        ge=0,
        le=1,
        description="...or this share of the drop's images, whichever is larger.",
    )
    margin_threshold: float = Field(
        default=queue.DEFAULT_MARGIN_THRESHOLD,
        gt=0,
        le=1,
        description="A zero-shot top-1 minus top-2 probability below this is a low margin.",
    )
    near_duplicate_threshold: float = Field(
        default=DEFAULT_THRESHOLD, ge=-1, le=1, description="Cosine at or above: near-duplicates."
    )
    max_flagged_share: float = Field(
        default=queue.DEFAULT_MAX_FLAGGED_SHARE,
        ge=0,
        le=1,
        description="Warn when more of the drop than this has a reason to review.",
    )


@dg.asset(
    partitions_def=image_drops,
    deps=[label_agreement],
    group_name=GROUP,
    kinds={"duckdb", "python"},
    metadata=definition_schema("review_queue"),
    check_specs=[
        dg.AssetCheckSpec(
            QUEUE_CONSISTENT_CHECK,
            asset="review_queue",
            description="Queue rows are images of the drop, each with a reason, ranked by score, "
            "no more than the configured size.",
        ),
        dg.AssetCheckSpec(
            QUEUE_FLAGGED_SHARE_CHECK,
            asset="review_queue",
            description="Warns when more than `max_flagged_share` of the drop has a reason to "
            "review: the labels of the whole drop are suspect.",
        ),
    ],
)
def review_queue(
    context: dg.AssetExecutionContext, config: ReviewQueueConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The drop's images ranked by how likely their labels are wrong, with the reasons as
    columns (table `review_queue`, rewritten per drop); export it to Label Studio."""
    store = warehouse.get()
    options = queue.QueueOptions(
        top_n=config.top_n,
        top_fraction=config.top_fraction,
        margin_threshold=config.margin_threshold,
        near_duplicate_threshold=config.near_duplicate_threshold,
    )
    report = queue.compute_queue(store, context.partition_key, options)
    written = queue.write_queue(store, report)
    outcomes: list[CheckOutcome] = queue.queue_checks(
        store, report, max_flagged_share=config.max_flagged_share
    )
    metadata: dict[str, object] = {
        "dagster/table_name": "review_queue",
        "dagster/partition_row_count": written,
        "dagster/column_schema": column_schema(store, "review_queue"),
        "images_in_drop": report.images,
        "flagged": report.flagged,
        "queue_cap": report.size,
        "reasons": counts_markdown(report.reason_counts, key="reason", value="images"),
        "clip_model_id": report.clip_model_id or "none",
        "vlm_model_id": report.vlm_model_id or "none",
    }
    if report.frame is not None and report.frame.height:
        head = report.frame.head(PREVIEW_ROWS)
        # two tables, each narrow enough for the metadata panel
        metadata["preview"] = preview_table(
            head.select("rank", "path", "score", "reasons", "failed_tasks")
        )
        metadata["preview · disagreements"] = preview_table(
            head.select("rank", "path", "disagree_fields")
        )
    results = record_and_report(context, store, outcomes, asset="review_queue")
    return dg.MaterializeResult(metadata=metadata, check_results=results)


class DropPageConfig(dg.Config):
    max_images: int = Field(
        default=gallery.DEFAULT_MAX_IMAGES,
        ge=1,
        description="Most images on the page: the whole queue, then a fixed sample of the rest.",
    )
    sheet_images: int = Field(
        default=gallery.DEFAULT_SHEET_IMAGES, ge=1, description="Most images on the sheet."
    )


@dg.asset(
    partitions_def=image_drops,
    deps=[review_queue],
    group_name=GROUP,
    kinds={"html"},
    check_specs=[
        dg.AssetCheckSpec(
            DROP_PAGE_THUMBNAILS_CHECK,
            asset="drop_page",
            description="Warns when images on the page have no thumbnail (their file is "
            "unreadable now).",
        )
    ],
)
def drop_page(
    context: dg.AssetExecutionContext,
    config: DropPageConfig,
    warehouse: WarehouseResource,
    drop_folder: DropFolderResource,
    reports: ReportsResource,
) -> dg.MaterializeResult:
    """A picture of the drop: a contact sheet (in this metadata) and a static HTML page with
    every image's labels per task, the check outcomes and the review queue first; `page_url`
    opens it from the UI through `make ui`'s reports server."""
    store = warehouse.get()
    folder = reports_dir(store.local_dir)
    report = gallery.build_gallery(
        store,
        drop_folder.path,
        context.partition_key,
        folder,
        max_images=config.max_images,
        sheet_images=config.sheet_images,
        log=context.log.warning,
    )
    outcome = CheckOutcome(
        check_name=DROP_PAGE_THUMBNAILS_CHECK,
        passed=report.thumb_failures == 0,
        severity="WARN",
        summary=f"{report.images_shown - report.thumb_failures} of {report.images_shown} "
        "images on the page have a thumbnail",
        value=float(report.thumb_failures),
        threshold=0.0,
        counts={"shown": report.images_shown, "failures": report.thumb_failures},
    )
    metadata: dict[str, object] = {
        "contact_sheet": dg.MetadataValue.md(gallery.sheet_markdown(report.sheet_png)),
        "contact_sheet_path": dg.MetadataValue.path(str(report.sheet)),
        "page": dg.MetadataValue.path(str(report.page)),
        "page_url": dg.MetadataValue.url(reports.link(report.page, folder)),
        "images_in_drop": report.images_in_drop,
        "images_shown": report.images_shown,
        "queue_shown": report.queue_shown,
        "thumbnails_made": report.thumbs_made,
        "thumbnails_reused": report.thumbs_reused,
    }
    results = record_and_report(context, store, [outcome], asset="drop_page")
    return dg.MaterializeResult(metadata=metadata, check_results=results)
