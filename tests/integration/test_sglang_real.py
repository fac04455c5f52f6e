"""The extraction against the released SGLang 0.5.23 server (CPU engine, tiny random Qwen2-VL).

One server for the module (see conftest): an API key, `--max-running-requests 1
--max-queued-requests 2`, metrics on, no `--constrained-json-disable-any-whitespace`. The
kill -9 test runs last, and its rerun launches a second server through the `SGLangServer`
resource's launch mode. Random weights: statuses are honest, not good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from assets.extraction import vlm_extractions
from assets.ingestion import images
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.tasks.registry import TASKS, get_task
from core.vlm.run import extract_drop
from core.vlm.sglang_client import (
    SGLangAuthError,
    SGLangClient,
    SGLangClientConfig,
    SGLangServerSettingsError,
    SGLangUnavailable,
    data_url,
    encode_image,
    request_body,
)
from core.vlm.tiny_models import TINY_QWEN2_VL_ID
from core.vlm.types import ImageInput
from doubles.sglang_server import FakeSGLangConfig, FakeSGLangServer, standin_backend
from orchestration.settings import REPO_ROOT
from orchestration.sglang_cpu import SGLANG_PYTHON, tiny_vlm_launch
from resources.drop_folder import DropFolderResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource
from resources.warehouse import WarehouseResource
from tests.fixtures.metadata import column_of, rows_by
from tests.integration.conftest import (
    READY_TIMEOUT_S,
    RealServer,
    group_members,
    make_drop,
    wait_group_gone,
)

pytestmark = pytest.mark.timeout(3000)
DROP = "real"


def _client(server: RealServer, **overrides) -> SGLangClient:
    config = {
        "base_url": server.url,
        "api_key": server.api_key,
        "max_in_flight": 8,
        "backoff_base_s": 0.2,
        "backoff_max_s": 2.0,
    } | overrides
    return SGLangClient(SGLangClientConfig(**config))


def _ingest(warehouse, drop_root: Path, count: int = 21) -> int:
    make_drop(drop_root / DROP, count)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder(DROP))
    return int(warehouse.rows("SELECT count(DISTINCT image_id) FROM image_files")[0][0])


def _resources(warehouse, drop_root, sglang: SGLangServer) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(warehouse.path)),
        "drop_folder": DropFolderResource(root=str(drop_root)),
        "vlm": VLMResource(backend="sglang", sglang=sglang),
    }


def _materialize(instance, resources, **kwargs) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("image_drops", DROP):
        instance.add_dynamic_partitions("image_drops", [DROP])
    return dg.materialize(
        [images, vlm_extractions],
        resources=resources,
        partition_key=DROP,
        instance=instance,
        run_config={"ops": {"vlm_extractions": {"config": {"batch_size": 8}}}},
        **kwargs,
    )


def _launched_servers() -> set[int]:
    """Pids of SGLang servers this test process started from this checkout's .venv-sglang: not
    other checkouts' servers on the host, nor those of another pytest-xdist worker."""
    found = set()
    ours = str(SGLANG_PYTHON).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if (
                cmdline.startswith(ours)
                and b"sglang.launch_server" in cmdline
                and parent == os.getpid()
            ):
                found.add(int(entry.name))
    return found


def wait_group_gone_all(pids: set[int], timeout_s: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
        time.sleep(0.2)
    return pids


def _event_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(repr(event) for event in result.all_events)


def _documented_server_metrics() -> set[str]:
    """The `server_metrics` names the README's table documents."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("<!-- server-metrics -->", 2)[1]
    return set(re.findall(r"^\s*\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


def test_every_task_on_a_drop_of_21_images_under_load_with_auth_and_metrics(
    real_server, warehouse, drop_root, instance
):
    count = _ingest(warehouse, drop_root)
    assert count >= 20
    sglang = SGLangServer(
        url=real_server.url, api_key=real_server.api_key, max_in_flight=8, backoff_max_s=2.0
    )
    first_503 = real_server.log_text().count('" 503')
    result = _materialize(instance, _resources(warehouse, drop_root, sglang))
    assert result.success

    rows = warehouse.rows(
        "SELECT task, status, count(*), count(DISTINCT image_id), min(model_id), max(model_id),"
        " count(*) FILTER (WHERE status <> 'ok' AND coalesce(error, '') = '')"
        " FROM vlm_extractions GROUP BY ALL"
    )
    per_task: dict[str, int] = {}
    for task, status, n, distinct, low, high, unexplained in rows:
        assert status in ("ok", "invalid", "truncated"), (task, status)  # none lost or errored
        assert n == distinct and low == high == TINY_QWEN2_VL_ID
        assert unexplained == 0  # every non-ok row says why
        per_task[task] = per_task.get(task, 0) + n
    assert per_task == {name: count for name in TASKS}  # exactly one row per image and task
    for name, task in TASKS.items():
        ok = warehouse.rows(
            "SELECT count(*) FROM vlm_extractions WHERE task = ? AND status = 'ok'", [name]
        )[0][0]
        assert warehouse.rows(f'SELECT count(*) FROM "{task.tables.table}"')[0][0] == ok

    # Load: 8 in flight against 1 running + 2 queued met real 503s, retried, none lost.
    assert real_server.log_text().count('" 503') > first_503

    (materialization,) = result.asset_materializations_for_node("vlm_extractions")
    server_metrics = column_of(materialization.metadata["server_metrics"].value, "metric", "value")
    documented = _documented_server_metrics()
    assert documented and documented <= set(server_metrics)
    assert server_metrics["requests_total"] >= 3 * count
    assert server_metrics["generation_tokens_total"] > 0

    # The key is in no log line and no Dagster event; not on any server command line.
    assert real_server.api_key not in _event_text(result)
    assert real_server.api_key not in real_server.log_text()
    for pid in group_members(real_server.group):
        assert real_server.api_key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_wrong_key_fails_fast_with_a_clear_error_and_is_not_retried(real_server):
    started = time.monotonic()
    with pytest.raises(SGLangAuthError, match=r"401.*Unauthorized.*check the API key"):
        _client(real_server, api_key="not-the-key").check_ready()
    assert time.monotonic() - started < 10

    client = _client(real_server)
    client.check_ready()
    client.config = client.config.model_copy(update={"api_key": "rotated-away"})
    before = real_server.log_text().count('"POST /v1/chat/completions HTTP/1.1" 401')
    batch = [ImageInput(image_id=f"k{i}", path=p) for i, p in enumerate(_samples()[:3])]
    with pytest.raises(SGLangAuthError, match="401"):
        client.extract(batch, get_task("basketball_action"))
    time.sleep(1)  # the access log line can trail the answer
    refused = real_server.log_text().count('"POST /v1/chat/completions HTTP/1.1" 401') - before
    assert 1 <= refused <= len(batch)


def _samples() -> list[Path]:
    return sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))


def test_4xx_answers_are_rejected_rows_with_the_server_message_and_are_not_retried(
    real_server,
):
    client = _client(real_server)
    base = get_task("basketball_action")
    too_long = dataclasses.replace(base, goal="Look at the basketball player. " * 400)
    too_many = dataclasses.replace(base, max_completion_tokens=100_000)
    (image,) = [ImageInput(image_id="x", path=_samples()[0])]
    for task, message in ((too_long, "context length"), (too_many, "")):
        (result,) = client.extract([image], task)
        assert result.status == "rejected" and result.attempts == 1, result
        assert result.error.startswith("HTTP 400") and message in result.error
        assert "site-packages" not in result.error and ".py" not in result.error


def test_response_format_on_a_server_with_free_whitespace_is_refused_not_trusted(real_server):
    with pytest.raises(SGLangServerSettingsError, match="disable-any-whitespace"):
        _client(real_server, constraint="json_schema").check_ready()
    # What the refusal prevents: the same request through `response_format` loops on
    # whitespace, while the client's compact grammar ends in valid JSON.
    client = _client(real_server)
    client.check_ready()
    task = get_task("age_gender")
    (image,) = [ImageInput(image_id="w", path=_samples()[1])]
    (compact,) = client.extract([image], task)
    assert compact.status in ("ok", "invalid") and not re.search(r"\s", compact.raw_text or "")
    loose = _client(real_server, constraint="json_schema", truncation_budget_factor=1.0)
    loose._model_info = client.model_info  # skip the refusal to show what it prevents
    (looped,) = loose.extract([image], task)
    assert looped.status == "truncated" or re.search(r"\s", looped.raw_text or "")


def _keys(value: object, path: str = "") -> set[str]:
    """Every key path of a JSON answer (lists: their first item), e.g. `choices.message.role`."""
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            name = f"{path}.{key}" if path else key
            found |= {name} | _keys(item, name)
        return found
    if isinstance(value, list) and value:
        return _keys(value[0], path)
    return set()


def _answer(response: httpx.Response) -> tuple[int, set[str] | str]:
    try:
        return response.status_code, _keys(response.json())
    except ValueError:
        return response.status_code, response.text


async def _contract_requests(url: str, key: str, image_url: str) -> dict[str, tuple]:
    """The same requests, in the same order, for the double and for the real server."""
    task = get_task("basketball_action")
    ok_body = request_body(task, image_url, TINY_QWEN2_VL_ID, 32)
    auth = {"Authorization": f"Bearer {key}"}
    long_body = request_body(
        dataclasses.replace(task, goal="Look at the player. " * 800), image_url, "m", 32
    )
    answers: dict[str, tuple] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for name, path in (("ready", "/ready"), ("health", "/health")):
            answers[name] = _answer(await http.get(path))
        answers["model_info_no_key"] = _answer(await http.get("/model_info"))
        answers["chat_no_key"] = _answer(await http.post("/v1/chat/completions", json=ok_body))
        answers["chat_wrong_key"] = _answer(
            await http.post(
                "/v1/chat/completions", json=ok_body, headers={"Authorization": "Bearer no"}
            )
        )
        answers["chat_ok"] = _answer(
            await http.post("/v1/chat/completions", json=ok_body, headers=auth)
        )
        answers["chat_no_messages"] = _answer(
            await http.post("/v1/chat/completions", json={"model": "m"}, headers=auth)
        )
        answers["chat_bad_grammar"] = _answer(
            await http.post(
                "/v1/chat/completions", json=ok_body | {"ebnf": "root ::= ("}, headers=auth
            )
        )
        answers["chat_over_context"] = _answer(
            await http.post("/v1/chat/completions", json=long_body, headers=auth)
        )
        burst = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=ok_body, headers=auth) for _ in range(8))
        )
        busy = [r for r in burst if r.status_code == 503]
        answers["burst_statuses"] = (sorted({r.status_code for r in burst}), bool(busy))
        answers["queue_full"] = _answer(busy[0]) if busy else (None, set())
        answers["queue_full_message"] = (busy[0].json()["message"],) if busy else ("",)
    return answers


def test_the_double_answers_like_the_real_server(real_server):
    """Status codes and JSON keys of the same requests, to the double and to the server."""
    image_url = data_url(encode_image(_samples()[0]))
    real = asyncio.run(_contract_requests(real_server.url, real_server.api_key, image_url))
    double_config = FakeSGLangConfig(
        api_key=real_server.api_key,
        capacity=1,
        max_queued=2,
        service_time_s=0.5,
        context_length=2048,
    )
    with FakeSGLangServer(standin_backend(), double_config) as double:
        fake = asyncio.run(_contract_requests(double.url, real_server.api_key, image_url))
    mismatches = {}
    for name in real:
        if real[name] == fake[name]:
            continue
        (rs, rk), (fs, fk) = real[name][:2], fake[name][:2]
        if isinstance(rk, set) and isinstance(fk, set):
            mismatches[name] = (rs, fs, {"real only": rk - fk, "double only": fk - rk})
        else:
            mismatches[name] = (real[name], fake[name])
    assert not mismatches, mismatches
    assert real["chat_ok"][0] == 200 and real["queue_full"][0] == 503


def _noise_images(folder: Path, count: int, seed: int) -> list[ImageInput]:
    """Pictures no earlier test sent (fresh pixels): nothing of them is in the server's cache."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(count):
        path = folder / f"noise-{seed}-{index}.jpg"
        pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        out.append(ImageInput(image_id=path.stem, path=path, data=path.read_bytes()))
    return out


def _tokens_through_image(prompts, task, layout: str, vision_tokens: int) -> int:
    before, _ = prompts.layout(task, layout)
    return before + vision_tokens


@pytest.mark.parametrize("layout", ["image_first", "instruction_first"])
def test_an_images_other_tasks_reuse_its_prefill_from_the_servers_prefix_cache(
    real_server, tmp_path, layout
):
    """The chosen layout's promise, from the server's own `cached_tokens`: image first with an
    image's other tasks sent after its first answer, every later task of an image finds the
    whole image (and the system prompt) in the cache, and the computed prompt tokens per image
    stay within 1.15x the bound (image once + each task's own suffix). The old layout
    (instruction first) is asked the same: its later tasks find only the system prompt and
    their own instruction, never the image (checked here, so the test is not passing by
    accident)."""
    from benchmarks.prefill import Prompts
    from core.vlm.tiny_models import ensure_tiny_qwen2_vl
    from resources.model_cache import default_model_cache

    prompts = Prompts(ensure_tiny_qwen2_vl(Path(default_model_cache())))
    tasks = list(TASKS.values())
    photos = _noise_images(tmp_path, 3, seed=hash(layout) % 1000)
    client = _client(real_server, layout=layout, stagger_tasks=layout == "image_first")
    client.check_ready()
    outputs = client.extract_tasks([(task, client.prepare(photos)) for task in tasks])
    reused, computed, bound = [], 0, 0
    for index in range(len(photos)):
        results = [outputs[t][index] for t in range(len(tasks))]
        assert all(r.prompt_tokens and r.cached_tokens is not None for r in results), results
        vision = [
            r.prompt_tokens - prompts.layout(t, layout)[1] + 1
            for t, r in zip(tasks, results, strict=True)
        ]
        assert len(set(vision)) == 1 and vision[0] > 0  # the server's own image token count
        computed += sum(r.prompt_tokens - r.cached_tokens for r in results)
        bound += prompts.bound(tasks, vision[0])
        # The first-sent task's image is new to the server; the others are where reuse shows.
        later = sorted(zip(tasks, results, strict=True), key=lambda pair: pair[1].cached_tokens)[1:]
        reused += [
            r.cached_tokens >= _tokens_through_image(prompts, t, layout, vision[0])
            for t, r in later
        ]
    if layout == "image_first":
        assert all(reused), reused
        assert computed <= 1.15 * bound, (computed, bound)
    else:  # with 16-token images instruction first may compute little: the image is tiny
        assert not any(reused), reused


def _value_spans_by_search(text: str, answer: dict) -> dict[str, tuple[int, int]]:
    """The test's own byte spans of the top-level values and the list items' fields, found by
    searching the compact answer for `"key":<value as compact JSON>` left to right (not the
    scanner the pipeline uses)."""
    data = text.encode()
    spans: dict[str, tuple[int, int]] = {}

    def find(path: str, key: str, value: object, start: int) -> int:
        needle = (
            f'"{key}":'.encode()
            + json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        )
        at = data.index(needle, start) + len(f'"{key}":'.encode())
        spans[path] = (at, at + len(needle) - len(f'"{key}":'.encode()))
        return at

    for key, value in answer.items():
        at = find(key, key, value, 0)
        if isinstance(value, list):
            for index, item in enumerate(value):
                for sub, sub_value in item.items() if isinstance(item, dict) else []:
                    at = find(f"{key}[{index}].{sub}", sub, sub_value, at)
    return spans


def test_stored_confidences_are_exp_sum_of_the_logprobs_the_server_returned(
    real_server, warehouse, drop_root, monkeypatch
):
    """Per-field confidence end to end on the real server: the production client asks for
    logprobs, the run stores a row per value in `vlm_field_confidence`, and each equals
    exp(sum) of the logprobs the server returned for the tokens over that value (the raw
    responses captured as the client received them; the spans found by the test itself)."""
    _ingest(warehouse, drop_root, count=2)
    captured: dict[tuple[str, str], dict] = {}
    judge = SGLangClient._judge

    def capturing(self, image, task, response, *args):
        captured[(image.image_id, task.name)] = response.json()
        return judge(self, image, task, response, *args)

    monkeypatch.setattr(SGLangClient, "_judge", capturing)
    client = _client(real_server)
    client.check_ready()
    extract_drop(warehouse, client, DROP, drop_root, list(TASKS.values()), log=lambda _: None)
    rows = warehouse.rows(
        "SELECT e.image_id, e.task, e.raw_text, c.field, c.confidence FROM vlm_extractions e"
        " JOIN vlm_field_confidence c USING (image_id, task, task_fingerprint, model_id)"
        " WHERE e.status = 'ok'"
    )
    stored: dict[tuple[str, str], dict[str, float]] = {}
    for image_id, task, _, field, confidence in rows:
        stored.setdefault((image_id, task), {})[field] = confidence
    ok = warehouse.rows("SELECT image_id, task FROM vlm_extractions WHERE status = 'ok'")
    assert ok and set(stored) == set(ok)  # every ok answer has its confidences
    checked = 0
    for key, fields in stored.items():
        choice = captured[key]["choices"][0]
        text = choice["message"]["content"]
        tokens = choice["logprobs"]["content"]
        assert all({"token", "bytes", "logprob"} <= set(t) for t in tokens)
        ends, at = [], 0
        for token in tokens:
            ends.append((at, at + len(token["bytes"])))
            at += len(token["bytes"])
        assert b"".join(bytes(t["bytes"]) for t in tokens).startswith(text.encode())
        for path, (a, b) in _value_spans_by_search(text, json.loads(text)).items():
            total = sum(
                t["logprob"] for t, (s, e) in zip(tokens, ends, strict=True) if s < b and e > a
            )
            assert fields[path] == pytest.approx(math.exp(total), rel=1e-9, abs=1e-300), (
                key,
                path,
            )
            checked += 1
    assert checked >= len(ok)  # at least one value per answer was checked
    nested = [f for fields in stored.values() for f in fields if "[" in f]
    print(f"\nchecked {checked} stored confidences; list item paths: {sorted(set(nested))[:6]}")


def test_kill_9_mid_run_fails_bounded_writes_no_half_batch_and_a_rerun_extracts_the_rest(
    real_server, warehouse, drop_root, instance
):
    count = _ingest(warehouse, drop_root)
    task = get_task("age_gender")
    client = _client(real_server, max_attempts=3)
    client.check_ready()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            extract_drop(
                warehouse, client, DROP, drop_root, [task], batch_size=4, log=lambda _: None
            )
        except BaseException as error:  # the outcome under test
            outcome["error"] = error
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 600
    while warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0] < 4:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.2)
    killed = time.monotonic()
    os.kill(real_server.group, signal.SIGKILL)  # the server process itself, not its children
    worker.join(timeout=300)
    assert not worker.is_alive()
    error = outcome.get("error")
    assert isinstance(error, SGLangUnavailable) and real_server.url in str(error)
    assert "stopped answering" in str(error)
    assert float(outcome["ended"]) - killed < 120  # type: ignore[arg-type]

    written = warehouse.rows("SELECT image_id, created_at FROM vlm_extractions")
    assert 0 < len(written) < count and len(written) % 4 == 0  # whole batches only
    real_server.process.stop()
    assert not wait_group_gone(real_server.group)  # no orphaned scheduler/detokenizer

    # Rerun through the resource's launch mode: a fresh server, only the missing images.
    sglang = SGLangServer(
        launch=tiny_vlm_launch(ready_timeout_s=READY_TIMEOUT_S),
        max_in_flight=4,
        backoff_max_s=2.0,
    )
    if not instance.has_dynamic_partition("image_drops", DROP):
        instance.add_dynamic_partitions("image_drops", [DROP])
    servers_before = _launched_servers()
    result = dg.materialize(
        [images, vlm_extractions],
        resources=_resources(warehouse, drop_root, sglang),
        partition_key=DROP,
        instance=instance,
        run_config={
            "ops": {"vlm_extractions": {"config": {"tasks": [task.name], "batch_size": 8}}}
        },
    )
    assert result.success
    after = warehouse.rows("SELECT image_id, created_at FROM vlm_extractions")
    assert len(after) == count and len({image_id for image_id, _ in after}) == count
    assert set(written) <= set(after)  # the committed batches were not redone
    (materialization,) = result.asset_materializations_for_node("vlm_extractions")
    per_task = rows_by(materialization.metadata["this run"].value, "task")
    assert per_task[task.name]["images"] == count - len(written)
    # The resource stopped its server with the step: no launched server process is left.
    assert not wait_group_gone_all(_launched_servers() - servers_before)
