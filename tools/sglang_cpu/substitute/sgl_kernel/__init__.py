"""Plain-torch substitute for `sglang-kernel-cpu`, SGLang's C++ CPU kernels (not on PyPI).

On the path only when `SGLANG_USE_CPU_ENGINE=1` (tools/sglang_cpu/install_pth.py). SGLang's CPU
engine with `--attention-backend torch_native` and no AMX kernels calls exactly three of these
functions; they are implemented here. Every other name raises `NotImplementedError` when
called, so a code path we did not plan for fails loudly instead of computing something wrong.

`torch.ops.sgl_kernel.convert_weight_packed` is deliberately left undefined: SGLang probes it to
decide whether AMX kernels exist, and must keep using its native torch paths.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

__version__ = "0.0.0+cpu-substitute"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int | None = None,
) -> None:
    """Write each request's new KV slots into its row of the request-to-token table.

    `out_cache_loc` holds the slots of all requests back to back, in batch order.
    """
    taken = 0
    for row, start, end in zip(
        req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True
    ):
        count = max(end - start, 0)
        if count:
            req_to_token[row, start:end] = out_cache_loc[taken : taken + count].to(
                req_to_token.dtype
            )
        taken += count


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """Copy KV slot `src` to slot `tgt` in every layer buffer (raw addresses, bytes per slot)."""
    moves = list(zip(tgt_loc.tolist(), src_loc.tolist(), strict=True))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        for target, source in moves:
            ctypes.memmove(base + target * stride, base + source * stride, stride)


# Names some SGLang modules look up on `torch.ops.sgl_kernel` at import time (the Qwen-VL
# multimodal processor imports qwen3_5.py). Only `fused_sigmoid_mul_cpu` is computed.
_LIBRARY = torch.library.Library("sgl_kernel", "DEF")
_LIBRARY.define("fused_sigmoid_mul_cpu(Tensor(a!) x, Tensor gate) -> ()")


def _fused_sigmoid_mul(x: torch.Tensor, gate: torch.Tensor) -> None:
    x.mul_(torch.sigmoid(gate))


_LIBRARY.impl("fused_sigmoid_mul_cpu", _fused_sigmoid_mul, "CPU")

_IMPORT_TIME_ONLY = (
    "fused_qk_gemma_rmsnorm_cpu",
    "fused_qk_gemma_rmsnorm_with_gate_cpu",
    "fused_qkvzba_split_reshape_cat_contiguous_cpu",
    "fused_gdn_gating_cpu",
)


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"sgl_kernel CPU substitute: {name!r} is not implemented")

    refuse.__name__ = name
    return refuse


for _name in _IMPORT_TIME_ONLY:
    _LIBRARY.define(f"{_name}(Tensor[] args) -> Tensor")
    _LIBRARY.impl(_name, _refuse(_name), "CompositeExplicitAutograd")


def __getattr__(name: str) -> Callable[..., Any]:
    """Any other kernel: importable (SGLang imports many), but raises when called."""
    if name.startswith("__"):
        raise AttributeError(name)
    return _refuse(name)
