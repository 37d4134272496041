"""What a refinement learns from: images, and the instances that become their targets.

The instances come from a W-Net (``cellcut segment`` with its default settings, so the refined
model learns from what the W-Net would give the user, except the blur-halo trim: the refined
model learns the W-Net's own outline, and its own segmentation trims) or from labels given.
The W-Net's instances and probabilities are kept in the run folder (``pseudo-labels/``), so
that ``--resume`` continues on the same targets without segmenting again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellcut.config import RefineConfig
from cellcut.errors import CheckpointError, VolumeError
from cellcut.fingerprint import measure
from cellcut.io import Volume, check_label_values, check_volume_array, find_volumes, read_volume
from cellcut.model import LoadedModel
from cellcut.outputs import atomic_output
from cellcut.refinement.data import RefineVolume, prepare_volume
from cellcut.refinement.targets import doubtful_objects, refine_targets
from cellcut.runtime import resolve_device
from cellcut.segmentation import segment
from cellcut.segmentation.labelling import instance_scale
from cellcut.segmentation.predict import resolve_model
from cellcut.training.data import is_path

Source = str | os.PathLike | np.ndarray | Volume
"""An image or labels: a path, folder or glob, or an in-memory (z, y, x) array or Volume."""
CACHE = "pseudo-labels"


def expand(sources: Sequence[Source], what: str, channel: int | None = None) -> list[Volume]:
    """Every volume named by ``sources`` (paths read lazily), in order."""
    out: list[Volume] = []
    for i, source in enumerate(sources):
        if is_path(source):
            out += [read_volume(p, channel=channel, lazy=True) for p in find_volumes([source])]
        elif isinstance(source, Volume):
            out.append(source)
        else:
            data = np.asarray(source)
            check_volume_array(data, f"{what} array {i}")
            out.append(Volume(data, None, f"{what} array {i}"))
    return out


def source_wnet(model: str | os.PathLike | None, device: str) -> LoadedModel:
    """The W-Net whose instances become the targets (a refined model is refused)."""
    wnet = resolve_model(model, resolve_device(device))
    if wnet.kind != "wnet":
        raise CheckpointError(
            "cannot refine from this model",
            "it is already a refined model",
            "give the W-Net it came from (--from default, or a cellcut train run)",
            file=wnet.source,
        )
    return wnet


@dataclass
class RefineSources:
    """The images, the labels given (checked, in memory) or the W-Net that makes them."""

    volumes: list[Volume]
    labels: list[np.ndarray] | None
    wnet: LoadedModel


def open_sources(
    images: Sequence[Source],
    labels: Sequence[Source] | None,
    model: str | os.PathLike | None,
    cfg: RefineConfig,
) -> RefineSources:
    """Open and check everything a refinement learns from, before any work is written."""
    wnet = source_wnet(model, cfg.device)
    vols = expand(images, "image", cfg.channel)
    given = expand(labels, "labels") if labels else None
    if given is not None and len(given) != len(vols):
        raise VolumeError(
            "cannot refine",
            f"{len(vols)} image(s) but {len(given)} label volume(s)",
            "give one label volume per image, in the same order",
        )
    arrays = None
    if given is not None:
        arrays = [_given_labels(g, v.shape) for g, v in zip(given, vols, strict=True)]
    return RefineSources(vols, arrays, wnet)


def pseudo_labelled(
    sources: RefineSources, cfg: RefineConfig, run_dir: Path, resume: bool = False
) -> list[RefineVolume]:
    """Every image prepared with its targets (the W-Net's instances are cached in the run)."""
    cache = run_dir / CACHE
    if not resume:
        shutil.rmtree(cache, ignore_errors=True)
    out = []
    for i, vol in enumerate(sources.volumes):
        data = vol.numpy()
        vs = cfg.voxel_size or vol.voxel_size
        if sources.labels is not None:
            lab, prob = sources.labels[i], None
        else:
            lab, prob = _instances(data, vs, sources.wnet, cfg, cache / f"{i:03d}")
        fingerprint = measure(data, vs)  # once: the boundary axes and the denoising
        radius = fingerprint.object_radius
        if prob is not None:  # the scale the W-Net's instance step used, as segment does
            scale, _, _ = instance_scale(prob, vs, fingerprint, fingerprint.outline_sigma())
            radius = scale.object_radius
        target = refine_targets(
            lab,
            prob,
            uncertain=cfg.uncertain,
            shell=cfg.ignore_shell,
            doubtful=doubtful_objects(lab, cfg.doubtful_ratio),
            voxel_size=vs,
            radius=radius,
        )
        name = Path(vol.source).name
        blur = fingerprint.denoise_sigma()
        out.append(prepare_volume(name, data, target, vs, sources.wnet.normalization, blur))
    return out


def _given_labels(vol: Volume, shape: Sequence[int]) -> np.ndarray:
    if vol.shape != tuple(shape):
        raise VolumeError(
            "cannot refine",
            f"labels of shape {vol.shape} for an image of shape {tuple(shape)}",
            "give the labels made from that image",
            file=vol.source,
        )
    lab = check_label_values(vol.numpy(), vol.source)
    return lab.astype(np.int32, copy=False)


def _instances(
    data: np.ndarray,
    voxel_size: Sequence[float] | None,
    wnet: LoadedModel,
    cfg: RefineConfig,
    stem: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """The W-Net's instances and probability of ``data`` (read from the cache when there)."""
    paths = stem.with_suffix(".labels.npy"), stem.with_suffix(".probability.npy")
    if all(p.exists() for p in paths):
        lab, prob = (np.load(p) for p in paths)
        if lab.shape == prob.shape == data.shape:
            return lab, prob
    # the W-Net's own outline, halo untrimmed: learning the trimmed one, refined models merged
    # touching nuclei (light-sheet regime: 59 objects for 101); segmenting with a refined
    # model trims as with the W-Net (trim_halo)
    result = segment(
        data, None, model=wnet, voxel_size=voxel_size, device=cfg.device, keep_in_memory=True,
        trim_halo=False,
    )  # fmt: skip
    assert result.labels is not None and result.probability is not None
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path, array in zip(paths, (result.labels, result.probability), strict=True):
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    return result.labels, result.probability
