"""Device choice, precision, and the out-of-memory policy of the predictor.

"auto" picks CUDA, then Apple's MPS, then the CPU. The image encoder runs under autocast in
half precision on a GPU, and in bfloat16 on a CPU with hardware bfloat16 (`encoder_dtype`);
the decoder and the head run in float32 unless asked for bfloat16 (`decoder_dtype`). A CUDA
out-of-memory error never ends a prediction: `run_chunked` halves the decoder batch and
retries, and when one prompt at a time still does not fit it asks its caller to move to the
CPU (with a warning) and goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import torch

from ..errors import DeviceError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; anything else as `torch.device` (checked).

    Raises DeviceError (a ValueError) for a device torch does not know or a missing backend.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'"
                          ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU; "
                          "use 'auto' or 'cpu'")
    return resolved


Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), on Linux.

    oneDNN also emulates bfloat16 on older AVX-512 CPUs, but there it is no faster than
    float32, so only the hardware flags count.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def encoder_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The encoder's autocast dtype, or None for float32.

    "auto": bfloat16 on a CUDA GPU that supports it, else float16; float16 on MPS; on the CPU
    bfloat16 where the hardware has it (1.7x faster per encoder pass here, masks within
    IoU 0.99 of float32: docs/performance.md), else float32.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bfloat16() else None


@contextlib.contextmanager
def encoder_precision(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Autocast the encoder to `encoder_dtype(device, precision)`; float32 when it is None."""
    with _autocast(device, encoder_dtype(device, precision)):
        yield


DecoderPrecision = Literal["auto", "float32", "bfloat16"]
DECODER_PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def decoder_dtype(device: torch.device, precision: str = "float32") -> torch.dtype | None:
    """The WSI-SAM decoder's autocast dtype, or None for float32.

    "auto": bfloat16 on a CPU with hardware bfloat16 or a CUDA GPU that supports it, else
    float32. float16 is not offered: it was not measured here.
    """
    if precision not in DECODER_PRECISIONS:
        raise DeviceError(f"unknown decoder precision {precision!r}; use one of "
                          f"{', '.join(DECODER_PRECISIONS)}")
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bfloat16() else None


@contextlib.contextmanager
def decoder_precision(device: torch.device, precision: str = "float32") -> Iterator[None]:
    """Autocast the decoder to `decoder_dtype(device, precision)`; float32 when it is None."""
    with _autocast(device, decoder_dtype(device, precision)):
        yield


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch's autocast to `dtype` on `device`; plain float32 when `dtype` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS), whatever their class."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """Give cached blocks back to the driver after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        with contextlib.suppress(AttributeError, RuntimeError):
            torch.mps.empty_cache()


def run_chunked(
    run: Callable[[int, int], T],
    total: int,
    *,
    batch: int,
    fallback: Callable[[], bool],
    device: Callable[[], torch.device] = lambda: torch.device("cpu"),
) -> list[T]:
    """Call ``run(start, stop)`` over ``range(total)`` in chunks of at most `batch` items.

    On an out-of-memory error the chunk is retried at half the size. When a single item
    does not fit, ``fallback()`` is called once: it moves the work elsewhere (the CPU) and
    returns True, and the chunks go on at the original size; if it returns False (nowhere
    to go) or the fallback device also runs out, the error is raised.
    Returns the results in order. `device` says where the work runs now (for freeing memory).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    results: list[T] = []
    start, size, fell_back = 0, batch, False
    while start < total:
        stop = min(total, start + size)
        try:
            results.append(run(start, stop))
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            free_memory(device())
            if size > 1:
                size = max(1, size // 2)
                logger.warning("out of memory with a decoder batch of %d; retrying with %d",
                               stop - start, size)
                continue
            if fell_back or not fallback():
                raise
            fell_back, size = True, batch
            logger.warning("out of memory with one prompt; continuing on %s", device())
            continue
        start = stop
    return results
