"""Data parallel through SGLang's router: two released SGLang 0.5.23 CPU-engine servers behind
`sglang-router` 0.3.2, launched by the `SGLangServer` resource (`launch.data_parallel=2`).

The client is pointed at the router's URL only. Small drops of one task on purpose (CI has 2
cores): what is shown is the spread over both servers (their own `/metrics` request counters),
the key passing through the router, and `kill -9` of one server mid-run losing no image.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from assets.extraction import vlm_extractions
from assets.ingestion import images
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.tasks.registry import get_task
from core.vlm.metrics import parse_prometheus
from core.vlm.run import extract_drop
from core.vlm.sglang_client import SGLangAuthError, SGLangClient, SGLangClientConfig
from core.vlm.sglang_router import SGLangFleet
from core.vlm.tiny_models import TINY_QWEN2_VL_ID
from orchestration.sglang_cpu import tiny_vlm_launch
from resources.drop_folder import DropFolderResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource
from resources.warehouse import WarehouseResource
from tests.integration.conftest import (
    READY_TIMEOUT_S,
    make_drop,
    require_real_sglang,
    wait_group_gone,
)

pytestmark = pytest.mark.timeout(2400)
TASK = "age_gender"  # the shortest answer: the cheapest task for these checks


@pytest.fixture(scope="module")
def fleet_resource() -> Iterator[tuple[SGLangServer, SGLangFleet]]:
    """The resource's launch mode with two servers and the router, set up once for the module."""
    require_real_sglang()
    resource = SGLangServer(
        launch=tiny_vlm_launch(
            data_parallel=2,
            router_policy="round_robin",  # an even spread to show; cache_aware is the default
            ready_timeout_s=READY_TIMEOUT_S,
            extra_args=["--max-running-requests", "4"],
        ),
        api_key=secrets.token_hex(16),
        max_in_flight=8,
        backoff_max_s=2.0,
    )
    started = time.monotonic()
    with resource.serving():
        fleet = resource.fleet
        assert fleet is not None
        print(
            f"\n2 SGLang servers + router ready after {time.monotonic() - started:.0f}s "
            f"(servers {[round(s.started_s or 0) for s in fleet.servers]} s, "
            f"router {fleet.router_started_s:.1f}s)"
        )
        groups = [p.process.pid for p in (fleet.router, *fleet.servers) if p.process is not None]
        yield resource, fleet
    for group in groups:  # every server's and the router's process group is gone
        assert not wait_group_gone(group), f"processes left in group {group}"


def _requests_per_server(fleet: SGLangFleet) -> list[float]:
    """Each live server's own `sglang:num_requests_total` (None-free: 0 for a dead one)."""
    counts = []
    for url in fleet.worker_urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=5.0).text
        except httpx.HTTPError:
            counts.append(0.0)
            continue
        counts.append(parse_prometheus(text).get("sglang:num_requests_total", 0.0))
    return counts


def _ingest(warehouse, drop_root: Path, drop: str, count: int) -> int:
    make_drop(drop_root / drop, count)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder(drop))
    return int(warehouse.rows("SELECT count(DISTINCT image_id) FROM image_files")[0][0])


def test_a_drop_through_the_router_is_spread_over_both_servers(
    fleet_resource, warehouse, drop_root, instance
):
    resource, fleet = fleet_resource
    assert resource.base_url == fleet.url and fleet.url not in fleet.worker_urls
    for url in (fleet.url, *fleet.worker_urls):
        assert url.startswith("http://127.0.0.1:")
    count = _ingest(warehouse, drop_root, "dp", 8)
    before = _requests_per_server(fleet)
    # The client knows the router's URL only: `SGLangServer(url=...)` as a user would set it.
    sglang = SGLangServer(url=fleet.url, api_key=resource.api_key, max_in_flight=8)
    instance.add_dynamic_partitions("image_drops", ["dp"])
    result = dg.materialize(
        [images, vlm_extractions],
        resources={
            "warehouse": WarehouseResource(path=str(warehouse.path)),
            "drop_folder": DropFolderResource(root=str(drop_root)),
            "vlm": VLMResource(backend="sglang", sglang=sglang),
        },
        partition_key="dp",
        instance=instance,
        run_config={"ops": {"vlm_extractions": {"config": {"tasks": [TASK], "batch_size": 8}}}},
    )
    assert result.success
    rows = warehouse.rows(
        "SELECT status, count(*), count(DISTINCT image_id), min(model_id), max(model_id)"
        " FROM vlm_extractions GROUP BY ALL"
    )
    assert sum(n for _, n, *_ in rows) == count
    for status, n, distinct, low, high in rows:
        assert status in ("ok", "invalid", "truncated") and n == distinct
        assert low == high == TINY_QWEN2_VL_ID
    served = [after - b for after, b in zip(_requests_per_server(fleet), before, strict=True)]
    print(f"\nrequests per server (their /metrics): {served}")
    assert all(n >= 2 for n in served) and sum(served) >= count  # retries add to the sum

    # The key passes through: the router checks none itself, the servers answer 401 through it.
    wrong = SGLangClient(SGLangClientConfig(base_url=fleet.url, api_key="not-the-key"))
    started = time.monotonic()
    with pytest.raises(SGLangAuthError, match="401"):
        wrong.check_ready()
    assert time.monotonic() - started < 10
    router_pid = fleet.router.process.pid  # type: ignore[union-attr]
    assert resource.api_key.encode() not in Path(f"/proc/{router_pid}/cmdline").read_bytes()


def test_kill_9_of_one_server_mid_run_loses_no_image_the_other_finishes(
    fleet_resource, warehouse, drop_root
):
    resource, fleet = fleet_resource
    count = _ingest(warehouse, drop_root, "dp-kill", 16)
    client = resource.client()
    client.check_ready()
    base = _requests_per_server(fleet)  # the module's servers answered earlier tests too
    outcome: dict[str, object] = {}

    def answered() -> list[float]:
        return [now - was for now, was in zip(_requests_per_server(fleet), base, strict=True)]

    def run() -> None:
        try:
            outcome["reports"] = extract_drop(
                warehouse,
                client,
                "dp-kill",
                drop_root,
                [get_task(TASK)],
                batch_size=2,
                log=lambda _: None,
            )
        except BaseException as error:  # the outcome under test
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 600
    while sum(answered()) < 2:  # kill by answers, not rows: rows lag answers by a batch
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    victim = fleet.servers[0]
    assert victim.process is not None
    victim_before, survivor_before = answered()
    os.kill(victim.process.pid, signal.SIGKILL)  # the server itself, mid-run
    written_at_kill = warehouse.rows("SELECT count(*) FROM vlm_extractions")[0][0]
    worker.join(timeout=900)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")  # the router sent the rest to the other
    assert victim.process.poll() == -signal.SIGKILL and written_at_kill < count  # mid-run
    survivor_served = answered()[1] - survivor_before
    print(f"\n{written_at_kill} rows at the kill; the survivor then served {survivor_served}")
    # Rows lag answers (a batch is written when all its images are back), so what was left at
    # the kill is what neither server had answered, by their own counters; those counters are
    # read a moment apart from the kill and from each other, so they show that work was left
    # and that the survivor took some, not an exact count (the rows below are the exact proof).
    unanswered = count - victim_before - survivor_before
    assert unanswered >= 1 and survivor_served >= 1
    rows = warehouse.rows(
        "SELECT status, coalesce(error, ''), count(*), count(DISTINCT image_id)"
        " FROM vlm_extractions GROUP BY ALL"
    )
    assert sum(n for *_, n, _ in rows) == count  # 0 images lost, none twice
    for status, error, n, distinct in rows:
        assert status in ("ok", "invalid", "truncated"), (status, error)  # none failed
        assert n == distinct
    victim.stop()
    assert not wait_group_gone(victim.process.pid)
