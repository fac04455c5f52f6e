"""Checks of the `images` asset: nothing lost, unique image ids, the rejection rate.

Each returns a `CheckOutcome` scoped to one drop; `assets/ingestion.py` declares them.
"""

from __future__ import annotations

from core.ingest.accounting import Accounting
from core.quality.outcome import SAMPLE_ROWS, CheckOutcome, records, scalar, share
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGES

NOTHING_LOST = "nothing_lost"
UNIQUE_IMAGE_ID = "unique_image_id"
REJECTION_RATE = "rejection_rate"


def nothing_lost(accounting: Accounting) -> CheckOutcome:
    """The ingest accounting (core/ingest/accounting.py) as an outcome."""
    return CheckOutcome(
        check_name=NOTHING_LOST,
        passed=accounting.balanced,
        severity="ERROR",
        summary=(
            f"{accounting.files_seen} files seen = {accounting.image_file_rows} image_files"
            f" + {accounting.rejected_rows} rejected_files rows"
            if accounting.balanced
            else f"{accounting.files_seen} files seen: {len(accounting.missing)} missing,"
            f" {len(accounting.in_both)} counted twice, {len(accounting.shared_keys)} row keys"
            " shared by several files"
        ),
        value=float(
            len(accounting.missing) + len(accounting.in_both) + len(accounting.shared_keys)
        ),
        threshold=0.0,
        counts={
            "files_seen": accounting.files_seen,
            "image_file_rows": accounting.image_file_rows,
            "rejected_rows": accounting.rejected_rows,
            "missing": len(accounting.missing),
            "counted_twice": len(accounting.in_both),
            "shared_keys": len(accounting.shared_keys),
        },
        offending=[{"path": p, "problem": "missing"} for p in accounting.missing[:SAMPLE_ROWS]]
        + [{"path": p, "problem": "counted_twice"} for p in accounting.in_both[:SAMPLE_ROWS]]
        + [{"path": p, "problem": "shared_key"} for p in accounting.shared_keys[:SAMPLE_ROWS]],
    )


def unique_image_ids(warehouse: Warehouse, drop_id: str) -> CheckOutcome:
    """Image ids of the drop are SHA-256 hex, unique in `images`, and first seen exactly once.

    `images` has a primary key, so the second clause guards against schema changes; the third
    catches an ingest bug that marks a known image as new again (two non-duplicate file rows).
    """
    params = {"drop": drop_id}
    with warehouse.reader() as conn:
        offending = records(
            conn,
            f"""
            WITH drop_images AS ({DROP_IMAGES}),
            problems AS (
                SELECT d.image_id, 'not a sha256 hex digest' AS problem FROM drop_images d
                WHERE NOT regexp_full_match(d.image_id, '[0-9a-f]{{64}}')
                UNION ALL
                SELECT i.image_id, 'repeated in images (' || count(*) || ' rows)'
                FROM images i JOIN drop_images USING (image_id) GROUP BY i.image_id
                HAVING count(*) > 1
                UNION ALL
                SELECT f.image_id, 'first seen at ' || count(*) || ' paths: '
                    || string_agg(f.drop_id || ':' || f.path, ', ' ORDER BY f.drop_id, f.path)
                FROM image_files f JOIN drop_images USING (image_id)
                WHERE NOT f.is_duplicate GROUP BY f.image_id HAVING count(*) > 1
                UNION ALL
                SELECT d.image_id, 'no images row' FROM drop_images d
                ANTI JOIN images i USING (image_id)
            )
            SELECT * FROM problems ORDER BY image_id, problem
            """,
            params,
        )
        images = scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
    bad_ids = len({row["image_id"] for row in offending})
    return CheckOutcome(
        check_name=UNIQUE_IMAGE_ID,
        passed=not offending,
        severity="ERROR",
        summary=f"{bad_ids} of {images} image ids have problems"
        if offending
        else f"{images} unique image ids",
        value=float(bad_ids),
        threshold=0.0,
        counts={"images": int(images), "offending_images": bad_ids, "problems": len(offending)},
        offending=offending[:SAMPLE_ROWS],
    )


def rejection_rate(warehouse: Warehouse, drop_id: str, *, max_rate: float = 0.2) -> CheckOutcome:
    """Rejected files / files recorded for the drop; a high rate means a bad export or wrong folder."""
    params = {"drop": drop_id}
    with warehouse.reader() as conn:
        accepted = scalar(conn, "SELECT count(*) FROM image_files WHERE drop_id = $drop", params)
        rejected = scalar(conn, "SELECT count(*) FROM rejected_files WHERE drop_id = $drop", params)
        reasons = records(
            conn,
            "SELECT reason, count(*) AS files, min(path) AS example FROM rejected_files"
            " WHERE drop_id = $drop GROUP BY reason ORDER BY files DESC, reason",
            params,
        )
    rate = share(rejected, accepted + rejected) or 0.0
    return CheckOutcome(
        check_name=REJECTION_RATE,
        passed=rate <= max_rate,
        severity="WARN",
        summary=f"{rejected} of {accepted + rejected} files rejected ({rate:.1%}; warn above {max_rate:.0%})",
        value=rate,
        threshold=max_rate,
        counts={
            "files": int(accepted + rejected),
            "accepted": int(accepted),
            "rejected": int(rejected),
        },
        offending=reasons[:SAMPLE_ROWS],
    )
