"""The production SGLang client against the SGLang test double, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.tasks.registry import get_task
from core.vlm.sglang_client import (
    SGLangAuthError,
    SGLangClient,
    SGLangClientConfig,
    SGLangServerSettingsError,
    SGLangUnavailable,
    encode_image,
    request_body,
)
from core.vlm.standin import STANDIN_MODEL_ID
from core.vlm.types import ImageInput
from doubles.sglang_server import (
    FakeSGLangConfig,
    FakeSGLangServer,
    image_key,
    standin_backend,
)
from orchestration.settings import REPO_ROOT

SAMPLES = sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))
TASK = get_task("age_gender")


def _images(count: int = 3) -> list[ImageInput]:
    return [ImageInput(image_id=f"img{i}", path=path) for i, path in enumerate(SAMPLES[:count])]


def _key(path: Path) -> str:
    return image_key(encode_image(path))


def _client(url: str, **overrides) -> SGLangClient:
    config = {"base_url": url, "backoff_base_s": 0.01, "backoff_max_s": 0.05} | overrides
    return SGLangClient(SGLangClientConfig(**config))


def _serve(faults: dict[str, list[str]] | None = None, **knobs) -> FakeSGLangServer:
    return FakeSGLangServer(standin_backend(), FakeSGLangConfig(faults=faults or {}, **knobs))


def test_happy_path_returns_validated_results_in_input_order_with_token_counts():
    images = _images(3)
    with _serve() as server:
        client = _client(server.url)
        assert client.check_ready()["model_path"] == STANDIN_MODEL_ID
        results = client.extract(images, TASK)
    assert [r.image_id for r in results] == ["img0", "img1", "img2"]
    for result in results:
        assert result.status == "ok", result.error
        assert TASK.parse(result.raw_text).model_dump() == result.parsed
        assert result.attempts == 1 and result.prompt_tokens > 0 and result.completion_tokens > 0
    # The instruction comes before the image, so later requests hit the prefix cache.
    assert sum(r.cached_tokens for r in results) > 0
    assert client.model_id == STANDIN_MODEL_ID


def test_503_500_and_dropped_connections_are_retried():
    images = _images(3)
    faults = {
        _key(images[0].path): ["503", "503"],
        _key(images[1].path): ["drop"],
        _key(images[2].path): ["500"],
    }
    with _serve(faults) as server:
        results = _client(server.url).extract(images, TASK)
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert [r.attempts for r in results] == [3, 2, 2]


def test_every_5xx_is_retried_not_rejected():
    """501, 507 and a proxy's 520 are the server's trouble, not the request's: retried like 500."""
    images = _images(3)
    faults = {
        _key(images[0].path): ["501"],
        _key(images[1].path): ["507", "507"],
        _key(images[2].path): ["520"],
    }
    with _serve(faults) as server:
        results = _client(server.url).extract(images, TASK)
    assert [r.status for r in results] == ["ok", "ok", "ok"], [r.error for r in results]
    assert [r.attempts for r in results] == [2, 3, 2]


def test_transport_retries_are_bounded_and_end_in_an_error_row():
    images = _images(2)
    faults = {_key(images[0].path): ["500"] * 10}
    with _serve(faults) as server:
        results = _client(server.url, max_attempts=3).extract(images, TASK)
    assert results[0].status == "error" and results[0].attempts == 3
    assert "HTTP 500" in results[0].error
    assert results[1].status == "ok"  # one image's failure never fails its batch


def test_queue_full_answers_are_retried_past_max_attempts_until_the_image_deadline():
    images = _images(2)
    faults = {_key(images[0].path): ["503"] * 6, _key(images[1].path): ["503"] * 1000}
    with _serve(faults) as server:
        client = _client(server.url, max_attempts=2, image_deadline_s=1.5)
        results = client.extract(images, TASK)
    assert results[0].status == "ok" and results[0].attempts == 7  # busy is not a failure
    assert results[1].status == "error" and "deadline of 1.5s per image" in results[1].error
    assert "queue is full" in results[1].error


def test_4xx_is_never_retried():
    images = _images(2)
    key = _key(images[0].path)
    with _serve({key: ["400", "ok"]}) as server:
        results = _client(server.url).extract(images, TASK)
        sent = [mode for k, _, mode in server.log if k == key]
    assert results[0].status == "rejected" and results[0].attempts == 1
    assert "HTTP 400" in results[0].error and "Error while processing image" in results[0].error
    assert sent == ["400"]


def test_truncation_is_retried_once_with_a_larger_budget():
    images = _images(2)
    first, second = _key(images[0].path), _key(images[1].path)
    faults = {first: ["unclosed"], second: ["whitespace", "unclosed"]}
    with _serve(faults) as server:
        results = _client(server.url).extract(images, TASK)
        budgets = {k: [b for kk, b, _ in server.log if kk == k] for k in (first, second)}
    assert results[0].status == "ok" and results[0].attempts == 2
    assert budgets[first] == [TASK.max_completion_tokens, 2 * TASK.max_completion_tokens]
    assert results[1].status == "truncated" and results[1].attempts == 2
    assert "token limit" in results[1].error and results[1].parsed is None


@pytest.mark.parametrize(("mode", "message"), [("extra_key", "Extra"), ("bad_enum", "age_group")])
def test_schema_violations_the_server_let_through_are_caught(mode, message):
    images = _images(1)
    with _serve({_key(images[0].path): [mode, mode]}) as server:
        (result,) = _client(server.url, invalid_retries=1).extract(images, TASK)
    assert result.status == "invalid" and message in result.error and result.attempts == 2
    assert result.raw_text is not None and result.parsed is None


def test_an_unreadable_image_fails_alone():
    images = [*_images(1), ImageInput(image_id="gone", path=Path("/nonexistent/x.jpg"))]
    with _serve() as server:
        results = _client(server.url).extract(images, TASK)
    assert [r.status for r in results] == ["ok", "error"]
    assert "cannot read image" in results[1].error


def test_a_server_that_is_down_gives_a_clear_error():
    with _serve() as server:
        url = server.url
    with pytest.raises(SGLangUnavailable, match=f"{url} is unreachable"):
        _client(url).check_ready(timeout_s=2)
    with _serve() as server:
        client = _client(server.url)
        client.check_ready()
        server.ready = False
        with pytest.raises(SGLangUnavailable, match="not ready"):
            client.check_ready()


def test_a_server_that_goes_away_mid_run_raises_instead_of_writing_failures():
    with _serve() as server:
        client = _client(server.url, max_attempts=2)
        client.check_ready()
    with pytest.raises(SGLangUnavailable, match="stopped answering"):
        client.extract(_images(2), TASK)


def test_api_key_is_sent_and_metrics_are_summarised():
    with _serve(api_key="s3cret") as server:
        with pytest.raises(SGLangUnavailable, match=r"401.*check the API key"):
            _client(server.url).check_ready()  # /ready is exempt from auth, /model_info is not
        results = _client(server.url, api_key="s3cret").extract(_images(2), TASK)
        metrics = _client(server.url, api_key="s3cret").server_metrics()
    assert [r.status for r in results] == ["ok", "ok"]
    assert metrics["requests_total"] == 2 and 0 < metrics["prefix_cache_hit_rate"] < 1


def test_a_refused_key_mid_run_fails_the_call_at_once_and_is_not_retried():
    images = _images(3)
    with _serve(api_key="first") as server:
        client = _client(server.url, api_key="first")
        client.check_ready()
        server.config.api_key = "rotated"  # the server's key changed under us
        with pytest.raises(SGLangAuthError, match=r"401.*check the API key"):
            client.extract(images, TASK)
        refused = server.counters["unauthorized"]
    assert 1 <= refused <= len(images)  # each image tried at most once, never retried


def test_an_overall_deadline_per_image_bounds_a_slow_server():
    with _serve(service_time_s=3.0) as server:
        client = _client(server.url, image_deadline_s=1.0, timeout_s=300)
        (result,) = client.extract(_images(1), TASK)
    assert result.status == "error" and "deadline of 1s per image" in result.error
    assert result.latency_ms < 2500


def test_a_4xx_is_recorded_as_rejected_without_server_file_paths():
    images = _images(1)
    with _serve({_key(images[0].path): ["400", "ok"]}) as server:
        (result,) = _client(server.url).extract(images, TASK)
    assert result.status == "rejected" and result.attempts == 1
    assert "scripted bad request" in result.error and "<path>" in result.error
    assert "site-packages" not in result.error and "/opt/" not in result.error


def test_the_grammar_sent_allows_no_free_whitespace_whatever_the_server_flags():
    images = _images(2)
    with _serve(disable_any_whitespace=False) as server:
        results = _client(server.url).extract(images, TASK)
    body = request_body(TASK, "data:image/jpeg;base64,", "m", 64)
    assert "response_format" not in body and "ebnf" in body
    assert [r.status for r in results] == ["ok", "ok"]
    assert all(not any(c.isspace() for c in r.raw_text) for r in results)


def test_json_schema_constraint_refuses_a_server_that_allows_free_whitespace():
    with _serve(disable_any_whitespace=False) as server:
        client = _client(server.url, constraint="json_schema")
        with pytest.raises(SGLangServerSettingsError, match="constrained-json-disable-any"):
            client.check_ready()
    with _serve(disable_any_whitespace=True) as server:
        client = _client(server.url, constraint="json_schema")
        client.check_ready()
        (result,) = client.extract(_images(1), TASK)
    assert result.status == "ok"


def test_an_images_other_tasks_are_sent_only_after_its_first_task_answered():
    """Staggered dispatch: the image's first task prefills it (here: a 503, then its retry);
    the other tasks follow its final answer, so on a real server they find the image in the
    prefix cache. Every task still gets its own row, and the first task's retry is its own."""
    tasks = [get_task("age_gender"), get_task("basketball_action"), get_task("scenery_people")]
    images = _images(2)
    first_key = _key(images[0].path)
    with _serve({first_key: ["503"]}) as server:
        client = _client(server.url, max_in_flight=16)
        prepared = client.prepare(images)
        outputs = client.extract_tasks([(task, prepared) for task in tasks])
        budgets = [budget for key, budget, _ in server.log if key == first_key]
    assert [[r.status for r in results] for results in outputs] == [["ok", "ok"]] * 3
    assert [r.attempts for r in outputs[0]] == [2, 1]
    first = tasks[0].max_completion_tokens
    assert budgets[:2] == [first, first], budgets  # the 503 and its retry, nothing in between
    assert sorted(budgets[2:]) == sorted(t.max_completion_tokens for t in tasks[1:])


def test_without_staggering_all_tasks_of_an_image_are_in_flight_together():
    """The opposite dispatch (`stagger_tasks=False`) sends the other tasks while the first one
    is still being retried: the test above is not passing by accident."""
    tasks = [get_task("age_gender"), get_task("basketball_action"), get_task("scenery_people")]
    images = _images(1)
    key = _key(images[0].path)
    with _serve({key: ["503"]}, service_time_s=0.2) as server:
        client = _client(server.url, max_in_flight=16, stagger_tasks=False, backoff_base_s=0.5)
        prepared = client.prepare(images)
        outputs = client.extract_tasks([(task, prepared) for task in tasks])
        budgets = [budget for k, budget, _ in server.log if k == key]
    assert [results[0].status for results in outputs] == ["ok"] * 3
    assert len(budgets) == 4 and len(set(budgets[:3])) == 3, budgets


def test_the_priority_gate_serves_an_images_followers_before_new_images():
    import asyncio

    from core.vlm.sglang_client import PriorityGate

    async def main() -> list[str]:
        gate, order = PriorityGate(1), []

        async def hold(name: str, priority: bool, pause: float) -> None:
            async with gate.slot(priority):
                order.append(name)
                await asyncio.sleep(pause)

        first = asyncio.create_task(hold("first", False, 0.05))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(hold("new image", False, 0)) for _ in range(2)]
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(hold("follower", True, 0))
        cancelled = asyncio.create_task(hold("cancelled", True, 0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(first, follower, *waiting, return_exceptions=True)
        async with gate.slot():  # every slot came back, the cancelled waiter's too
            order.append("last")
        return order

    assert asyncio.run(main()) == ["first", "follower", "new image", "new image", "last"]
