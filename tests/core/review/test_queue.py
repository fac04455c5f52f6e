"""The review queue: each planted reason flags its image, the ranking follows the score, the
size is capped as documented, and a rerun replaces the drop's rows."""

from __future__ import annotations

import pytest

from core.review.queue import QueueOptions, compute_queue, write_queue
from tests.core.review.planted import CLIP, DROP, VLM, plant

pytestmark = pytest.mark.both_backends  # the warehouse SQL runs on the file and the lake


@pytest.fixture
def planted(warehouse, drop_root):
    return plant(warehouse, drop_root)


def test_every_reason_flags_its_image_and_the_ranking_follows_the_score(warehouse, planted):
    report = compute_queue(warehouse, DROP)
    frame = report.frame
    by_name = {
        name: frame.filter(frame["image_id"] == image_id).to_dicts()
        for name, image_id in planted.items()
    }
    assert by_name["astronaut.jpg"] == []  # nothing wrong: not queued
    camera = by_name["camera.jpg"][0]
    assert camera["reasons"] == ["clip_vlm_disagree"]
    assert camera["disagree_fields"] == ["scenery: clip=indoors vlm=cloudy"]
    chelsea = by_name["chelsea.jpg"][0]
    assert chelsea["reasons"] == ["low_margin"] and chelsea["zero_shot_margin"] == pytest.approx(
        0.02
    )
    assert chelsea["score"] == pytest.approx(0.8)  # (0.1 - 0.02) / 0.1
    coffee = by_name["coffee.jpg"][0]
    assert coffee["reasons"] == ["extraction_failed"]
    assert coffee["failed_tasks"] == ["age_gender: truncated"]
    coins, hubble = by_name["coins.jpg"][0], by_name["hubble_deep_field.jpg"][0]
    assert coins["reasons"] == hubble["reasons"] == ["near_duplicate_conflict"]
    assert coins["near_duplicate_of"] == planted["hubble_deep_field.jpg"]
    assert coins["conflict_fields"] == ["scenery: indoors vs night_time"]
    rocket = by_name["rocket.jpg"][0]
    assert rocket["reasons"] == ["consistency_violation"]
    assert rocket["consistency_violations"] == [
        "people: age_gender answered, scenery_people.people empty"
    ]
    # 3 (failed) > 2 (conflict; lower margin first) > 1 (disagree, mismatch; lower margin) > 0.8
    order = [planted[n] for n in ("coffee.jpg", "hubble_deep_field.jpg", "coins.jpg")]
    order += [planted[n] for n in ("camera.jpg", "rocket.jpg", "chelsea.jpg")]
    assert frame["image_id"].to_list() == order
    assert frame["rank"].to_list() == [1, 2, 3, 4, 5, 6]
    assert report.clip_model_id == CLIP and report.vlm_model_id == VLM
    assert (report.images, report.flagged, report.queued) == (7, 6, 6)
    assert report.reason_counts == {
        "clip_vlm_disagree": 1,
        "low_margin": 1,
        "extraction_failed": 1,
        "near_duplicate_conflict": 2,
        "consistency_violation": 1,
        "low_confidence": 0,  # the planted answers carry no logprobs
    }


def test_the_size_is_the_larger_of_top_n_and_the_fraction_capped_by_the_drop():
    options = QueueOptions()
    assert options.size(7) == 7
    assert options.size(400) == 50
    assert options.size(1000) == 50
    assert options.size(1001) == 51  # ceil(5% of 1001)
    assert options.size(20_000) == 1000
    assert QueueOptions(top_n=0, top_fraction=0.01).size(150) == 2


def test_the_queue_keeps_only_the_top_rows_and_a_rerun_replaces_them(warehouse, planted):
    small = compute_queue(warehouse, DROP, QueueOptions(top_n=2, top_fraction=0))
    assert (small.size, small.queued, small.flagged) == (2, 2, 6)
    assert write_queue(warehouse, small) == 2
    assert write_queue(warehouse, compute_queue(warehouse, DROP)) == 6
    rows = warehouse.rows(
        "SELECT rank, image_id FROM review_queue WHERE drop_id = ? ORDER BY rank", [DROP]
    )
    assert [rank for rank, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0][1] == planted["coffee.jpg"]
    snapshot = warehouse.rows("SELECT * FROM review_queue ORDER BY rank")
    write_queue(warehouse, compute_queue(warehouse, DROP))  # nothing changed: no row changes
    assert warehouse.rows("SELECT * FROM review_queue ORDER BY rank") == snapshot
    assert write_queue(warehouse, small) == 2  # smaller again: no stale rows left behind
    assert warehouse.rows("SELECT count(*) FROM review_queue")[0][0] == 2


def test_a_drop_without_model_outputs_queues_nothing(warehouse, drop_root):
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from tests.conftest import copy_samples

    copy_samples(drop_root, "bare", ["coins.jpg"])
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("bare"))
    report = compute_queue(warehouse, "bare")
    assert (report.images, report.flagged, report.queued) == (1, 0, 0)
    assert write_queue(warehouse, report) == 0


def test_low_confidence_is_a_signal_ranked_lowest_first_with_the_threshold_from_the_spec(
    warehouse, drop_root
):
    """Confidences as the extraction writes them: below the spec's threshold an image is queued,
    lowest confidence first; a value without logprobs (NULL) never raises the signal."""
    from core.ingest.ingest import DropIngestor
    from core.ingest.scan import DropRef
    from core.labels.loader import current_spec
    from core.labels.spec import ReviewSpec
    from core.tasks.registry import TASKS
    from core.vlm.store import write_batch
    from core.vlm.types import ExtractionResult
    from tests.conftest import copy_samples

    names = ["astronaut.jpg", "camera.jpg", "coins.jpg", "rocket.jpg"]
    copy_samples(drop_root, "unsure", names)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("unsure"))
    ids = dict(warehouse.rows("SELECT regexp_extract(path, '[^/]+$'), image_id FROM image_files"))
    confidences = {
        "astronaut.jpg": {"age_group": 0.3, "gender": 0.9},
        "camera.jpg": {"age_group": 0.8, "gender": 0.1},
        "coins.jpg": {"age_group": 0.9, "gender": 0.92},
        "rocket.jpg": {"age_group": None, "gender": None},  # a server without logprobs
    }
    write_batch(
        warehouse,
        TASKS["age_gender"],
        VLM,
        "unsure",
        [
            ExtractionResult(
                image_id=ids[name],
                status="ok",
                parsed={"age_group": "21-30", "gender": "male"},
                confidence=confidence,
            )
            for name, confidence in confidences.items()
        ],
    )
    assert warehouse.rows("SELECT count(*), count(confidence) FROM vlm_field_confidence") == [
        (8, 6)
    ]
    report = compute_queue(warehouse, "unsure")  # the bundled spec: below 0.5
    frame = report.frame
    assert frame["image_id"].to_list() == [ids["camera.jpg"], ids["astronaut.jpg"]]
    camera, astronaut = frame.to_dicts()
    assert camera["reasons"] == ["low_confidence"]
    assert camera["low_confidence_fields"] == ["gender: 0.1"]
    assert camera["min_confidence"] == pytest.approx(0.1)
    assert camera["score"] == pytest.approx((0.5 - 0.1) / 0.5)
    assert astronaut["score"] == pytest.approx((0.5 - 0.3) / 0.5)
    assert report.reason_counts["low_confidence"] == 2
    # the threshold is spec data: raised, coins is queued too, still lowest first
    strict = current_spec().model_copy(update={"review": ReviewSpec(low_confidence_below=0.95)})
    frame = compute_queue(warehouse, "unsure", spec=strict).frame
    assert frame["image_id"].to_list() == [
        ids[n] for n in ("camera.jpg", "astronaut.jpg", "coins.jpg")
    ]
    assert frame.to_dicts()[2]["low_confidence_fields"] == ["age_group: 0.9", "gender: 0.92"]
    assert write_queue(warehouse, report) == 2
    stored = warehouse.rows(
        "SELECT image_id, low_confidence, min_confidence FROM review_queue ORDER BY rank"
    )
    assert stored == [(ids["camera.jpg"], True, 0.1), (ids["astronaut.jpg"], True, 0.3)]
