"""Training on several processes: ``torchrun --nproc-per-node N cellcut train ...``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) training joins a process group
(NCCL on GPUs, gloo on CPUs) and wraps the W-Net in ``DistributedDataParallel``: each process
(rank) draws its own patches (its sampler's seed is ``seed + rank``), the gradients are
averaged, and every rank takes the same optimizer step, so the weights stay equal. What the
loop decides from the losses (explosion, collapse, plateau, the time budget, a stop request)
is decided on values averaged over the ranks or by rank 0, so every rank takes the same
branch. Only rank 0 writes the run folder (checkpoint, metrics, pictures); a checkpoint holds
every rank's random states, so ``--resume`` under the same ``torchrun`` continues exactly.

Without ``torchrun`` every function here is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_MINUTES = 30
"""How long a rank waits for the others at a collective before the run fails."""


def wanted() -> bool:
    """Whether this process was started by torchrun with other ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def join(device: torch.device) -> bool:
    """Join the process group torchrun describes (NCCL for CUDA devices, gloo otherwise), and
    give each rank its own GPU. Returns whether this call started the group (the caller then
    leaves it with :func:`leave`)."""
    if not wanted() or active():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return True


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def group(device: str) -> Iterator[None]:
    """The process group of a torchrun run, for the ``with`` block (nothing otherwise)."""
    from cellcut.runtime import resolve_device

    started = join(device_of_rank(resolve_device(device)))
    try:
        yield
    finally:
        if started:
            leave()


def device_of_rank(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (``LOCAL_RANK``)."""
    if wanted() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """``model`` in DistributedDataParallel (it broadcasts rank 0's weights), or None."""
    if not active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def mean(values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over the ranks (the values themselves for one process)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def from_main(value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if active():
        dist.barrier()
