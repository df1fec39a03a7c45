"""Device choice, precision, and the out-of-memory policy of the predictor.

"auto" picks CUDA, then Apple's MPS, then the CPU. On a GPU the image encoder runs under
autocast (bfloat16 where supported, else float16); the decoder and everything on the CPU run
in float32. A CUDA out-of-memory error never ends a prediction: `run_chunked` halves the
decoder batch and retries, and when one prompt at a time still does not fit it asks its
caller to move to the CPU (with a warning) and goes on there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; anything else as `torch.device` (checked).

    Raises ValueError for a device name torch does not know or a backend that is absent.
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
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'"
                         ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'auto'")
    return resolved


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The encoder's autocast dtype on `device`: bfloat16/float16 on a GPU, None on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


@contextlib.contextmanager
def encoder_precision(device: torch.device) -> Iterator[None]:
    """Autocast to half precision on a GPU; a no-op on the CPU (float32)."""
    dtype = half_dtype(device)
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
