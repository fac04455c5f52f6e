"""The `vlm` resource: one resource per step, its SGLang server nested, the backend by config."""

from __future__ import annotations

import sys

import dagster as dg
import httpx
import pytest

from core.tasks.base import Task
from core.vlm.sglang_client import SGLangClient
from core.vlm.standin import STANDIN_MODEL_ID
from core.vlm.transformers_backend import TransformersBackend
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from doubles.sglang_server import FakeSGLangServer, standin_backend
from orchestration.settings import REPO_ROOT
from resources.sglang_server import SGLangLaunch, SGLangServer
from resources.vlm import VLM, VLMResource
from tests.resources.test_sglang_server import _pids, _wait_gone

FAKE = [sys.executable, str(REPO_ROOT / "doubles" / "sglang_launch_server.py")]


def _probe(seen: dict[str, object]) -> dg.AssetsDefinition:
    @dg.asset
    def probe(context, vlm: VLM) -> None:
        with vlm.session(context.log) as backend:
            seen["backend"] = backend
            seen["model_id"] = backend.model_id
            if isinstance(vlm, VLMResource) and vlm.sglang is not None:
                seen["ready"] = httpx.get(f"{vlm.sglang.base_url}/ready").status_code

    return probe


def test_a_nested_launched_server_starts_before_the_backend_and_stops_with_the_session(
    tmp_path, monkeypatch
):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SGLANG_PIDFILE", str(pidfile))
    launch = SGLangLaunch(model_path="m", command=FAKE, ready_timeout_s=30)
    resource = VLMResource(backend="sglang", sglang=SGLangServer(launch=launch))
    seen: dict[str, object] = {}
    result = dg.materialize([_probe(seen)], resources={"vlm": resource})
    assert result.success
    assert isinstance(seen["backend"], SGLangClient)
    assert seen["model_id"] == "m" and seen["ready"] == 200  # the launched server's /model_info
    assert _wait_gone(*_pids(pidfile))  # stopped with the session
    with pytest.raises(RuntimeError, match="only inside serving"):
        _ = resource.sglang.base_url  # type: ignore[union-attr]  # no server outside a session


def test_the_sglang_backend_talks_to_the_nested_server_by_url():
    with FakeSGLangServer(standin_backend()) as server:
        seen: dict[str, object] = {}
        resource = VLMResource(backend="sglang", sglang=SGLangServer(url=server.url))
        assert dg.materialize([_probe(seen)], resources={"vlm": resource}).success
    assert seen["model_id"] == STANDIN_MODEL_ID


def test_the_transformers_backend_needs_no_sglang_resource():
    seen: dict[str, object] = {}
    defs = dg.Definitions(assets=[_probe(seen)], resources={"vlm": VLMResource(standin=True)})
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_implicit_global_asset_job_def().execute_in_process().success
    assert isinstance(seen["backend"], TransformersBackend)
    assert seen["model_id"] == STANDIN_MODEL_ID


def test_a_server_configured_for_the_transformers_backend_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="`sglang` is for backend='sglang'"):
        VLMResource(sglang=SGLangServer(url="http://127.0.0.1:30000"))


def test_the_sglang_backend_without_a_server_fails_the_step_clearly():
    result = dg.materialize(
        [_probe({})], resources={"vlm": VLMResource(backend="sglang")}, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "probe"
    assert "needs VLMResource.sglang with `url` or `launch`" in str(failure.step_failure_data.error)


class _Journal(VLMBackend):
    """Writes `opened` and `closed` to a file, so a test sees the lifecycle from outside."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._write("opened")

    def _write(self, word: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(word + "\n")

    @property
    def model_id(self) -> str:
        return "journal"

    def extract(self, images: list[ImageInput], task: Task) -> list[ExtractionResult]:
        raise AssertionError("not asked")

    def close(self) -> None:
        self._write("closed")


class _JournalVLM(VLM):
    path: str

    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        return _Journal(self.path)


def test_the_backend_opens_with_the_session_and_closes_when_it_ends(tmp_path):
    journal = tmp_path / "journal"

    @dg.asset
    def inside(context, vlm: VLM) -> None:
        assert not journal.exists()  # Dagster's resource set-up opened nothing
        with vlm.session(context.log) as backend:
            assert backend.model_id == "journal"
            assert journal.read_text() == "opened\n"
        assert journal.read_text() == "opened\nclosed\n"  # closed before the step ends

    @dg.asset
    def failing(context, vlm: VLM) -> None:
        with vlm.session(context.log):
            raise ValueError("the step fails")

    @dg.asset
    def never(vlm: VLM) -> None:
        pass

    resource = _JournalVLM(path=str(journal))
    assert dg.materialize([inside], resources={"vlm": resource}).success
    journal.unlink()
    assert not dg.materialize([failing], resources={"vlm": resource}, raise_on_error=False).success
    assert journal.read_text() == "opened\nclosed\n"  # closed on the error too
    journal.unlink()
    assert dg.materialize([never], resources={"vlm": resource}).success
    assert not journal.exists()  # a step that never enters a session opens no backend
