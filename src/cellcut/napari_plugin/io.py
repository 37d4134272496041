"""Sample data and a reader for formats napari does not open by itself (zarr, OME-Zarr, HDF5)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellcut.errors import CellcutError
from cellcut.io import detect_format, import_zarr, read_pyramid, read_volume
from cellcut.ngff import is_label_image, label_names
from cellcut.outputs import split_location

LayerData = list[tuple[Any, dict, str]]


def mesospim_sample() -> LayerData:
    """The bundled mesoSPIM crop (see cellcut/samples/ATTRIBUTION.md)."""
    from cellcut.samples import sample_path

    vol = read_volume(sample_path("mesospim"))
    return [(vol.data, {"name": "mesospim sample", "colormap": "gray"}, "image")]


def get_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """Return a reader for zarr/OME-Zarr folders and HDF5 files, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        fmt = detect_format(split_location(path)[0])
    except CellcutError:
        return None
    return read_layers if fmt in ("zarr", "ome-zarr", "hdf5") else None


def read_layers(path: str) -> LayerData:
    """An OME-Zarr pyramid as a multiscale layer (every level, read lazily), anything else as
    its full-resolution volume. An NGFF label image (``IMAGE.ome.zarr/labels/NAME``) opens as
    a Labels layer, and an OME-Zarr image brings its label images along as Labels layers."""
    location = split_location(path)[0]
    zarr = import_zarr() if detect_format(path) in ("zarr", "ome-zarr") else None
    labelled = zarr is not None and is_label_image(zarr, location)
    layers = [_layer(path, "labels" if labelled else None)]
    if zarr is not None and not labelled:
        for name in label_names(zarr, location):
            layers.append(_layer(str(Path(location) / "labels" / name), "labels"))
    return layers


def _layer(path: str, kind: str | None) -> tuple[Any, dict[str, Any], str]:
    vol = read_volume(path, lazy=True, validate=False)
    name = os.path.basename(str(split_location(path)[0]).rstrip("/"))
    meta: dict[str, Any] = {"name": name}
    if vol.voxel_size:
        meta["scale"] = vol.voxel_size
    if kind is None:
        integer = vol.data.dtype.kind in "iu"
        kind = "labels" if integer and "label" in name.lower() else "image"
    levels = read_pyramid(split_location(path)[0]) if detect_format(path) == "ome-zarr" else None
    if levels and len(levels) > 1 and all(lv.ndim == 3 for lv in levels):
        meta["multiscale"] = True
        return levels, meta, kind
    return vol.data, meta, kind


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """napari writer for a Labels layer: OME-TIFF (.tif) or OME-Zarr (.ome.zarr) / zarr, with
    the layer's scale as voxel size (cellcut's atomic writer; an existing file is replaced,
    napari having asked the user)."""
    import numpy as np

    from cellcut.io import write_volume

    scale = meta.get("scale")
    voxel_size = (
        tuple(float(s) for s in scale[-3:]) if scale is not None and len(scale) >= 3 else None
    )
    written = write_volume(path, np.asarray(data), voxel_size=voxel_size, overwrite=True)
    return [str(written)]
