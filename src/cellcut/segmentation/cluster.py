"""Segmentation's block work on a dask.distributed cluster (``segment(..., cluster=...)``).

The client measures what is measured once for the whole volume (fingerprint, normalization,
the model's foreground classes, Voronoi-Otsu's blur) and writes the outputs; the workers do
the block work, in waves, each block a task that reads from and writes to zarr arrays in a
scratch folder every worker can reach:

1. **prediction** (then the CRF, when asked): each block writes its core of the probability.
   Cores are the arrays' chunks, so no two tasks write the same chunk.
2. **labelling**: each block labels its outer region and keeps the objects it owns
   (:func:`cellcut.blocks.owned_objects`), numbered 1..n, as a *piece* (its bounding box,
   compressed) in the scratch folder.
3. **merge**: the client gives each block's ids an offset in block order; each output tile
   then lays the pieces that reach it over each other in block order, as one process writes
   them (:func:`cellcut.segmentation.labelling.label_blocks`). The labels equal the
   one-process labels, ids included.

Each worker loads the model once (from its file, or from a copy scattered to every worker) and
opens the input once. A failing task is retried (:data:`RETRIES`); one that keeps failing
stops the run with the block's coordinates. Progress comes from ``as_completed`` into the same
``progress(stage, done, total)`` callbacks as one-process work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellcut.blocks import Block, blocks, tiles
from cellcut.errors import ClusterError, ConfigError
from cellcut.io import import_zarr, read_volume
from cellcut.model import LoadedModel, load_model
from cellcut.runtime import resolve_device
from cellcut.segmentation.labelling import label_block, offset_labels
from cellcut.segmentation.predict import (
    BlockPredictor,
    Progress,
    crf_block,
    crf_halo,
    predict_block,
    prediction_halo,
)

THREADS_VARIABLE = "CELLCUT_WORKER_THREADS"
"""Torch threads a worker computes with, read from its environment (dask starts workers with
one OpenMP thread); ``local:N`` sets it to the cores / N."""
RETRIES = 2
"""Times a failed block task is tried again before the run stops."""
CONNECT_TIMEOUT_S = 30


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            "cannot use a cluster",
            "dask.distributed is not installed",
            "pip install 'cellcut[distributed]'",
        ) from exc
    return distributed


@contextlib.contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: ``local:N`` (N worker processes on this
    machine, sharing its cores: each computes with cores/N threads), a scheduler address, or a
    Client (used as it is, not closed)."""
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if cluster.startswith("local:"):
        workers = int(cluster.removeprefix("local:"))
        threads = max(1, (os.cpu_count() or 1) // workers)
        with (
            _worker_environment(threads),
            distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env={THREADS_VARIABLE: str(threads)},
            ) as local,
            distributed.Client(local) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(cluster, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            "cannot reach the cluster",
            f"{cluster}: {exc}",
            "start a scheduler and workers there (dask scheduler / dask worker), or use local:N",
        ) from exc
    with client:
        yield client


def _worker_environment(threads: int) -> Any:
    """The environment dask gives the worker processes it starts: ``threads`` OpenMP/BLAS
    threads each (dask's default is one), and glibc's own trim threshold (dask's 64 kB makes
    every large buffer a fresh mmap: prediction on a worker took 4.42 s a block, not 2.64)."""
    import dask

    count = str(threads)
    environ = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count}
    return dask.config.set({"distributed.nanny.pre-spawn-environ": environ})


@dataclasses.dataclass
class ClusterRun:
    """The block work of one segmentation on a cluster; see the module."""

    client: Any
    source: tuple[Any, ...]  # ("file", path, channel, time, stamp) or ("zarr", path)
    model: Any  # (path, stamp): each worker loads it once; or a future of a scattered LoadedModel
    foreground: list[int]
    scratch: Path
    run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def start(
        cls,
        client: Any,
        image: Any,
        volume: Any,
        model_path: Path | None,
        loaded: LoadedModel,
        scratch: Path,
        channel: int | None,
        time: int | None,
        block: Sequence[int],
    ) -> ClusterRun:
        """Hand the input and the model to the workers: a file by its path; anything else
        copied into the scratch folder as zarr."""
        if isinstance(image, (str, os.PathLike)):
            text = os.fspath(image)
            where = text if "://" in text else os.path.abspath(text)
            source: tuple[Any, ...] = ("file", where, channel, time, _stamp(where))
        else:
            path = scratch / "input.zarr"
            copy = _create(path, volume.shape, volume.dtype, block)
            for core in tiles(volume.shape, block):
                copy[core] = np.asarray(volume[core])
            source = ("zarr", str(path))
        if model_path is not None:
            model: Any = (str(model_path), _stamp(model_path))
        else:
            loaded.model.to("cpu")
            model = client.scatter(loaded, broadcast=True, hash=False)
        return cls(client, source, model, list(loaded.foreground_classes), scratch)

    def predict(
        self,
        shape: Sequence[int],
        paths: dict[str, str],
        *,
        window: Sequence[int],
        overlap: float,
        block: Sequence[int],
        batch_size: int,
        device: str,
        precision: str,
        normalization: Any,
        denoise: Sequence[float] | None,
        progress: Progress | None,
    ) -> None:
        """Wave 1: the probability (and a refined model's interior) into ``paths``' arrays."""
        settings = {
            "window": tuple(window),
            "overlap": overlap,
            "batch_size": batch_size,
            "device": device,
            "precision": precision,
            "normalization": normalization,
            "denoise": denoise,
        }
        grid = blocks(shape, block, prediction_halo(window, shape))
        tasks = {
            i: (_predict_task, self.source, self.model, self.foreground, paths, blk, settings)
            for i, blk in enumerate(grid)
        }
        self._wave("probability", tasks, grid, progress)

    def crf(
        self,
        shape: Sequence[int],
        probability: str,
        out: str,
        *,
        voxel_size: Sequence[float] | None,
        block: Sequence[int],
        normalization: Any,
        denoise: Sequence[float] | None,
        progress: Progress | None,
    ) -> None:
        """The dense CRF of the probability at ``probability`` into ``out``, block by block."""
        settings = {"voxel_size": voxel_size, "normalization": normalization, "denoise": denoise}
        grid = blocks(shape, block, crf_halo(voxel_size))
        tasks = {
            i: (_crf_task, self.source, probability, out, blk, settings)
            for i, blk in enumerate(grid)
        }
        self._wave("crf", tasks, grid, progress)

    def label(
        self,
        shape: Sequence[int],
        probability: str,
        interior: str | None,
        out: str,
        *,
        method: str,
        voxel_size: Sequence[float] | None,
        block: Sequence[int],
        halo: Sequence[int],
        progress: Progress | None,
        options: dict[str, Any],
        trim_radius: float | None = None,
    ) -> tuple[int, dict[str, int]]:
        """Waves 2 and 3: instance labels into the array at ``out``; returns (objects, blocks
        per method used). ``trim_radius``: objects trimmed to the input image
        (:func:`cellcut.postprocess.trim_halo`)."""
        grid = blocks(shape, block, halo)
        pieces = self.scratch / "pieces"
        pieces.mkdir(exist_ok=True)
        settings = {"method": method, "voxel_size": voxel_size, "options": options}
        if trim_radius is not None:
            settings.update(source=self.source, trim_radius=trim_radius)
        tasks = {
            i: (_label_task, probability, interior, blk, shape, settings, str(pieces / f"{i}.zarr"))
            for i, blk in enumerate(grid)
        }
        found = self._wave("instances", tasks, grid, progress)
        chosen: dict[str, int] = {}
        placed, next_id = [], 1
        for i in range(len(grid)):
            n, method_used, region = found[i]
            if method in ("auto", "seeded"):
                chosen[method_used] = chosen.get(method_used, 0) + 1
            if n:
                placed.append((str(pieces / f"{i}.zarr"), region, next_id - 1))
                next_id += n
        tiles_ = [Block(core, core) for core in tiles(shape, block)]
        merges = {
            j: (_merge_task, out, tile.core, [p for p in placed if _meets(p[1], tile.core)])
            for j, tile in enumerate(tiles_)
        }
        self._wave("merge", merges, tiles_, progress)
        return next_id - 1, chosen

    def _wave(
        self,
        stage: str,
        tasks: dict[int, tuple[Any, ...]],
        grid: Sequence[Block],
        progress: Progress | None,
    ) -> dict[int, Any]:
        """Run ``tasks`` (index -> function and arguments), retried; their results by index."""
        distributed = _distributed()
        futures = {
            self.client.submit(
                *task,
                retries=RETRIES,
                pure=False,
                key=f"cellcut-{stage}-{i}-{self.run}",
            ): i
            for i, task in tasks.items()
        }
        results: dict[int, Any] = {}
        pending = distributed.as_completed(futures)
        for future in pending:
            i = futures[future]
            if future.status != "finished":
                error = future.exception()
                for other in futures:
                    other.cancel()
                raise ClusterError(
                    f"cannot segment: block {i + 1} of {len(grid)} ({_where(grid[i].core)}) failed "
                    f"in {stage}",
                    f"{type(error).__name__}: {error} (tried {RETRIES + 1} times)",
                    "check that block of the input; workers' logs have the traceback",
                )
            results[i] = future.result()
            if progress is not None:
                progress(stage, len(results), len(tasks))
        return results


def _where(region: Sequence[slice]) -> str:
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", region, strict=True))


def _meets(a: Sequence[slice], b: Sequence[slice]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b, strict=True))


def _create(path: Path, shape: Sequence[int], dtype: Any, chunks: Sequence[int]) -> Any:
    return import_zarr().create_array(
        str(path),
        shape=tuple(int(s) for s in shape),
        dtype=dtype,
        chunks=tuple(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True)),
        fill_value=0,
    )


# -- on the workers ---------------------------------------------------------------------------

_OPENED: dict[Any, Any] = {}  # per worker process: inputs and models, opened once


def _use_threads() -> None:
    wanted = os.environ.get(THREADS_VARIABLE)
    if wanted and wanted.isdigit() and int(wanted) > 0:
        import torch

        if torch.get_num_threads() != int(wanted):
            torch.set_num_threads(int(wanted))


KEEP_OPEN = {"input": 4, "model": 2}
"""Inputs and models a worker keeps open (the most recent), so that a long batch on the same
workers neither reopens every block's file nor holds every file it ever read."""


def _stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """A file's (or folder's) modification time and size: a file replaced between two runs
    on the same workers is opened again."""
    try:
        info = os.stat(path)
    except OSError:  # a URL
        return None
    return info.st_mtime_ns, info.st_size


def _remember(kind: str, key: Any, value: Any) -> Any:
    same_kind = [k for k in _OPENED if k[0] == kind]
    for old in same_kind[: max(0, len(same_kind) - KEEP_OPEN[kind] + 1)]:
        del _OPENED[old]
    _OPENED[key] = value
    return value


def _input(source: tuple[Any, ...]) -> Any:
    key = ("input", *source)
    if key in _OPENED:
        return _OPENED[key]
    if source[0] == "file":
        _, path, channel, time, _ = source
        data = read_volume(path, channel=channel, time=time, lazy=True, validate=False).data
    else:
        data = import_zarr().open_array(source[1], mode="r")
    return _remember("input", key, data)


def _model(model: Any, foreground: list[int], device: str) -> LoadedModel:
    where = resolve_device(device)
    if isinstance(model, tuple):  # (path, stamp)
        key = ("model", model[0], model[1], str(where))
        if key in _OPENED:
            model = _OPENED[key]
        else:
            loaded = load_model(model[0], map_location="cpu")
            loaded.model.to(where)
            model = _remember("model", key, loaded)
    else:
        model.model.to(where)
    return dataclasses.replace(model, foreground_classes=list(foreground))


def _predict_task(
    source: tuple[Any, ...],
    model: Any,
    foreground: list[int],
    paths: dict[str, str],
    blk: Block,
    settings: dict[str, Any],
) -> None:
    _use_threads()
    loaded = _model(model, foreground, settings["device"])
    prob = predict_block(
        _input(source),
        blk,
        BlockPredictor(loaded, settings["precision"]),
        window=settings["window"],
        overlap=settings["overlap"],
        batch_size=settings["batch_size"],
        device=resolve_device(settings["device"]),
        normalization=settings["normalization"],
        denoise=settings["denoise"],
    )
    zarr = import_zarr()
    zarr.open_array(paths["probability"], mode="r+")[blk.core] = prob[0]
    if len(prob) > 1:
        zarr.open_array(paths["interior"], mode="r+")[blk.core] = prob[1]


def _crf_task(
    source: tuple[Any, ...], probability: str, out: str, blk: Block, settings: dict[str, Any]
) -> None:
    _use_threads()
    zarr = import_zarr()
    prob = zarr.open_array(probability, mode="r")
    zarr.open_array(out, mode="r+")[blk.core] = crf_block(_input(source), prob, blk, **settings)


def _label_task(
    probability: str,
    interior: str | None,
    blk: Block,
    shape: Sequence[int],
    settings: dict[str, Any],
    piece: str,
) -> tuple[int, str, tuple[slice, ...] | None]:
    """Label one block; store the objects it owns (ids 1..n) in their bounding box at
    ``piece``. Returns (n, method used, the box in volume coordinates)."""
    zarr = import_zarr()
    local, n, chosen = label_block(
        zarr.open_array(probability, mode="r"),
        blk,
        shape,
        method=settings["method"],
        voxel_size=settings["voxel_size"],
        interior=None if interior is None else zarr.open_array(interior, mode="r"),
        image=_input(settings["source"]) if "source" in settings else None,
        trim_radius=settings.get("trim_radius"),
        **settings["options"],
    )
    if not n:
        return 0, chosen, None
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(local.any(axis=others))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    stored = _create(Path(piece), [s.stop - s.start for s in box], np.int32, (128, 128, 128))
    stored[...] = local[tuple(box)]
    region = tuple(slice(o + s.start, o + s.stop) for o, s in zip(blk.origin, box, strict=True))
    return n, chosen, region


def _merge_task(out: str, core: tuple[slice, ...], placed: list[tuple[str, Any, int]]) -> None:
    """One output tile: the pieces that reach it, laid in block order (later ones on top where
    they hold an object, as one process writes them)."""
    zarr = import_zarr()
    tile = np.zeros([s.stop - s.start for s in core], dtype=np.int32)
    for path, region, offset in placed:
        part = tuple(
            slice(max(r.start, c.start), min(r.stop, c.stop))
            for r, c in zip(region, core, strict=True)
        )
        piece = np.asarray(
            zarr.open_array(path, mode="r")[
                tuple(
                    slice(p.start - r.start, p.stop - r.start)
                    for p, r in zip(part, region, strict=True)
                )
            ],
            dtype=np.int32,
        )
        if offset:
            piece = offset_labels(piece, offset)
        where = tuple(
            slice(p.start - c.start, p.stop - c.start) for p, c in zip(part, core, strict=True)
        )
        np.copyto(tile[where], piece, where=piece > 0)
    zarr.open_array(out, mode="r+")[core] = tile
