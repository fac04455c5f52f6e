"""Write the `.pth` hook that puts the `sgl_kernel` substitute on the server venv's path.

Why a `.pth` and a condition: the PyPI `sglang` wheel imports `sgl_kernel`, whose CPU build
(`sglang-kernel-cpu`) is not published. The substitute in `substitute/` stands in for it only
when `SGLANG_USE_CPU_ENGINE=1` (SGLang's own switch for its CPU engine); without that variable
nothing is added, so a venv with the real CUDA `sglang-kernel` is never shadowed.

Run with the server venv's interpreter: `.venv-sglang/bin/python tools/sglang_cpu/install_pth.py`.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

SUBSTITUTE_DIR = Path(__file__).resolve().parent / "substitute"
PTH_NAME = "sglang_cpu_engine_substitute.pth"


def pth_line(directory: Path = SUBSTITUTE_DIR) -> str:
    """One line `site` executes at start-up (lines starting with `import` are run)."""
    return (
        "import os, sys; "
        f"os.environ.get('SGLANG_USE_CPU_ENGINE') == '1' and sys.path.insert(0, {str(directory)!r})"
        "\n"
    )


def install(site_packages: Path | None = None) -> Path:
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(pth_line())
    return target


if __name__ == "__main__":
    print(f"wrote {install()}")
