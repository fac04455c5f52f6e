"""The CPU-engine harness pieces that run without the server: the `.pth` hook and the substitute."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys

import pytest
import torch

from tools.sglang_cpu.install_pth import SUBSTITUTE_DIR, install


@functools.cache
def _load_substitute():
    """Loaded once per process: it defines the torch library `sgl_kernel`."""
    spec = importlib.util.spec_from_file_location(
        "sgl_kernel_under_test", SUBSTITUTE_DIR / "sgl_kernel" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("value", "on_path"), [("1", True), ("0", False), (None, False)])
def test_the_substitute_is_on_the_path_only_under_the_cpu_engine_switch(tmp_path, value, on_path):
    install(tmp_path)
    env = {"PATH": "/usr/bin:/bin"} | ({"SGLANG_USE_CPU_ENGINE": value} if value else {})
    code = f"import site, sys; site.addsitedir({str(tmp_path)!r}); print({str(SUBSTITUTE_DIR)!r} in sys.path)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(on_path), out.stderr


def test_assign_and_copy_write_what_the_triton_kernels_would():
    kernel = _load_substitute()
    table = torch.zeros((3, 8), dtype=torch.int32)
    kernel.assign_req_to_token_pool_cpu(
        torch.tensor([2, 0]),
        table,
        torch.tensor([1, 0]),
        torch.tensor([4, 2]),
        torch.tensor([10, 11, 12, 20, 21]),
        8,
    )
    assert table[2].tolist() == [0, 10, 11, 12, 0, 0, 0, 0]
    assert table[0].tolist() == [20, 21, 0, 0, 0, 0, 0, 0]

    layers = [torch.arange(12, dtype=torch.float32).reshape(6, 2) + 100 * i for i in range(2)]
    pointers = torch.tensor([layer.data_ptr() for layer in layers])
    strides = torch.tensor([layer.stride(0) * layer.element_size() for layer in layers])
    kernel.copy_all_layer_kv_cache_cpu(pointers, strides, torch.tensor([5]), torch.tensor([1]))
    for i, layer in enumerate(layers):
        assert layer[5].tolist() == [2 + 100 * i, 3 + 100 * i]


def test_every_other_kernel_raises_when_called():
    kernel = _load_substitute()
    with pytest.raises(NotImplementedError, match="silu_and_mul"):
        kernel.silu_and_mul(torch.zeros(2))
    assert not hasattr(torch.ops.sgl_kernel, "convert_weight_packed")
    x = torch.ones(3)
    torch.ops.sgl_kernel.fused_sigmoid_mul_cpu(x, torch.zeros(3))
    assert x.tolist() == [0.5, 0.5, 0.5]
