"""OME-Zarr (NGFF 0.4 and 0.5) as the field writes it: multiscale pyramids, and label images
inside the image they label (``image.ome.zarr/labels/<name>``).

Everything is written chunk by chunk: level 0 is copied along the source's chunks, and each
coarser level is made from the one before it, one output chunk at a time (every second voxel
along the axes that are halved: nearest, which keeps label ids). Memory stays at a few chunks,
whatever the volume.

A label image gets ``image-label`` metadata (the source image ``../../`` and, for up to
:data:`MAX_COLOURS` ids, a colour per id) and is listed in ``labels/``'s ``labels``. NGFF 0.4
(zarr v2) or 0.5 (zarr v3) is chosen to match the image it lands in; a standalone OME-Zarr is
written as 0.4, which every current reader opens.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellcut.blocks import tiles

MIN_LEVEL_SIZE = 32
"""An axis is halved for the next level only while it stays at least this long."""
MAX_LEVELS = 5
MAX_COLOURS = 4096
"""Label images with more ids get no per-id colours (readers then pick their own)."""


def label_image_parent(path: str | Path) -> Path | None:
    """The OME-Zarr image that ``path`` (``IMAGE.ome.zarr/labels/NAME``) is a label image of,
    or None."""
    p = Path(path)
    image = p.parent.parent
    if p.parent.name == "labels" and image.name.lower().endswith(".ome.zarr") and image.is_dir():
        return image
    return None


def image_zarr_format(image: Path) -> int:
    """2 for an NGFF 0.4 image (zarr v2), 3 for 0.5 (zarr v3)."""
    return 3 if (image / "zarr.json").exists() else 2


def _level_shapes(shape: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(shape, factor from level 0) of every level."""
    levels = [(tuple(int(s) for s in shape), (1, 1, 1))]
    while len(levels) < MAX_LEVELS:
        prev, factor = levels[-1]
        halve = [s >= 2 * MIN_LEVEL_SIZE for s in prev]
        if not any(halve) or max(prev) <= 256:
            break
        levels.append(
            (
                tuple(math.ceil(s / 2) if h else s for s, h in zip(prev, halve, strict=True)),
                tuple(f * 2 if h else f for f, h in zip(factor, halve, strict=True)),
            )
        )
    return levels


def _downsample(prev: Any, out: Any, step: Sequence[int]) -> None:
    """``out`` = every ``step``-th voxel of ``prev``, one chunk of ``out`` at a time."""
    for region in tiles(out.shape, out.chunks):
        source = tuple(slice(r.start * k, r.stop * k, k) for r, k in zip(region, step, strict=True))
        out[region] = np.asarray(prev[source])


def colours(max_id: int) -> list[dict[str, Any]]:
    """A distinct, repeatable colour per label id 1..max_id (golden-ratio hues)."""
    out = []
    for value in range(1, max_id + 1):
        hue = (value * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
        rgba = [round(r * 255), round(g * 255), round(b * 255), 255]
        out.append({"label-value": value, "rgba": rgba})
    return out


def write_multiscale(
    zarr: Any,
    path: str | Path,
    data: Any,
    voxel_size: Sequence[float] | None,
    chunks: Sequence[int],
    copy: Any,
    *,
    label: bool = False,
    zarr_format: int = 2,
) -> None:
    """An OME-Zarr multiscale group at ``path`` (NGFF 0.4 with zarr v2, 0.5 with v3).

    ``zarr`` is the zarr module (as :func:`cellcut.io.import_zarr` configures it); ``copy(dst,
    src)`` fills level 0 from ``data`` (chunk by chunk for a chunked source). With ``label``,
    ``image-label`` metadata is added (source ``../../``, colours).
    """
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    levels = _level_shapes(data.shape)
    scale = [float(v) for v in voxel_size] if voxel_size else [1.0, 1.0, 1.0]
    unit = {"unit": "micrometer"} if voxel_size else {}
    datasets = []
    previous = None
    for i, (shape, factor) in enumerate(levels):
        arr = root.create_array(
            str(i),
            shape=shape,
            dtype=data.dtype,
            chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
            fill_value=0,
        )
        if previous is None:
            copy(arr, data)
        else:
            step = [f // p for f, p in zip(factor, levels[i - 1][1], strict=True)]
            _downsample(previous, arr, step)
        previous = arr
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [s * f for s, f in zip(scale, factor, strict=True)]}
                ],
            }
        )
    multiscale = {
        "axes": [{"name": a, "type": "space", **unit} for a in "zyx"],
        "datasets": datasets,
        "name": Path(str(path)).name,
    }
    meta: dict[str, Any] = {}
    if label:
        max_id = _block_max(root["0"])
        meta["image-label"] = {"source": {"image": "../../"}}
        if 0 < max_id <= MAX_COLOURS:
            meta["image-label"]["colors"] = colours(max_id)
    if zarr_format == 3:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale], **meta}
    else:
        root.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
        for key, value in meta.items():
            root.attrs[key] = {"version": "0.4", **value}


def _block_max(arr: Any) -> int:
    """The largest value of an integer array, chunk by chunk (0 for float data)."""
    if np.dtype(arr.dtype).kind not in "iu":
        return 0
    return max(int(np.asarray(arr[region]).max()) for region in tiles(arr.shape, arr.chunks))


def _attrs(zarr: Any, path: Path) -> dict[str, Any]:
    """A zarr group's attributes (NGFF 0.5 keeps them under ``ome``), or {} if none."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # not a zarr group
        return {}
    return {**attrs, **attrs.get("ome", {})}


def is_label_image(zarr: Any, path: str | Path) -> bool:
    """Whether ``path`` is an NGFF label image (a group with ``image-label`` metadata)."""
    return Path(path).is_dir() and "image-label" in _attrs(zarr, Path(path))


def label_names(zarr: Any, image: str | Path) -> list[str]:
    """The label images an OME-Zarr image lists in ``labels/`` that exist."""
    folder = Path(image) / "labels"
    if not folder.is_dir():
        return []
    listed = _attrs(zarr, folder).get("labels", [])
    return [n for n in listed if isinstance(n, str) and is_label_image(zarr, folder / n)]


def sync_labels(zarr: Any, image: Path) -> list[str]:
    """Make ``image/labels``'s list name every label image in it (a finished group with
    ``image-label`` metadata; hidden temporaries are not), keeping the listed order."""
    fmt = image_zarr_format(image)
    folder = image / "labels"
    if not folder.is_dir():
        return []
    group = zarr.open_group(str(folder), mode="a", zarr_format=fmt)
    present = [
        child.name
        for child in sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if is_label_image(zarr, child)
    ]
    ome = dict(group.attrs.get("ome", {})) if fmt == 3 else {}
    listed = list(ome.get("labels", []) if fmt == 3 else group.attrs.get("labels", []))
    names = [n for n in listed if n in present] + [n for n in present if n not in listed]
    if fmt == 3:
        group.attrs["ome"] = {**ome, "version": "0.5", "labels": names}
    else:
        group.attrs["labels"] = names
    return names
