"""Models and launched servers live inside the step that holds the `gpu` pool, never longer.

A whole pipeline run (the sensor's job, in-process executor) is watched from outside: the
launched server writes when it started and stopped, a hook after every step looks for CLIP
models, transformers models and server processes still alive, and the event log gives each
step's start and end. Before, the in-process executor set every resource up when the run
started: the server came up before ingestion and lived until the run ended, and models stayed
loaded after their step released the pool slot.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import dagster as dg
import pytest

from core.clip.loading import ClipModel
from core.vlm.transformers_backend import TransformersBackend
from doubles.clip import StandinClip
from orchestration.definitions import build_definitions
from orchestration.jobs import PIPELINE_JOB_NAME
from orchestration.settings import REPO_ROOT
from resources import clip_model as clip_resource
from resources.sglang_server import SGLangLaunch, SGLangServer
from resources.vlm import VLMResource
from tests.resources.test_sglang_server import _alive

FAKE = [sys.executable, str(REPO_ROOT / "doubles" / "sglang_launch_server.py")]
CLIP_STEPS = ("clip_embeddings", "clip_zero_shot")


def _loaded_models(baseline: set[int]) -> list[str]:
    """CLIP models and loaded transformers VLMs in this process that the run made."""
    gc.collect()
    found = []
    for obj in gc.get_objects():
        if id(obj) in baseline:
            continue
        if isinstance(obj, ClipModel):
            found.append(f"CLIP {obj.model_id}")
        elif isinstance(obj, TransformersBackend) and obj._model is not None:
            found.append(f"VLM {obj.model_id}")
    return found


def _baseline() -> tuple[set[int], list[object]]:
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, (ClipModel, TransformersBackend))]
    return {id(o) for o in kept}, kept  # kept alive, so no id is reused during the run


def _step_times(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            ends[entry.step_key] = entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts}


def _messages(instance: dg.DagsterInstance, run_id: str, text: str) -> list[tuple[str, float]]:
    return [
        (entry.step_key or "", entry.timestamp)
        for entry in instance.all_logs(run_id)
        if text in (entry.user_message or "")
    ]


def _run_the_job(settings, instance, standin_cache: Path, vlm: VLMResource, server_pids):
    instance.add_dynamic_partitions("image_drops", ["samples"])
    defs = build_definitions(
        settings,
        resources={"clip_model": StandinClip(standin_cache_dir=str(standin_cache)), "vlm": vlm},
    )
    baseline, kept = _baseline()
    after_step: dict[str, dict[str, object]] = {}

    def observe(context: dg.HookContext) -> None:
        after_step[context.step_key] = {
            "models": _loaded_models(baseline),
            "clip_cache": len(clip_resource._cache),
            "servers": [pid for pid in server_pids() if _alive(pid)],
        }

    @dg.success_hook(name="observe_after_success")
    def after_success(context: dg.HookContext) -> None:
        observe(context)

    @dg.failure_hook(name="observe_after_failure")
    def after_failure(context: dg.HookContext) -> None:
        observe(context)

    job = defs.resolve_job_def(PIPELINE_JOB_NAME).with_hooks({after_success, after_failure})
    result = job.execute_in_process(
        partition_key="samples",
        instance=instance,
        run_config={"ops": {"vlm_extractions": {"config": {"tasks": ["age_gender"]}}}},
    )
    del kept
    return result, after_step


def _assert_clip_lives_in_its_steps(instance, run_id, steps, after_step) -> None:
    loads = _messages(instance, run_id, "CLIP model loaded")
    releases = _messages(instance, run_id, "CLIP model released")
    # The CLIP steps, and evaluation when a kNN unit over ImageNet classes needs CLIP.
    assert set(CLIP_STEPS) <= {key for key, _ in loads} <= {*CLIP_STEPS, "evaluation"}, loads
    for key, at in loads + releases:
        start, end = steps[key]
        assert start <= at <= end, (key, at, steps[key])
    for key in {key for key, _ in loads}:  # every load released in the same step
        assert [k for k, _ in loads].count(key) == [k for k, _ in releases].count(key) == 1


@pytest.mark.parametrize("vlm_backend", ["sglang", "transformers"])
def test_models_and_a_launched_server_live_only_inside_their_steps(
    vlm_backend, settings, instance, sample_drop, standin_cache, tmp_path, monkeypatch
):
    pidfile, journal = tmp_path / "pids", tmp_path / "journal"
    monkeypatch.setenv("FAKE_SGLANG_PIDFILE", str(pidfile))
    if vlm_backend == "sglang":
        launch = SGLangLaunch(
            model_path="sim/llava",
            command=FAKE,
            ready_timeout_s=60,
            env={"FAKE_SGLANG_JOURNAL": str(journal), "FAKE_SGLANG_ANSWERS": "schema"},
        )
        vlm = VLMResource(backend="sglang", sglang=SGLangServer(launch=launch))
    else:
        vlm = VLMResource(standin=True, device="cpu", batch_size=4)

    def server_pids() -> list[int]:
        text = pidfile.read_text() if pidfile.exists() else ""
        return [int(p) for p in text.split()]

    result, after_step = _run_the_job(settings, instance, standin_cache, vlm, server_pids)
    assert result.success
    steps = _step_times(instance, result.run_id)
    assert {"images", *CLIP_STEPS, "vlm_extractions"} <= set(after_step) == set(steps)

    # Nothing the run loaded or launched is alive after any of its steps.
    for key, seen in after_step.items():
        assert seen == {"models": [], "clip_cache": 0, "servers": []}, (key, seen)
    _assert_clip_lives_in_its_steps(instance, result.run_id, steps, after_step)

    vlm_start, vlm_end = steps["vlm_extractions"]
    if vlm_backend == "sglang":
        # The server process itself says when it lived: inside the extraction step only.
        lines = [line.split() for line in journal.read_text().splitlines()]
        assert [word for word, _ in lines] == ["started", "stopped"]
        started, stopped = (float(at) for _, at in lines)
        assert steps["images"][1] <= vlm_start <= started < stopped <= vlm_end
        assert max(end for _, end in steps.values()) > stopped  # later steps ran without it
    else:
        loads = _messages(instance, result.run_id, "VLM model loaded")
        releases = _messages(instance, result.run_id, "VLM model released")
        assert [key for key, _ in loads] == [key for key, _ in releases] == ["vlm_extractions"]
        for _, at in loads + releases:
            assert vlm_start <= at <= vlm_end
