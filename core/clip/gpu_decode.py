"""JPEG decoding on the GPU (nvJPEG through `torchvision.io.decode_jpeg(device="cuda")`).

On a CUDA device the forward pass is cheap and CPU decoding becomes the bottleneck, so JPEGs are
read as bytes on the CPU, decoded in batches on the GPU, resized and normalised there. A batch that
fails is retried file by file, and a file the GPU decoder rejects (progressive or CMYK JPEGs on old
nvJPEG, corrupt data) falls back to the CPU path (`core.ingest.decode.load_rgb` + open_clip's
transform). The same code runs with `device="cpu"` (libjpeg), which is how the tests exercise it.
torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work, and the
deprecation warning is silenced here until the move.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as _decode_jpeg

JPEG_MAGIC = b"\xff\xd8\xff"


def decode_jpeg(data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode_jpeg(data, **kwargs)


def gpu_decoding_enabled(setting: str, device: torch.device) -> bool:
    """`auto`: on when the model runs on CUDA; `on` requires CUDA; `off` never."""
    if setting not in {"auto", "on", "off"}:
        raise ValueError(f"gpu decoding must be auto, on or off, not {setting!r}")
    if setting == "on" and device.type != "cuda":
        raise ValueError("gpu decoding 'on' needs the model on a CUDA device")
    return setting != "off" and device.type == "cuda"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


@dataclass(frozen=True)
class GpuPreprocess:
    """open_clip's inference transform on tensors: shorter side to `size` (bicubic,
    antialiased), centre crop, scale to [0, 1], normalise."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        resized = TF.resize(
            image, [self.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
        )
        cropped = TF.center_crop(resized, [self.size, self.size])
        pixels = cropped.float().div_(255.0)
        return TF.normalize(pixels, list(self.mean), list(self.std))


def decode_batch(
    datas: Sequence[bytes],
    preprocess: GpuPreprocess,
    cpu_fallback: Callable[[bytes], torch.Tensor],
    *,
    device: torch.device | str = "cuda",
) -> tuple[torch.Tensor, list[int]]:
    """(N, 3, S, S) preprocessed pixels on `device` in input order, and the indices that fell
    back.

    `datas` are the files' bytes, already read (and checked against their image ids) by the
    caller. Non-JPEG files and files `decode_jpeg` rejects go through `cpu_fallback` (a CPU
    tensor that is moved to `device`). Raises only if the CPU fallback fails too.
    """
    results: list[torch.Tensor | None] = [None] * len(datas)
    jpeg_index = [i for i, data in enumerate(datas) if is_jpeg(data)]
    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg_index]
    decoded: list[torch.Tensor | None]
    try:
        decoded = (
            list(
                decode_jpeg(
                    encoded, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
                )
            )
            if encoded
            else []
        )
    except RuntimeError:
        decoded = []
        for data in encoded:  # find the bad file(s): one at a time
            try:
                decoded.append(
                    decode_jpeg(
                        data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
                    )
                )
            except RuntimeError:
                decoded.append(None)
    for i, image in zip(jpeg_index, decoded, strict=True):
        if image is not None:
            results[i] = preprocess(image)
    fallbacks = [i for i, result in enumerate(results) if result is None]
    for i in fallbacks:
        results[i] = cpu_fallback(datas[i]).to(device)
    return torch.stack(results), fallbacks  # type: ignore[arg-type]
