"""Where computation runs and what it keeps: device choice and memory hand-back.

Both pipelines (training and segmentation) stand on this module; it knows nothing of either.
"""

from __future__ import annotations

import ctypes
import functools
import os
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
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    # both are glibc's own (musl has neither)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _glibc()
    return None if libc is None else libc.malloc_trim


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


@functools.lru_cache(maxsize=1)
def limit_malloc_arenas() -> bool:
    """Let glibc use at most ``ARENAS`` malloc arenas in this process, once; True if set.

    glibc gives threads their own arenas (up to 8 per core), and each keeps the buffers freed
    in it: zarr's reading threads left ~50 MB of decoded chunks in theirs on a 512³ run (the
    README's performance section). Arenas that exist already stay; later threads share. A
    ``MALLOC_ARENA_MAX`` in the environment is the user's choice and is left alone, as is any
    platform other than glibc.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS))


def release_free_memory() -> None:
    """Give memory that glibc keeps after large frees back to the system (a no-op elsewhere).

    Between the stages of a block-wise run, freed block buffers otherwise stay resident in
    the allocator and add to the next stage's peak.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
