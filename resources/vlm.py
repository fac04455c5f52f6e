"""The VLM backend the extraction asset uses: SGLang over HTTP, or transformers in-process."""

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

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


class VLMResource(dg.ConfigurableResource):
    """Chooses and builds the backend. `prod` configurations set `allow_standin=False`."""

    backend: Literal["transformers", "sglang"] = "transformers"
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

    _backend: VLMBackend | None = PrivateAttr(default=None)

    def get_backend(
        self, sglang: SGLangServer, log: dg.DagsterLogManager | None = None
    ) -> VLMBackend:
        """The configured backend; `sglang` is the run's server resource (unused otherwise)."""
        if self._backend is not None:
            return self._backend
        info = log.info if log else print
        if self.backend == "sglang":
            if not sglang.configured:
                raise dg.Failure("VLM backend 'sglang' needs SGLangServer `url` or `launch`")
            client = sglang.client(model_id=self.model_id)
            client.check_ready()  # a clear error before any work is sent or written
            info(f"VLM backend: SGLang at {client.base_url}, model {client.model_id}")
            if client.model_id.startswith("standin/"):
                (log.warning if log else print)(STANDIN_BANNER.format(model_id=client.model_id))
            self._backend = client
            return client
        if self.standin:
            if not self.allow_standin:
                raise dg.Failure("this deployment forbids the stand-in model; set a real model")
            path = ensure_standin(Path(self.model_cache_dir))
            (log.warning if log else print)(STANDIN_BANNER.format(model_id=STANDIN_MODEL_ID))
            self._backend = TransformersBackend(
                path,
                model_id=STANDIN_MODEL_ID,
                device=self.device,
                batch_size=self.batch_size,
                log=info,
            )
            return self._backend
        backend = TransformersBackend(
            self.model_path,
            model_id=self.model_id,
            device=self.device,
            batch_size=self.batch_size,
            log=info,
        )
        info(f"VLM backend: transformers in-process, {self.model_path} on {backend.device}")
        self._backend = backend
        return backend

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
