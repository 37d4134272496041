"""Where computation runs and what it keeps: device choice and memory hand-back.

Both pipelines (training and segmentation) stand on this module; it knows nothing of either.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

import torch

from cellcut.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps if available, else cpu; other names as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(
            "invalid configuration", f"device: {e}", "use auto, cpu, cuda or cuda:N"
        ) from e


def use_bfloat16(device: torch.device) -> bool:
    """Whether the networks run under bfloat16 autocast on ``device`` (CUDA with bf16 only)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_free_memory() -> None:
    """Give memory that glibc keeps after large frees back to the system (a no-op elsewhere).

    Between the stages of a block-wise run, freed block buffers otherwise stay resident in
    the allocator and add to the next stage's peak.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
