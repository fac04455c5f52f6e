"""A user's spec (labels/examples/products.yaml: a field of every kind) against the released SGLang
server (CPU engine, tiny random Qwen2-VL): every field kind is answered under the task's grammar,
and every answer is valid or an honest failure row. Random weights: statuses are honest, not good."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core.labels.derive import build_task
from core.labels.loader import load_spec
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.store import write_batch
from core.vlm.types import ImageInput
from orchestration.settings import REPO_ROOT
from tests.integration.conftest import RealServer, start_real_server, wait_group_gone

pytestmark = pytest.mark.timeout(3000)
PRODUCTS = REPO_ROOT / "labels" / "examples" / "products.yaml"


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    server = start_real_server(extra_args=[], compact_json=True)
    try:
        yield server
    finally:
        server.process.stop()
        assert not wait_group_gone(server.group)


def test_every_field_kind_of_a_user_spec_is_answered_under_its_grammar(server, warehouse):
    task = build_task(load_spec(PRODUCTS).task("product"))
    client = SGLangClient(
        SGLangClientConfig(base_url=server.url, api_key=server.api_key, max_in_flight=4)
    )
    client.check_ready()
    samples = sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))
    images = [ImageInput(image_id=f"i{n}", path=path) for n, path in enumerate(samples)]
    results = client.extract(images, task)
    assert sorted(r.image_id for r in results) == sorted(i.image_id for i in images)
    spec_task = load_spec(PRODUCTS).task("product")
    print({r.image_id: (r.status, r.error) for r in results})
    print(f"product rows ok: {sum(r.status == 'ok' for r in results)} of {len(results)}")
    order = list(spec_task.field("attributes").values)
    for result in results:
        assert result.status in {"ok", "invalid", "truncated"}, result
        if result.status == "truncated":
            assert result.error, result  # an honest failure says why
            continue
        # ok, or invalid with its reason: the grammar held every field kind, distinct values in
        # the spec's order included (the schema lists the allowed sets), so no answer repeats one
        answer = result.parsed if result.status == "ok" else json.loads(result.raw_text or "")
        assert set(answer) == {field.name for field in spec_task.fields}, result
        attributes = answer["attributes"]
        if result.status == "invalid":
            assert result.error and "repeated" not in result.error.lower(), result
        assert len(set(attributes)) == len(attributes), result
        assert attributes == sorted(attributes, key=order.index), result
        assert answer["category"] in spec_task.field("category").allowed
        assert 1 <= len(attributes) <= 3
        assert set(attributes) <= set(spec_task.field("attributes").values)
        assert answer["condition"] in spec_task.field("condition").allowed
        assert isinstance(answer["packaged"], bool)
        assert isinstance(answer["item_count"], int) and 0 <= answer["item_count"] <= 30
        assert 0 <= answer["fill"] <= 1
        assert len(answer["title"]) <= 30 and answer["title"].isprintable()
        assert len(answer["defects"]) <= 3
        for defect in answer["defects"]:
            assert defect["defect"] in {"scratch", "dent", "stain", "tear"}
            assert 1 <= defect["severity"] <= 3
    # every result is a row: typed rows for the valid ones, a failure row with a reason else
    warehouse.ensure_schema()
    write_batch(warehouse, task, client.model_id, "real", results)
    assert warehouse.rows(
        "SELECT count(*), count(*) FILTER (status <> 'ok' AND error IS NOT NULL)"
        " + count(*) FILTER (status = 'ok') FROM vlm_extractions WHERE task = 'product'"
    ) == [(len(images), len(images))]
    ok = sum(r.status == "ok" for r in results)
    assert warehouse.rows("SELECT count(*) FROM task_product") == [(ok,)]


def test_the_server_context_check_passes_the_spec_and_refuses_a_budget_it_cannot_hold(
    server, tmp_path, monkeypatch
):
    from core.labels.context import server_problems

    task = build_task(load_spec(PRODUCTS).task("product"))
    assert server_problems(server.url, [task], api_key=server.api_key, budget_factor=2) == []
    big = tmp_path / "big.yaml"
    big.write_text(
        PRODUCTS.read_text().replace("max_completion_tokens: 200", "max_completion_tokens: 1500")
    )
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(big))
    too_big = build_task(load_spec(big).task("product"))
    (problem,) = server_problems(server.url, [too_big], api_key=server.api_key, budget_factor=2)
    assert problem.where == "task product" and problem.line is not None
    assert (
        "context of 2048 tokens" in problem.message
        and "x 2 (the truncation retry)" in problem.message
    )
