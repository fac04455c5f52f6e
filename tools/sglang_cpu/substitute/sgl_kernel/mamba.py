"""`sgl_kernel.mamba` for the CPU substitute: importable, every kernel raises when called."""

from __future__ import annotations

from sgl_kernel import __getattr__  # noqa: F401 - the same refusing lookup
