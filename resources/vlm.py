"""The vision-language model the extraction asset talks to, as one resource.

`VLM` is what the asset needs: a `VLMBackend` (`vlm.model`), opened on first use inside a run
and closed by Dagster when the run's resources are torn down (also when a step fails). It lives on
the copy of the resource Dagster makes for the run; the configured resource never holds one, and
outside a run there is none. `VLMResource` is the deployment's implementation:
SGLang over HTTP (its server a nested `SGLangServer` resource, launched for the run when
configured so) or transformers in-process. Test implementations live in `doubles/`.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr, model_validator

from core.labels.context import server_problems
from core.labels.loader import SpecError, spec_path
from core.tasks.registry import TASKS
from core.vlm.standin import STANDIN_MODEL_ID, ensure_standin
from core.vlm.transformers_backend import DEFAULT_MODEL, TransformersBackend
from core.vlm.types import VLMBackend
from resources.model_cache import default_model_cache
from resources.sglang_server import SGLangServer

STANDIN_BANNER = """
################################################################################
#  STAND-IN VLM: a tiny RANDOM-WEIGHT model built locally (no model hub here).  #
#  Its labels are meaningless. Rows carry model_id = {model_id:<26} #
#  Set IMAGE_PIPELINE_VLM_MODEL to a real checkpoint for real labels.           #
################################################################################
"""


class VLM(dg.ConfigurableResource, ABC):
    """A VLM backend per run: built by `open_backend` when a step first asks, closed at the end.

    Assets declare `vlm: VLM` and use `vlm.model`; implementations only say how to open one.
    The backend opens on first use, not when Dagster sets the resource up: the in-process
    executor sets up every resource when the run starts, and a VLM server that is down must fail
    the extraction step, not the ingestion and CLIP steps before it.
    """

    _log: dg.DagsterLogManager | None = PrivateAttr(default=None)
    _in_execution: bool = PrivateAttr(default=False)
    _backend: VLMBackend | None = PrivateAttr(default=None)

    @abstractmethod
    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        """A ready backend (checked before any work is sent); the caller closes it."""

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["VLM"]:
        self._log, self._in_execution = context.log, True
        try:
            yield self
        finally:
            backend, self._backend, self._in_execution = self._backend, None, False
            if backend is not None:
                backend.close()

    @property
    def model(self) -> VLMBackend:
        """The backend, opened on first use in this run and closed when the run ends."""
        if not self._in_execution:
            raise RuntimeError(
                f"{type(self).__name__}: the backend is open only inside a run that requires "
                "this resource (or call open_backend() and close it yourself)"
            )
        if self._backend is None:
            self._backend = self.open_backend(self._log)
        return self._backend


def _say(log: dg.DagsterLogManager | None) -> tuple[Callable[[str], None], Callable[[str], None]]:
    return (log.info, log.warning) if log else (print, print)


class VLMResource(VLM):
    """The backend chosen by `backend`. `prod` configurations set `allow_standin=False`.

    `sglang` (a nested resource) names the server for backend `sglang` and is left out for
    `transformers`; with `launch`, Dagster starts the server before this resource opens and stops
    it after this resource closes.
    """

    backend: Literal["transformers", "sglang"] = "transformers"
    sglang: SGLangServer | None = None
    model_path: str = Field(
        default=DEFAULT_MODEL, description="transformers: HF id or local checkpoint dir."
    )
    model_id: str | None = Field(default=None, description="Recorded on rows; default: the path.")
    standin: bool = Field(default=False, description="Use the tiny random-weight stand-in.")
    allow_standin: bool = Field(default=True, description="False in prod: never a stand-in.")
    device: str = Field(
        default="auto", description="transformers: `auto` (CUDA when present), `cpu`, `cuda:0`."
    )
    batch_size: int = Field(default=4, ge=1, description="transformers: images per generate().")
    model_cache_dir: str = Field(
        default_factory=default_model_cache, description="Where the stand-in is built."
    )

    @model_validator(mode="after")
    def _sglang_only_for_its_backend(self) -> "VLMResource":
        # Checked at construction: a launch configured by mistake would otherwise start a server.
        if self.backend == "transformers" and self.sglang is not None and self.sglang.configured:
            raise ValueError("VLMResource: `sglang` is for backend='sglang', not 'transformers'")
        return self

    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        info, warn = _say(log)
        if self.backend == "sglang":
            return self._sglang_client(info, warn)
        if self.standin:
            if not self.allow_standin:
                raise dg.Failure("this deployment forbids the stand-in model; set a real model")
            path = ensure_standin(Path(self.model_cache_dir))
            warn(STANDIN_BANNER.format(model_id=STANDIN_MODEL_ID))
            return TransformersBackend(
                path,
                model_id=STANDIN_MODEL_ID,
                device=self.device,
                batch_size=self.batch_size,
                log=info,
            )
        backend = TransformersBackend(
            self.model_path,
            model_id=self.model_id,
            device=self.device,
            batch_size=self.batch_size,
            log=info,
        )
        info(f"VLM backend: transformers in-process, {self.model_path} on {backend.device}")
        return backend

    def _sglang_client(
        self, info: Callable[[str], None], warn: Callable[[str], None]
    ) -> VLMBackend:
        if self.sglang is None or not self.sglang.configured:
            raise dg.Failure("VLM backend 'sglang' needs VLMResource.sglang with `url` or `launch`")
        client = self.sglang.client(model_id=self.model_id)
        try:
            client.check_ready()  # a clear error before any work is sent or written
        except BaseException:
            client.close()
            raise
        # A task whose prompt plus answer budget cannot fit the server's context is a spec
        # error before any image is sent (core.labels.context).
        problems = server_problems(
            client.base_url,
            TASKS.values(),
            api_key=client.config.api_key,
            budget_factor=client.config.truncation_budget_factor,
        )
        if problems:
            client.close()
            raise SpecError(str(spec_path()), problems)
        if problems is None:
            info(f"SGLang at {client.base_url} did not answer /v1/tokenize: context not checked")
        info(f"VLM backend: SGLang at {client.base_url}, model {client.model_id}")
        if client.model_id.startswith("standin/"):
            warn(STANDIN_BANNER.format(model_id=client.model_id))
        return client
