"""The SGLang server: a running one (or an sglang-router) by URL, or one we launch per step."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr, field_validator

from core.vlm.metrics import parse_prometheus, summarize
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.sglang_launcher import (
    CPU_ENGINE_ARGS,
    CPU_ENGINE_ENV,
    LaunchSettings,
    SGLangProcess,
    check_extra_args,
)
from core.vlm.sglang_router import RouterSettings, SGLangFleet


class SGLangLaunch(dg.Config):
    """How to start `python -m sglang.launch_server` on this host (bound to 127.0.0.1)."""

    model_path: str = Field(
        description="HF id or local dir, e.g. lmms-lab/llava-onevision-qwen2-7b-ov."
    )
    chat_template: str | None = Field(
        default=None,
        description="--chat-template; None: the model's own HF template (Qwen2-VL, llava-hf). "
        "lmms-lab OneVision: chatml-llava; liuhaotian LLaVA-1.5: vicuna_v1.1.",
    )
    tokenizer_path: str | None = None
    tp_size: int = Field(default=1, ge=1, description="Tensor parallel over this node's GPUs.")
    dp_size: int = Field(default=1, ge=1, description="Data-parallel replicas inside the server.")
    data_parallel: int = Field(
        default=1,
        ge=1,
        description="Servers launched on this host behind sglang-router (docs/extraction.md).",
    )
    router_policy: str = Field(
        default="cache_aware", description="sglang-router --policy (data_parallel > 1)."
    )
    port: int = Field(default=0, ge=0, description="0: a free port.")
    mem_fraction_static: float | None = None
    context_length: int | None = None
    served_model_name: str | None = Field(
        default=None, description="The name rows record as model_id; default: model_path."
    )
    compact_json: bool = Field(
        default=True, description="--constrained-json-disable-any-whitespace"
    )
    env: dict[str, str] = Field(
        default={}, description="Extra server environment, e.g. SGLANG_USE_CPU_ENGINE=1."
    )
    extra_args: list[str] = Field(
        default=[], description="More server flags; --host, --port and keys are refused."
    )
    command: list[str] = Field(
        default=["python", "-m", "sglang.launch_server"],
        description="Executable and leading arguments; tests point this at a fake.",
    )
    ready_timeout_s: float = Field(default=1800.0, gt=0, description="Weights + CUDA graphs.")
    stop_grace_s: float = Field(default=30.0, ge=0)

    _check_extra = field_validator("extra_args")(check_extra_args)

    @field_validator("router_policy")
    @classmethod
    def _check_policy(cls, policy: str) -> str:
        RouterSettings(policy=policy)  # type: ignore[arg-type]  # a clear error at config time
        return policy

    def settings(self) -> LaunchSettings:
        """What the launcher needs (the resource and the real-server tests share this)."""
        return LaunchSettings(
            model_path=self.model_path,
            chat_template=self.chat_template,
            tokenizer_path=self.tokenizer_path,
            tp_size=self.tp_size,
            dp_size=self.dp_size,
            port=self.port,
            mem_fraction_static=self.mem_fraction_static,
            context_length=self.context_length,
            served_model_name=self.served_model_name,
            compact_json=self.compact_json,
            env=self.env,
            extra_args=self.extra_args,
        )

    @classmethod
    def cpu_engine(
        cls,
        model_path: str | Path,
        python: str | Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        **fields: object,
    ) -> "SGLangLaunch":
        """A launch on SGLang's CPU engine (no GPU) with the server venv's `python`
        (`make sglang-env` makes .venv-sglang). Flags as the verified CPU recipe."""
        return cls(
            model_path=str(model_path),
            command=[str(python), "-m", "sglang.launch_server"],
            extra_args=[*CPU_ENGINE_ARGS, *(extra_args or [])],
            env={**CPU_ENGINE_ENV, **(env or {})},
            **fields,  # type: ignore[arg-type]
        )


class SGLangServer(dg.ConfigurableResource):
    """Exactly one of `url` or `launch`; with neither, asking for the server is an error.

    With `launch`, the server runs only inside `serving()`: the step that holds the `gpu` pool
    enters it, so the server starts after that step starts and stops before it ends, also when
    start-up itself fails. Dagster's own resource set-up (for every resource of a run, when the
    run starts, with the in-process executor) starts nothing.
    """

    url: str | None = Field(default=None, description="Running server or sglang-router.")
    launch: SGLangLaunch | None = None
    api_key: str | None = Field(
        default=None, description="Bearer key; set with dg.EnvVar, never logged."
    )
    max_in_flight: int = Field(default=64, ge=1, description="Concurrent requests per batch.")
    timeout_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    image_deadline_s: float = Field(default=900.0, gt=0, description="All tries of one image.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest pause between tries.")

    _process: SGLangProcess | None = PrivateAttr(default=None)
    _fleet: SGLangFleet | None = PrivateAttr(default=None)

    @property
    def configured(self) -> bool:
        return bool(self.url or self.launch)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.url and self.launch:
            raise dg.DagsterInvalidConfigError(
                "SGLangServer: set `url` or `launch`, not both", [], None
            )

    @contextmanager
    def serving(self, log: Callable[[str], None] = print) -> Iterator[str]:
        """The server's base URL while inside: with `launch`, the server (or the fleet behind
        sglang-router) starts on entry and its process groups stop on exit; with `url`, the
        running server's URL."""
        if self.url and self.launch:
            raise RuntimeError("SGLangServer: set `url` or `launch`, not both")
        if self.launch is None:
            yield self.base_url
            return
        if self._process is not None or self._fleet is not None:
            raise RuntimeError("SGLangServer: this resource is already serving")
        launch = self.launch
        settings = launch.settings()
        if launch.data_parallel > 1:
            fleet = SGLangFleet(
                settings,
                launch.data_parallel,
                command=launch.command,
                router=RouterSettings(policy=launch.router_policy),  # type: ignore[arg-type]
                api_key=self.api_key,
                ready_timeout_s=launch.ready_timeout_s,
                stop_grace_s=launch.stop_grace_s,
                log=log,
            )
            fleet.start()  # stops every process it started if any never becomes ready
            self._fleet = fleet
            try:
                yield fleet.url
            finally:
                self._fleet = None
                fleet.stop()
            return
        process = SGLangProcess(
            settings,
            command=launch.command,
            api_key=self.api_key,
            ready_timeout_s=launch.ready_timeout_s,
            stop_grace_s=launch.stop_grace_s,
            log=log,
        )
        process.start()  # stops the process group itself if it never becomes ready
        self._process = process
        try:
            yield process.url
        finally:
            self._process = None
            process.stop()

    @property
    def base_url(self) -> str:
        if self._fleet is not None:
            return self._fleet.url
        if self._process is not None:
            return self._process.url
        if self.url:
            return self.url.rstrip("/")
        if self.launch is not None:
            raise RuntimeError("SGLangServer: a launched server has a URL only inside serving()")
        raise RuntimeError("SGLangServer has neither `url` nor `launch` configured")

    def client(self, model_id: str | None = None) -> SGLangClient:
        return SGLangClient(
            SGLangClientConfig(
                base_url=self.base_url,
                api_key=self.api_key,
                model_id=model_id,
                max_in_flight=self.max_in_flight,
                timeout_s=self.timeout_s,
                max_attempts=self.max_attempts,
                image_deadline_s=self.image_deadline_s,
                backoff_max_s=self.backoff_max_s,
            )
        )

    @property
    def process(self) -> SGLangProcess | None:
        """The launched server (launch mode, inside serving()), for its pid and start-up time."""
        return self._process

    @property
    def fleet(self) -> SGLangFleet | None:
        """The launched servers and router (launch mode, data_parallel > 1, inside serving())."""
        return self._fleet

    def metrics(self) -> dict[str, float]:
        """Prefix-cache hit rate, throughput, queue depth from /metrics; {} if not enabled."""
        import httpx

        try:
            response = httpx.get(f"{self.base_url}/metrics", timeout=5.0)
        except httpx.HTTPError:
            return {}
        return summarize(parse_prometheus(response.text)) if response.status_code == 200 else {}
