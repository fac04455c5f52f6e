from core.vlm.run import TaskReport
from core.vlm.types import ExtractionResult


def _result(image_id: str, status: str, latency_ms: float, prompt: int, cached: int):
    return ExtractionResult(
        image_id=image_id,
        status=status,
        latency_ms=latency_ms,
        prompt_tokens=prompt,
        cached_tokens=cached,
    )


def test_a_task_report_counts_statuses_latency_and_cached_tokens():
    report = TaskReport("scenery_people", "fp1", seconds=2.0)
    report.add([_result("a", "ok", 100, 50, 40), _result("b", "invalid", 300, 50, 0)])

    assert report.done == 2
    assert report.validity_rate == 0.5
    assert report.images_per_s == 1.0
    assert report.cached_token_ratio == 0.4
    assert report.latency_percentile(50) == 200


def test_the_run_report_combines_tasks_that_ran_together():
    first = TaskReport("scenery_people", "fp1", seconds=1.0)
    first.add([_result("a", "ok", 100, 10, 10), _result("b", "ok", 100, 10, 10)])
    second = TaskReport("age_gender", "fp2", seconds=3.0)
    second.add([_result("a", "truncated", 500, 30, 0), _result("b", "ok", 300, 30, 0)])

    combined = TaskReport.combined([first, second])

    assert combined.done == 4
    assert combined.statuses == {"ok": 3, "truncated": 1}
    assert combined.images_per_s == 4 / 3  # 4 results in the run's 3 s
    assert combined.cached_token_ratio == 20 / 80
    assert combined.latency_percentile(50) == 200
    assert combined.latency_percentile(95) > 300
