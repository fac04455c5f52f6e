"""The vision-language model the extraction asset talks to, as one resource.

`VLM` is what the asset needs: `with vlm.session(log) as backend:` opens a `VLMBackend` (an
in-process model loaded, or an SGLang server launched and its client checked) and closes it on
exit: model released, server stopped. The extraction step enters it, so what it holds lives
inside the step that holds the `gpu` pool and no longer. Dagster's own resource set-up opens
nothing: the in-process executor sets up every resource of a run when the run starts, before
ingestion, outside the pool. `VLMResource` is the deployment's implementation: SGLang over HTTP
(its server a nested `SGLangServer` resource, launched for the step when configured so) or
transformers in-process. Test implementations live in `doubles/`.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, model_validator

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
    """A VLM backend per step: built by `open_backend` on entering `session`, closed on exit.

    Assets declare `vlm: VLM` and enter `vlm.session(context.log)`; implementations only say how
    to open one. A VLM server that is down fails the step that enters the session, not the
    ingestion and CLIP steps before it.
    """

    @abstractmethod
    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        """A ready backend (checked before any work is sent); the caller closes it."""

    @contextmanager
    def session(self, log: dg.DagsterLogManager | None = None) -> Iterator[VLMBackend]:
        """The backend, open while inside; closed (model released) on exit, also on error."""
        backend = self.open_backend(log)
        try:
            yield backend
        finally:
            backend.close()


def _say(log: dg.DagsterLogManager | None) -> tuple[Callable[[str], None], Callable[[str], None]]:
    return (log.info, log.warning) if log else (print, print)


class VLMResource(VLM):
    """The backend chosen by `backend`. `prod` configurations set `allow_standin=False`.

    `sglang` (a nested resource) names the server for backend `sglang` and is left out for
    `transformers`; with `launch`, `session` starts the server before it opens the client and
    stops it after the client closes.
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

    @contextmanager
    def session(self, log: dg.DagsterLogManager | None = None) -> Iterator[VLMBackend]:
        if self.backend != "sglang" or self.sglang is None or self.sglang.launch is None:
            with super().session(log) as backend:
                yield backend
            return
        info, _ = _say(log)
        with self.sglang.serving(log=info), super().session(log) as backend:
            yield backend

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
