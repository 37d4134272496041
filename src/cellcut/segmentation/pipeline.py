"""``segment()``: a volume of any size -> probability, instance labels, statistics, picture.

The orchestrator only: open the image, check every output, load the model, measure the image's
fingerprint (:mod:`cellcut.fingerprint`), then four stages
(:mod:`~cellcut.segmentation.predict`, :mod:`~cellcut.segmentation.labelling`,
:mod:`~cellcut.segmentation.statistics`, writing), each block by block, and a self-check of the
result against the fingerprint (:mod:`~cellcut.segmentation.selfcheck`). Normalization
statistics are computed once over the whole volume (sampled). Peak memory is set by the block,
halo and window sizes, not by the volume: intermediate arrays live in a temporary zarr store
unless the volume is small.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellcut.blocks import tiles
from cellcut.config import SegmentOptions, segment_options
from cellcut.errors import ConfigError
from cellcut.fingerprint import Fingerprint, measure
from cellcut.io import (
    GuardedArray,
    Volume,
    check_volume_array,
    check_volume_values,
    detect_format,
    import_zarr,
    read_volume,
    sync_label_list,
    write_json,
    write_volume,
    zarr_block_io,
)
from cellcut.model import LoadedModel, resolve_model_path
from cellcut.normalize import fit_normalization
from cellcut.outputs import OutputSet, check_writable, split_location, workspace_folder
from cellcut.postprocess import sigma_voxels, trims_halo
from cellcut.runtime import limit_malloc_arenas, release_free_memory, resolve_device
from cellcut.segmentation.labelling import (
    Labelling,
    instance_halo,
    instance_scale,
    label_blocks,
    resolve_spot_sigma,
)
from cellcut.segmentation.predict import (
    Progress,
    crf_probability,
    decide_foreground,
    predict_probability,
    resolve_model,
)
from cellcut.segmentation.selfcheck import check_segmentation
from cellcut.segmentation.statistics import cell_statistics, write_stats_csv

WORK_IN_MEMORY_BYTES = 256 * 2**20
"""Below this size (of the float32 probability), intermediate arrays stay in memory instead of
a temporary zarr store."""
RETURN_ARRAYS_BYTES = 64 * 2**20
"""Below this size (of the float32 probability), labels and probability are returned in the
result as arrays as well as written."""


@dataclass
class SegmentResult:
    """Where everything went, and the numbers."""

    labels_path: Path | None
    probability_path: Path | None
    stats_path: Path | None
    overview_path: Path | None
    n_cells: int
    stats: Sequence[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None  # kept when small (RETURN_ARRAYS_BYTES) or asked for
    probability: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)  # the self-check's findings


def _output_set(
    image: Any,
    out: Any,
    probability_out: Any,
    stats: Any,
    overview: Any,
    overwrite: bool,
) -> OutputSet:
    """The run's outputs, committed together; the statistics' summary JSON is one of them."""
    for location in (out, probability_out):
        if location is not None:
            detect_format(split_location(location)[0])  # an unknown suffix, before any work
    summary = Path(stats).with_suffix(".summary.json") if stats is not None else None
    inputs = [image] if isinstance(image, (str, os.PathLike)) else []
    if isinstance(image, Volume) and Path(image.source).exists():
        inputs.append(image.source)
    targets = {
        "labels": out,
        "probability": probability_out,
        "statistics": stats,
        "summary": summary,
        "overview": overview,
    }
    return OutputSet(targets, overwrite=overwrite, inputs=inputs)


def segment(
    image: str | os.PathLike | np.ndarray | Volume,
    out: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | LoadedModel | None = None,
    options: SegmentOptions | dict[str, Any] | None = None,
    stats: str | os.PathLike | None = None,
    probability_out: str | os.PathLike | None = None,
    overview: str | os.PathLike | None = None,
    overwrite: bool = False,
    keep_in_memory: bool | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> SegmentResult:
    """Segment a volume with a trained W-Net: probability, instance labels, statistics, picture.

    Parameters
    ----------
    image
        Path or URL (read lazily), :class:`~cellcut.io.Volume`, numpy array, or a lazy array
        (dask, zarr, h5py: read block by block) or a pyramid of them (level 0 is used).
    out
        Labels output (.tif, .zarr, .ome.zarr, .h5[:dataset], .npy, .nii); None keeps them in
        memory only (``result.labels``).
    model
        None or ``"default"`` (the shipped model), a model name, a checkpoint/run path, or a
        :class:`~cellcut.model.LoadedModel`.
    options, settings
        Segmentation settings (:class:`cellcut.config.SegmentOptions`, where their defaults
        live): ``options`` as an object or dict, then keyword ``settings`` on top, e.g.
        ``voxel_size=(5, 2, 2)``, ``instances="watershed"``, ``window=64``, ``overlap=0.25``,
        ``block=256``, ``halo``, ``batch_size``, ``device``, ``channel``, ``time``,
        ``spot_sigma`` (``"auto"``: measured once for the whole volume and written to the
        summary), ``outline_sigma``, ``min_distance``, ``min_volume``, ``max_volume``,
        ``cluster`` (``"local:N"``, ``"tcp://HOST:PORT"`` or a ``distributed.Client``: the
        block work runs on dask workers, :mod:`~cellcut.segmentation.cluster`; the labels
        equal one process's) and ``scratch`` (intermediate arrays; on a cluster a folder every
        worker reaches).
    stats, probability_out, overview
        Optional outputs: per-cell CSV (a ``.summary.json`` is written beside it), the
        foreground probability volume, and an overview PNG.
    overwrite
        Replace outputs that exist.
    keep_in_memory
        Hold intermediate arrays in memory (default: when the volume is small).
    progress
        Called as ``progress(stage, blocks_done, blocks_total)``.
    """
    limit_malloc_arenas()  # before the first read starts zarr's threads
    client = settings.pop("cluster") if _is_client(settings.get("cluster")) else None
    opts = segment_options(options, **settings)
    outputs = _output_set(image, out, probability_out, stats, overview, overwrite)
    outputs.check()
    if opts.scratch is not None:
        check_writable(Path(opts.scratch), "scratch folder", inside=True)
    vol = _open(image, opts)
    with _connected(client or opts.cluster) as client:  # before the work: a cluster may be away
        return _segment_volume(image, vol, model, opts, outputs, client, keep_in_memory, progress)


def _segment_volume(
    image: Any,
    vol: Volume,
    model: Any,
    opts: SegmentOptions,
    outputs: OutputSet,
    client: Any,
    keep_in_memory: bool | None,
    progress: Progress | None,
) -> SegmentResult:
    voxel_size = opts.voxel_size or vol.voxel_size
    device = resolve_device(opts.device)
    loaded = resolve_model(model, device)
    _check_instances(opts, loaded)
    with zarr_block_io():
        fingerprint = measure(vol.data, voxel_size)
        blur = _denoise_sigma(opts, fingerprint)
        blur_voxels = sigma_voxels(blur, voxel_size) if blur > 0 else None
        norm = fit_normalization(
            vol.data,
            loaded.normalization,
            source=vol.source,
            blur=blur_voxels,
            **({"percentiles": loaded.percentiles} if loaded.percentiles else {}),
        )
        loaded = decide_foreground(vol.data, loaded, norm, blur_voxels, device)
    release_free_memory()
    nbytes = int(np.prod(vol.shape)) * 4
    in_memory = keep_in_memory if keep_in_memory is not None else nbytes < WORK_IN_MEMORY_BYTES
    in_memory = in_memory and client is None  # workers share the arrays through files
    block = opts.triple("block")
    with (
        outputs,
        zarr_block_io(),
        _workspace(vol.shape, block, in_memory, opts.scratch) as work,
    ):
        run = _cluster_run(client, image, vol, model, loaded, opts, work)
        prob, interior = _predict(
            vol.data, loaded, work, opts, device, norm, blur_voxels, voxel_size, progress, run
        )
        release_free_memory()
        if opts.instances == "none":
            labels = work.new("mask", np.uint8)
            for core in tiles(vol.shape, block):
                labels[core] = (np.asarray(prob[core]) > 0.5).astype(np.uint8)
            labelling, rows, summary = Labelling(0), [], {}
        else:
            labels = work.new("labels", np.int32)
            labelling = _label(
                prob, labels, opts, voxel_size, fingerprint, progress, interior, run, work,
                vol.data,
            )  # fmt: skip
            rows, summary = cell_statistics(labels, vol.data, voxel_size, block)
            summary.update(_labelling_summary(opts, labelling))
            summary["fingerprint"] = fingerprint.to_dict()
            summary["denoise"] = blur
            summary["crf"] = opts.crf
            scale = replace(fingerprint, object_radius=labelling.object_radius)
            summary["warnings"] = _self_check(rows, vol.shape, voxel_size, scale, fingerprint)
        summary["warnings"] = vol.warnings + summary.get("warnings", [])
        result = _write(outputs, vol, prob, labels, rows, summary, voxel_size, block)
        result.n_cells = labelling.n_objects
        result.warnings = list(summary["warnings"])
        if in_memory or nbytes < RETURN_ARRAYS_BYTES:
            result.labels, result.probability = np.asarray(labels[...]), np.asarray(prob[...])
        return result


def _is_client(value: Any) -> bool:
    return value is not None and not isinstance(value, str) and hasattr(value, "submit")


@contextlib.contextmanager
def _connected(cluster: Any) -> Iterator[Any]:
    """A dask client for ``cluster`` (:func:`cellcut.segmentation.cluster.connect`), or None."""
    if cluster is None:
        yield None
        return
    from cellcut.segmentation.cluster import connect

    with connect(cluster) as client:
        yield client


def _cluster_run(
    client: Any,
    image: Any,
    vol: Volume,
    model: Any,
    loaded: LoadedModel,
    opts: SegmentOptions,
    work: _Workspace,
) -> Any:
    """None without a cluster; else the block work handed to its workers (the input and the
    model: a file by its path, anything else copied there)."""
    if client is None:
        return None
    from cellcut.segmentation.cluster import ClusterRun

    model_path = None if isinstance(model, LoadedModel) else resolve_model_path(model or "default")
    return ClusterRun.start(
        client, image, vol.data, model_path, loaded, work.folder, opts.channel, opts.time,
        opts.triple("block"),
    )  # fmt: skip


def _open(image: str | os.PathLike | np.ndarray | Volume, opts: SegmentOptions) -> Volume:
    if isinstance(image, Volume):
        return image
    if isinstance(image, (str, os.PathLike)):
        return read_volume(image, channel=opts.channel, time=opts.time, lazy=True, validate=False)
    if isinstance(image, (list, tuple)) and image and hasattr(image[0], "shape"):
        image = image[0]  # a multiscale pyramid (napari's layers, OME-Zarr levels): level 0
    if not isinstance(image, np.ndarray) and all(
        hasattr(image, a) for a in ("shape", "dtype", "__getitem__")
    ):  # dask, zarr, h5py...: read block by block, never whole
        lazy = GuardedArray(image, type(image).__name__)
        check_volume_array(lazy, lazy.source)
        return Volume(lazy, None, lazy.source)
    arr = np.asarray(image)
    check_volume_array(arr, "array")
    check_volume_values(arr, "array")
    return Volume(arr, None, "array")


class _Workspace:
    """Zero-filled intermediate arrays: in memory, or chunked zarr (one chunk per block) in a
    folder removed afterwards."""

    def __init__(self, shape: Sequence[int], block: Sequence[int], folder: Path, in_memory: bool):
        self.shape, self.block, self.folder, self.in_memory = shape, block, folder, in_memory
        self.final = "probability"  # the probability the instances come from (after the CRF)

    def path(self, name: str) -> str:
        return str(self.folder / f"{name}.zarr")

    def new(self, name: str, dtype: Any) -> Any:
        if self.in_memory:
            return np.zeros(self.shape, dtype=dtype)
        return import_zarr().create_array(
            self.path(name),
            shape=tuple(self.shape),
            dtype=dtype,
            chunks=tuple(min(c, s) for c, s in zip(self.block, self.shape, strict=True)),
            fill_value=0,
        )


@contextlib.contextmanager
def _workspace(
    shape: Sequence[int], block: Sequence[int], in_memory: bool, scratch: str | None = None
) -> Iterator[_Workspace]:
    """The run's intermediate arrays, in a new folder of ``scratch`` (default: the system's
    temporary folder), removed afterwards."""
    if scratch is None:
        folder = workspace_folder("cellcut-segment")
    else:
        import tempfile

        Path(scratch).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="cellcut-segment-", dir=scratch))
    try:
        yield _Workspace(shape, block, folder, in_memory)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _label(
    prob: Any,
    labels: Any,
    opts: SegmentOptions,
    voxel_size: Sequence[float] | None,
    fingerprint: Fingerprint,
    progress: Progress | None,
    interior: Any | None = None,
    run: Any | None = None,
    work: _Workspace | None = None,
    image: Any | None = None,
) -> Labelling:
    halo = opts.triple("halo") or instance_halo(opts.triple("window"), voxel_size)
    options = opts.instance_options()
    if options["outline_sigma"] == "auto":  # the image's scale: the model's is measured with it
        options["outline_sigma"] = fingerprint.outline_sigma()
    scale, spot_sigma, prob_radius = instance_scale(
        prob, voxel_size, fingerprint, options["outline_sigma"]
    )
    auto_spot = options["spot_sigma"] == "auto" and interior is None
    if auto_spot:
        options["spot_sigma"] = spot_sigma  # measured once here, not again in label_blocks
    if options["min_volume"] == "auto":
        options["min_volume"] = scale.speck_volume()
    if options["min_distance"] == "auto":
        options["min_distance"] = scale.seed_distance()
    if interior is not None:  # a refined model: its boundaries' axes follow the nuclei's size
        options["object_radius"] = scale.object_radius
    trim = opts.trim_halo
    if trim == "auto":
        trim = trims_halo(scale.object_radius, voxel_size)
    trim_radius = scale.object_radius if trim and image is not None else None
    settings = {"method": opts.instances, "voxel_size": voxel_size, "block": opts.triple("block")}
    if run is None:
        labelling = label_blocks(
            prob, labels, halo=halo, progress=progress, interior=interior, image=image,
            trim_radius=trim_radius, **settings, **options,
        )  # fmt: skip
    else:  # the same, on the cluster's workers
        labelling = Labelling(0)
        options = resolve_spot_sigma(prob, opts.instances, voxel_size, interior, options, labelling)
        labelling.n_objects, labelling.chosen = run.label(
            prob.shape, work.path(work.final), None if interior is None else
            work.path("interior"), work.path("labels"), halo=halo, progress=progress,
            options=options, trim_radius=trim_radius, **settings,
        )  # fmt: skip
        labelling.trimmed = trim_radius is not None
    labelling.min_volume = float(options["min_volume"])
    labelling.min_distance = float(options["min_distance"])
    labelling.object_radius = scale.object_radius
    labelling.outline_sigma = float(options["outline_sigma"])
    if auto_spot and labelling.spot_sigma is not None:
        labelling.median_radius = prob_radius
    release_free_memory()
    return labelling


def _check_instances(opts: SegmentOptions, loaded: LoadedModel) -> None:
    if opts.instances == "seeded" and loaded.kind != "refined":
        raise ConfigError(
            "cannot segment",
            "--instances seeded needs a refined model (its interior probability)",
            "use a model made by cellcut refine, or another --instances",
        )


def _predict(
    data: Any,
    loaded: LoadedModel,
    work: _Workspace,
    opts: SegmentOptions,
    device: Any,
    norm: Any,
    blur: Sequence[float] | None,
    voxel_size: Sequence[float] | None,
    progress: Progress | None,
    run: Any | None = None,
) -> tuple[Any, Any]:
    """The foreground probability (after the dense CRF when ``opts.crf``; the CRF writes a new
    array, since it reads the old one's halos meanwhile), and a refined model's interior; on
    the cluster's workers when ``run``."""
    block = opts.triple("block")
    prob = work.new("probability", np.float32)
    interior = work.new("interior", np.float32) if loaded.kind == "refined" else None
    common = {"block": block, "normalization": norm, "denoise": blur, "progress": progress}
    window = opts.triple("window")
    if run is None:
        predict_probability(
            data, loaded, prob, window=window, overlap=opts.overlap, batch_size=opts.batch_size,
            device=device, interior_out=interior, precision=opts.precision, **common,
        )  # fmt: skip
    else:
        paths = {"probability": work.path("probability"), "interior": work.path("interior")}
        run.predict(
            data.shape, paths, window=window, overlap=opts.overlap, batch_size=opts.batch_size,
            device=opts.device, precision=opts.precision, **common,
        )  # fmt: skip
    final = "probability"
    if opts.crf:
        final = "probability-crf"
        smoothed = work.new(final, np.float32)
        if run is None:
            crf_probability(data, prob, smoothed, voxel_size=voxel_size, **common)
        else:
            run.crf(
                data.shape, work.path("probability"), work.path(final), voxel_size=voxel_size,
                **common,
            )  # fmt: skip
        prob = smoothed
    work.final = final
    return prob, interior


def _denoise_sigma(opts: SegmentOptions, fingerprint: Fingerprint) -> float:
    """The pre-model blur, µm (voxels without a voxel size): ``denoise``, or from the
    fingerprint when "auto"."""
    return fingerprint.denoise_sigma() if opts.denoise == "auto" else float(opts.denoise)


def _self_check(
    rows: Any,
    shape: Sequence[int],
    voxel_size: Sequence[float] | None,
    fingerprint: Fingerprint,
    image: Fingerprint | None = None,
) -> list[str]:
    columns = rows.columns
    fraction = float(columns["area"].sum()) / float(np.prod(shape))
    voxel_volume = float(np.prod(voxel_size)) if voxel_size else 1.0
    lo = np.stack([columns[f"bbox-{axis}"] for axis in range(3)], axis=1)
    hi = np.stack([columns[f"bbox-{axis + 3}"] for axis in range(3)], axis=1)
    spans = (hi - lo) / np.asarray(shape[-3:], dtype=np.float64)
    findings = check_segmentation(
        columns["volume_um3"], fraction, fingerprint, voxel_volume, spans, image
    )
    return [f.message for f in findings]


def _labelling_summary(opts: SegmentOptions, labelling: Labelling) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "instances": opts.instances,
        "object_radius": labelling.object_radius,
        "min_volume": labelling.min_volume,
        "trim_halo": labelling.trimmed,
    }
    if labelling.chosen:
        summary["instances_chosen"] = dict(labelling.chosen)
    if opts.instances in ("watershed", "auto"):
        summary["min_distance"] = labelling.min_distance
    if opts.instances in ("voronoi-otsu", "auto"):
        summary["spot_sigma"] = labelling.spot_sigma
        summary["outline_sigma"] = labelling.outline_sigma
        summary["median_object_radius"] = labelling.median_radius
    return summary


def _write(
    outputs: OutputSet,
    vol: Volume,
    prob: Any,
    labels: Any,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    voxel_size: Sequence[float] | None,
    block: Sequence[int],
) -> SegmentResult:
    """Write every output asked for to its temporary, then commit them together; labels and
    probability stream from their arrays."""
    wanted = outputs.paths
    if "labels" in wanted:
        write_volume(outputs.staged("labels"), labels, voxel_size=voxel_size, overwrite=True)
    if "probability" in wanted:
        write_volume(outputs.staged("probability"), prob, voxel_size=voxel_size, overwrite=True)
    if "statistics" in wanted:
        write_stats_csv(outputs.staged("statistics"), rows, overwrite=True)
        write_json(outputs.staged("summary"), summary)
    if "overview" in wanted:
        from cellcut.figures import plot_overview

        plot_overview(vol.data, labels, outputs.staged("overview"), block=block)
    final = outputs.commit()
    for path in final.values():
        sync_label_list(path)  # labels written into an OME-Zarr image: list them there
    return SegmentResult(
        final.get("labels"),
        final.get("probability"),
        final.get("statistics"),
        final.get("overview"),
        0,
        rows,
        summary,
    )
