"""Reading and writing 3D volumes.

Supported: TIFF (including OME-TIFF and ImageJ hyperstacks, optionally read lazily through
tifffile's zarr store), zarr v2/v3 arrays and groups, OME-Zarr (the full-resolution level is
read), HDF5 (``file.h5:dataset``), NIfTI (needs the ``nifti`` extra) and ``.npy``.

Every reader returns a :class:`Volume` whose data has axes (z, y, x). A channel or time axis of
length > 1 is never dropped silently: the caller picks one with ``channel=`` / ``time=`` and gets
a :class:`~cellcut.errors.VolumeError` naming the choices otherwise. Voxel sizes are returned in
micrometres where the file says so (OME metadata, ImageJ tags, NIfTI header, OME-Zarr scale).

Writes are atomic: data goes to a temporary file next to the target, which is renamed into
place only once complete, so a crash never leaves a half-written output. An existing output is
kept unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellcut.blocks import tiles
from cellcut.errors import CellcutError, InputFileError, OutputError, VolumeError
from cellcut.outputs import atomic_output, check_input_path, check_output, split_location

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NPY_SUFFIXES = (".npy",)
FORMATS = ("tiff", "zarr", "ome-zarr", "hdf5", "nifti", "npy")

_UNIT_TO_UM = {
    "micron": 1.0,
    "microns": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "m": 1e6,
    "meter": 1e6,
}


@dataclass
class Volume:
    """A single-channel 3D volume.

    Attributes
    ----------
    data
        Array with axes (z, y, x): a numpy array, or for lazy reads an array-like that supports
        ``shape``, ``dtype``, ``ndim`` and slicing (read on access).
    voxel_size
        (z, y, x) voxel size in micrometres, or None where the file does not say.
    source
        Where the data came from, for messages.
    warnings
        What the reader noticed and the user should know (the data was still read).
    """

    data: Any
    voxel_size: tuple[float, float, float] | None
    source: str
    warnings: list[str] = field(default_factory=list)  # e.g. chunks missing from a zarr store

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    def numpy(self) -> np.ndarray:
        """The whole volume in memory."""
        return np.asarray(self.data[...])


# --------------------------------------------------------------------------------------------
# Locations and formats


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of ``path`` from its suffix (and, for folders, zarr's metadata files)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(".ome.zarr") or (
        p.parent.name == "labels" and p.parent.parent.name.lower().endswith(".ome.zarr")
    ):
        return "ome-zarr"  # an image, or a label image inside one (IMAGE.ome.zarr/labels/NAME)
    if name.endswith(ZARR_SUFFIXES) or (
        p.is_dir() and any((p / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))
    ):
        return "zarr"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    raise InputFileError(
        "unknown format",
        f"'{p.suffix or p.name}' is not a volume format cellcut reads",
        "use .tif/.tiff, .zarr/.ome.zarr, .h5:dataset, .nii/.nii.gz or .npy",
        file=path,
    )


# --------------------------------------------------------------------------------------------
# Reading


def is_volume_path(p: str | os.PathLike) -> bool:
    """Whether ``p`` names a volume format cellcut reads (by suffix; a zarr folder counts)."""
    try:
        detect_format(p)
        return True
    except InputFileError:
        return False


def find_volumes(specs: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files, folders (their volume files, sorted) and glob patterns into volume paths.

    HDF5 ``file.h5:dataset`` locations are kept as given. Raises InputFileError when a spec
    matches nothing, or when nothing at all is found.
    """
    found: list[str] = []
    for spec in specs:
        text = os.fspath(spec)
        p = Path(text.split(":")[0] if ".h5:" in text or ".hdf5:" in text else text)
        if any(ch in text for ch in "*?["):
            matches = sorted(m for m in glob.glob(text) if is_volume_path(Path(m)))
            if not matches:
                raise InputFileError(
                    "no volumes",
                    f"the pattern '{text}' matches no volume file",
                    "check the pattern and the suffixes",
                )
            found += matches
        elif p.is_dir() and not is_volume_path(p):
            matches = sorted(str(c) for c in p.iterdir() if is_volume_path(c))
            if not matches:
                raise InputFileError(
                    "no volumes",
                    f"the folder holds no volume file ({', '.join(FORMATS)})",
                    "point to the files",
                    file=p,
                )
            found += matches
        else:
            found.append(text)
    if not found:
        raise InputFileError(
            "no volumes",
            "no image was given",
            "pass one or more files, folders or glob patterns",
        )
    return found


def read_volume(
    location: str | os.PathLike,
    *,
    channel: int | None = None,
    time: int | None = None,
    lazy: bool = False,
    validate: bool = True,
) -> Volume:
    """Read a 3D volume from a file.

    Parameters
    ----------
    location
        Path to the file; HDF5 needs ``file.h5:dataset``; a zarr group may be given as
        ``store.zarr:array_path`` (OME-Zarr groups are resolved to their full-resolution level).
    channel, time
        Index to take along a channel or time axis of length > 1. Required when such an axis
        exists, an error otherwise.
    lazy
        Keep the data on disk (memory map, zarr or tifffile's zarr store) and read on access.
    validate
        Check the values (finite, not constant). Skipped for lazy reads, whose values are
        checked block by block by the code that reads them.

    Returns
    -------
    Volume
        Data with axes (z, y, x) and the voxel size where the file records it.

    Raises
    ------
    InputFileError
        Missing, unreadable, corrupt or unknown file; missing HDF5 dataset (the message lists
        those present).
    VolumeError
        Not 3D, an unselected channel/time axis, an empty axis, an unsupported dtype, or (with
        ``validate``) NaN/Inf or constant values.
    """
    source = os.fspath(location)
    url = is_url(source)
    if url:
        path, key, fmt = _locate_url(source)
    else:
        path, key = split_location(location)
        check_input_path(location)
        if not path.exists():
            raise InputFileError(
                "cannot read volume",
                "the file does not exist",
                "check the path (relative paths start from the current folder)",
                file=source,
            )
        fmt = detect_format(path)
    readers = {
        "tiff": _read_tiff,
        "zarr": _read_zarr,
        "ome-zarr": _read_zarr,
        "hdf5": _read_hdf5,
        "nifti": _read_nifti,
        "npy": _read_npy,
    }
    try:
        data, axes, voxel_size = readers[fmt](path, key, lazy, source)
    except CellcutError:
        raise
    except Exception as e:  # a reader parses untrusted bytes: any failure is the file's
        raise InputFileError(
            "cannot read volume",
            f"the {'store cannot be read' if url else 'file is truncated or corrupt'} "
            f"({_cause(e)})",
            "check the URL and your access" if url else "re-export or re-copy the file",
            file=source,
        ) from e
    data = select_3d(data, axes, channel=channel, time=time, source=source)
    check_volume_array(data, source)
    # (not over a network: listing every chunk key of a remote store costs more than it tells)
    warnings = _missing_chunks(data, source) if fmt in ("zarr", "ome-zarr") and not url else []
    if not isinstance(data, np.ndarray):
        data = GuardedArray(data, source)
    if not lazy:
        data = np.asarray(data[...])
        if validate:
            check_volume_values(data, source)
    return Volume(data=data, voxel_size=voxel_size, source=source, warnings=warnings)


def _cause(e: BaseException) -> str:
    """An exception as a short single line for a message."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class _SliceStack:
    """A (z, y, x) volume whose z-planes are the 2D TIFF files of a folder, read on access."""

    def __init__(self, files: Sequence[Path], shape: tuple[int, int], dtype: np.dtype) -> None:
        self.files = list(files)
        self.shape = (len(self.files), *shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, index: Any) -> np.ndarray:
        import tifffile

        if index is Ellipsis:
            index = ()
        if not isinstance(index, tuple):
            index = (index,)
        index = tuple(slice(None) if i is Ellipsis else i for i in index)
        index = index + (slice(None),) * (3 - len(index))
        zs = range(self.shape[0])[index[0]]
        planes = []
        for z in [zs] if isinstance(zs, int) else zs:
            plane = tifffile.imread(self.files[z])
            if plane.shape != self.shape[1:]:
                raise VolumeError(
                    "not one stack",
                    f"slice {z} has shape {plane.shape}, the first {self.shape[1:]}",
                    "give a folder of slices of one volume",
                    file=self.files[z],
                )
            planes.append(plane[index[1:]])
        return planes[0] if isinstance(zs, int) else np.stack(planes).astype(self.dtype)


def read_stack_folder(folder: str | os.PathLike) -> Volume:
    """A folder of 2D TIFF slices as one (z, y, x) volume, in natural order of the names
    (``z2.tif`` before ``z10.tif``), read lazily plane by plane."""
    import tifffile

    root = Path(folder)
    check_input_path(root)
    if not root.is_dir():
        raise InputFileError(
            "cannot read stack", "not a folder", "give a folder of 2D TIFF slices", file=root
        )
    files = sorted(
        (p for p in root.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise InputFileError(
            "cannot read stack",
            "the folder holds no .tif file",
            "give a folder of slices",
            file=root,
        )
    try:
        with _tifffile_log(), tifffile.TiffFile(files[0]) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(s) for s in series.shape), series.dtype
    except Exception as e:
        raise InputFileError(
            "cannot read stack", f"its first slice cannot be read ({_cause(e)})", file=files[0]
        ) from e
    if len(shape) != 2:
        raise VolumeError(
            "not a stack of slices",
            f"{files[0].name} is {len(shape)}D (shape {shape}), not one 2D slice",
            "read a 3D file directly, without --stack-folder",
            file=root,
        )
    data = GuardedArray(_SliceStack(files, shape, dtype), os.fspath(root))
    check_volume_array(data, os.fspath(root))
    return Volume(data=data, voxel_size=None, source=os.fspath(root))


def is_url(location: str) -> bool:
    """``s3://…``, ``https://…``, ``memory://…``: a location fsspec resolves."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location) is not None


def _locate_url(url: str) -> tuple[Any, str | None, str]:
    """Store, key and format of a zarr or OME-Zarr store at an fsspec URL (``s3://``,
    ``https://``...); other formats are refused."""
    match = re.match(r"^(.*?\.zarr)/?:(.+)$", url, flags=re.IGNORECASE)
    store, key = (match.group(1), match.group(2).strip("/")) if match else (url.rstrip("/"), None)
    if not store.lower().endswith(".zarr"):
        raise InputFileError(
            "cannot read volume",
            "cellcut reads zarr and OME-Zarr stores from URLs, not other formats",
            "download the file, or give a .zarr / .ome.zarr URL",
            file=url,
        )
    try:
        import fsspec  # noqa: F401  (zarr opens URLs through it)
    except ImportError as e:
        raise InputFileError(
            "cannot read volume", "URLs need the fsspec package", "pip install fsspec", file=url
        ) from e
    return store, key, "ome-zarr" if store.lower().endswith(".ome.zarr") else "zarr"


def read_pyramid(location: str | os.PathLike) -> list[Any] | None:
    """The levels of an OME-Zarr image (full resolution first, read lazily), or None when the
    location is not a multiscale OME-Zarr group."""
    zarr = import_zarr()
    try:
        root = zarr.open_group(os.fspath(location), mode="r")
        ms = _ome_multiscales(dict(root.attrs))
        if not ms:
            return None
        return [root[d["path"]] for d in ms[0]["datasets"]]
    except Exception:  # not a group, no multiscales: the caller reads it as one volume
        return None


def _region(index: Any, shape: Sequence[int]) -> str:
    """``z 0:64, y 0:128, x 0:128`` for an index into a (z, y, x) array."""
    if index is Ellipsis:
        index = ()
    if not isinstance(index, tuple):
        index = (index,)
    index = tuple(slice(None) if i is Ellipsis else i for i in index)
    index = index + (slice(None),) * (len(shape) - len(index))
    parts = []
    for name, i, size in zip("zyx", index, shape, strict=False):
        if isinstance(i, slice):
            start, stop, _ = i.indices(int(size))
            parts.append(f"{name} {start}:{stop}")
        else:
            parts.append(f"{name} {i}")
    return ", ".join(parts)


class GuardedArray:
    """A lazily read (z, y, x) array whose read failures become one
    :class:`~cellcut.errors.InputFileError` naming the file, the region and the cause.

    Decoding happens long after a file was opened and checked (a TIFF strip cut short, a
    corrupt zarr chunk, an HDF5 read error): this is the one place where such failures are
    caught, whichever code reads the block.
    """

    def __init__(self, base: Any, source: str) -> None:
        self.base = base
        self.source = source
        self.shape = tuple(int(s) for s in base.shape)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(base, "chunks", None)
        if chunks is not None:
            # dask gives the block sizes along each axis: its first block stands for them
            self.chunks = tuple(int(max(c)) if isinstance(c, tuple) else int(c) for c in chunks)

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.base[index])
        except CellcutError:
            raise
        except Exception as e:  # every decoder raises its own types (zlib, zstd, h5py, ...)
            raise InputFileError(
                "cannot read volume",
                f"truncated or corrupt: the region {_region(index, self.shape)} cannot be "
                f"decoded ({_cause(e)})",
                "re-export or re-copy the file",
                file=self.source,
            ) from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __len__(self) -> int:
        return self.shape[0]


def _missing_chunks(data: Any, source: str) -> list[str]:
    """A warning when chunks of a zarr array are missing (they read as its fill value)."""
    base = data.base if isinstance(data, _AxisSelection) else data
    try:
        initialized = int(base.nchunks_initialized)
        total = int(base.nchunks)
    except Exception:  # not a zarr array, or a store that cannot list its keys
        return []
    if initialized >= total:
        return []
    return [
        f"{total - initialized} of {total} chunks are missing in {source}; they read as the "
        f"fill value {base.fill_value!r} (an incomplete copy?)"
    ]


def import_zarr():
    """``zarr``, with its codec threads limited to one unless the user configured them.

    zarr decodes chunks on a thread pool (by default min(32, CPUs + 4) threads). Each thread
    gets its own glibc arena, which keeps chunk-sized buffers after they are freed, so more
    threads cost memory for no gain in speed (the network, not decoding, bounds cellcut's
    throughput; the README's performance section has the figures). An explicit
    ``zarr.config.set({"threading.max_workers": N})`` made before cellcut's first read wins.
    The pool is created on zarr's first use, so this takes effect only if that is cellcut's.
    """
    import zarr

    if zarr.config.get("threading.max_workers", None) is None:
        zarr.config.set({"threading.max_workers": 1})
    return zarr


def zarr_block_io():
    """A context in which zarr keeps at most two chunks in flight (``async.concurrency`` 2).

    Block-wise segmentation reads one block (a few chunks) at a time. With zarr's default of
    10 chunks in flight their decoded buffers are held at once, raising the peak; one chunk in
    flight was slower in labelling (figures in the README). The previous setting is restored on
    exit.
    """
    return import_zarr().config.set({"async.concurrency": 2})


def _read_tiff(path: Path, key: str | None, lazy: bool, source: str):
    import tifffile

    try:
        with _tifffile_log() as log, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputFileError(
                    "cannot read volume", "the TIFF holds no image", "check the file", file=source
                )
            series = tif.series[0]
            _check_tiff_extent(tif, series, path, log)
            axes = series.axes.upper()
            voxel_size = _tiff_voxel_size(tif)
            if not lazy:
                data = series.asarray()
        if lazy:
            zarr = import_zarr()
            store = tifffile.imread(path, aszarr=True, series=0, level=0)
            data = zarr.open(store, mode="r")
            if not hasattr(data, "shape"):  # a pyramid: a group of levels
                data = data[next(iter(sorted(data.array_keys())))]
    except CellcutError as e:
        e.file = e.file or source
        raise
    except Exception as e:  # tifffile and its codecs raise many unrelated types
        raise InputFileError(
            "cannot read volume",
            f"the TIFF is truncated or corrupt ({_cause(e)})",
            "re-export or re-copy the file",
            file=source,
        ) from e
    if data.ndim == 3 and axes[-2:] == "YX" and not set(axes[:-2]) & set("CST"):
        axes = "ZYX"  # a plain page stack (tifffile says I or Q for its first axis)
    return data, axes, voxel_size


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    """Collect what tifffile logs meanwhile instead of letting it reach the console."""
    import logging

    logger = logging.getLogger("tifffile")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                messages.append(record.getMessage())

    handler = Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_tiff_extent(tif: Any, series: Any, path: Path, log: list[str]) -> None:
    """A TIFF cut short: its page chain breaks, or its image data runs past the end."""
    size = path.stat().st_size
    end = 0
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        end = int(offset) + int(series.nbytes)
    else:
        for page in series.pages:
            if page is None:
                continue
            for start, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                end = max(end, int(start) + int(count))
    broken = [m for m in log if "offset" in m.lower()]
    if end > size or broken:
        why = (
            f"the image data needs {end} bytes and the file has {size}"
            if end > size
            else f"its page chain is broken ({broken[0]})"
        )
        raise InputFileError(
            "cannot read volume",
            f"the TIFF is truncated or corrupt: {why}",
            "re-export or re-copy the file",
            file=path,
        )


def _tiff_voxel_size(tif) -> tuple[float, float, float] | None:
    """Voxel size in µm from OME-XML, else from ImageJ spacing + resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            sizes = []
            for ax in "ZYX":
                value = pixels.get(f"PhysicalSize{ax}")
                unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
                if value is None or unit.lower() not in _UNIT_TO_UM:
                    sizes = []
                    break
                sizes.append(float(value) * _UNIT_TO_UM[unit.lower()])
            if sizes:
                return tuple(sizes)  # type: ignore[return-value]
        except (ET.ParseError, StopIteration, ValueError):
            pass
    meta = tif.imagej_metadata
    if meta and "spacing" in meta:
        unit = str(meta.get("unit", "micron")).lower().replace("\\u00b5", "µ")
        factor = _UNIT_TO_UM.get(unit)
        page = tif.pages[0]
        tags = page.tags
        if factor is None or "XResolution" not in tags or "YResolution" not in tags:
            return None
        xres = tags["XResolution"].value
        yres = tags["YResolution"].value
        if not xres[0] or not yres[0]:
            return None
        x = xres[1] / xres[0]
        y = yres[1] / yres[0]
        return (float(meta["spacing"]) * factor, y * factor, x * factor)
    return None


def _read_zarr(path: Path, key: str | None, lazy: bool, source: str):
    zarr = import_zarr()

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several unrelated types for a broken store
        raise InputFileError(
            "cannot read volume",
            f"not a readable zarr store ({type(e).__name__}: {e})",
            "check that the folder is a complete zarr array or group",
            file=source,
        ) from e
    axes = None
    voxel_size = None
    if key is not None:
        try:
            node = node[key]
        except KeyError:
            raise _missing_key_error(source, key, _zarr_arrays(node)) from None
    if not hasattr(node, "shape"):
        multiscales = _ome_multiscales(dict(node.attrs))
        if multiscales:
            ms = multiscales[0]
            level = ms["datasets"][0]
            axes = (
                "".join(
                    (a["name"] if isinstance(a, dict) else a)[0].upper() for a in ms.get("axes", [])
                )
                or None
            )
            voxel_size = _ome_zarr_voxel_size(ms, level)
            node = node[level["path"]]
        else:
            arrays = _zarr_arrays(node)
            if len(arrays) != 1:
                raise _missing_key_error(source, None, arrays)
            node = node[arrays[0]]
    attrs = dict(node.attrs)
    if voxel_size is None:
        voxel_size = _attrs_voxel_size(attrs)
    return node, axes, voxel_size


def _ome_multiscales(attrs: dict) -> list | None:
    if "multiscales" in attrs:  # OME-Zarr 0.4
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:  # OME-Zarr 0.5
        return ome["multiscales"]
    return None


def _ome_zarr_voxel_size(ms: dict, level: dict) -> tuple[float, float, float] | None:
    scale = None
    for transform in level.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = transform["scale"]
    axes = ms.get("axes", [])
    if scale is None or len(scale) != len(axes):
        return None
    named = {}
    for ax, s in zip(axes, scale, strict=True):
        if isinstance(ax, dict):
            factor = _UNIT_TO_UM.get(str(ax.get("unit", "micrometer")).lower())
            if factor is None:
                return None
            named[ax["name"].lower()] = float(s) * factor
        else:
            named[str(ax).lower()] = float(s)
    if not all(a in named for a in "zyx"):
        return None
    return (named["z"], named["y"], named["x"])


def _attrs_voxel_size(attrs: dict) -> tuple[float, float, float] | None:
    for name in ("voxel_size_um", "voxel_size", "element_size_um"):
        value = attrs.get(name)
        if value is not None and len(value) == 3:
            return tuple(float(v) for v in value)  # type: ignore[return-value]
    return None


def _zarr_arrays(group) -> list[str]:
    names: list[str] = []

    def visit(g, prefix: str) -> None:
        for name, child in g.members():
            full = f"{prefix}{name}"
            if hasattr(child, "shape"):
                names.append(full)
            else:
                visit(child, full + "/")

    visit(group, "")
    return sorted(names)


def _missing_key_error(source: str, key: str | None, names: Sequence[str]) -> InputFileError:
    listing = ", ".join(names) if names else "none"
    if key is None:
        why = f"the file holds several datasets or none (datasets: {listing})"
    else:
        why = f"there is no dataset '{key}' (datasets: {listing})"
    return InputFileError(
        "cannot read volume", why, "name one as FILE:DATASET, e.g. image.h5:raw", file=source
    )


def _read_hdf5(path: Path, key: str | None, lazy: bool, source: str):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputFileError(
            "cannot read volume",
            f"not a readable HDF5 file ({e})",
            "check that the file is complete",
            file=source,
        ) from e
    names: list[str] = []
    f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    if key is None:
        if len(names) != 1:
            f.close()
            raise _missing_key_error(source, None, names)
        key = names[0]
    if key not in f or not isinstance(f[key], h5py.Dataset):
        f.close()
        raise _missing_key_error(source, key, names)
    dset = f[key]
    voxel_size = _attrs_voxel_size(dict(dset.attrs))
    if lazy:
        return dset, None, voxel_size  # the open file lives as long as the dataset
    try:
        data = dset[...]
    finally:
        f.close()
    return data, None, voxel_size


def _read_nifti(path: Path, key: str | None, lazy: bool, source: str):
    try:
        import nibabel as nib
    except ImportError as e:
        raise InputFileError(
            "cannot read volume",
            "NIfTI support is an optional extra",
            "install it with: pip install 'cellcut[nifti]'",
            file=source,
        ) from e
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if not lazy else img.dataobj
    except Exception as e:
        raise InputFileError(
            "cannot read volume", f"not a readable NIfTI file ({e})", "check the file", file=source
        ) from e
    zooms = img.header.get_zooms()
    unit = img.header.get_xyzt_units()[0]
    factor = _UNIT_TO_UM.get(str(unit).lower())
    voxel_size = None
    if factor is not None and len(zooms) >= 3:
        voxel_size = (zooms[2] * factor, zooms[1] * factor, zooms[0] * factor)
        voxel_size = tuple(float(v) for v in voxel_size)
    arr = np.asarray(data) if not lazy else np.asanyarray(img.dataobj)
    if arr.ndim < 3:
        return arr, None, voxel_size
    # NIfTI stores (x, y, z[, t, ...]); cellcut works in (z, y, x)
    arr = np.moveaxis(arr, (0, 1, 2), (arr.ndim - 1, arr.ndim - 2, arr.ndim - 3))
    axes = "".join("TC"[: arr.ndim - 3][::-1]) + "ZYX" if arr.ndim <= 5 else None
    return arr, axes, voxel_size


def _read_npy(path: Path, key: str | None, lazy: bool, source: str):
    try:
        data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputFileError(
            "cannot read volume",
            f"not a readable .npy file ({e})",
            "check that the file is complete",
            file=source,
        ) from e
    return data, None, None


class _AxisSelection:
    """A lazy view of an on-disk array with some leading/inner axes fixed to one index."""

    def __init__(self, base: Any, fixed: dict[int, int]) -> None:
        self.base = base
        self.fixed = fixed
        self.shape = tuple(s for i, s in enumerate(base.shape) if i not in fixed)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if index is Ellipsis:
            index = (slice(None),) * self.ndim
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        it = iter(index)
        full = tuple(
            self.fixed[i] if i in self.fixed else next(it) for i in range(len(self.base.shape))
        )
        return np.asarray(self.base[full])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


def select_3d(
    data: Any,
    axes: str | None,
    *,
    channel: int | None = None,
    time: int | None = None,
    source: str = "input",
) -> Any:
    """Reduce an array to (z, y, x), taking the requested channel and time point.

    Axes of length 1 are squeezed. With no axis names, a 4D array is read as (c, z, y, x) and
    a 5D one as (t, c, z, y, x), the OME order.
    """
    shape = tuple(int(s) for s in data.shape)
    if axes is None or len(axes) != len(shape):
        axes = {4: "CZYX", 5: "TCZYX"}.get(len(shape), "ZYX"[-len(shape) :] if shape else "")
        if len(shape) > 5:
            raise VolumeError(
                "not a 3D volume",
                f"{len(shape)}D data with shape {shape} and no axis names",
                "save it as a 3D (z, y, x) volume",
                file=source,
            )
    spatial = [i for i, a in enumerate(axes) if a in "ZYX"]
    other = [i for i in range(len(shape)) if i not in spatial]
    fixed: dict[int, int] = {}
    used_channel = used_time = False
    for i in other:
        kind = "time" if axes[i] == "T" else "channel"
        choice = time if kind == "time" else channel
        if shape[i] == 1 and choice in (None, 0):
            fixed[i] = 0
            continue
        if choice is None:
            flag = "--time" if kind == "time" else "--channel"
            raise VolumeError(
                "ambiguous volume",
                f"{len(shape)}D image with axes {axes} and shape {shape} has a {kind} axis of "
                f"length {shape[i]}",
                f"choose one with {flag} N (N from 0 to {shape[i] - 1})",
                file=source,
            )
        if not 0 <= choice < shape[i]:
            raise VolumeError(
                "invalid selection",
                f"{kind} {choice} is out of range for an axis of length {shape[i]}",
                f"choose a {kind} from 0 to {shape[i] - 1}",
                file=source,
            )
        fixed[i] = choice
        used_channel |= kind == "channel"
        used_time |= kind == "time"
    for name, value, used in (("channel", channel, used_channel), ("time", time, used_time)):
        if value not in (None, 0) and not used:
            raise VolumeError(
                "invalid selection",
                f"--{name} {value} was given but the image has no {name} axis "
                f"(axes {axes}, shape {shape})",
                f"drop --{name}",
                file=source,
            )
    spatial_axes = "".join(axes[i] for i in spatial)
    if len(spatial) < 3:
        raise VolumeError(
            "not a 3D volume",
            f"the image is {len(spatial)}D (axes {axes}, shape {shape})",
            "cellcut segments 3D stacks (z, y, x); give a z-stack",
            file=source,
        )
    if spatial_axes != "ZYX":
        raise VolumeError(
            "not a 3D volume",
            f"unexpected spatial axes {spatial_axes} (axes {axes}, shape {shape})",
            "save it with axes (z, y, x)",
            file=source,
        )
    if not fixed:
        return data
    if isinstance(data, np.ndarray):
        index = tuple(fixed.get(i, slice(None)) for i in range(len(shape)))
        return data[index]
    return _AxisSelection(data, fixed)


def check_volume_array(data: Any, source: str = "input") -> None:
    """Check rank, size and dtype of a (z, y, x) array; raise VolumeError otherwise."""
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 3:
        raise VolumeError(
            "not a 3D volume",
            f"the image is {len(shape)}D with shape {shape}",
            "cellcut segments 3D stacks (z, y, x); give a z-stack",
            file=source,
        )
    if min(shape) == 0:
        raise VolumeError(
            "empty volume",
            f"shape {shape} has an axis of length 0",
            "check the file and the channel/time choice",
            file=source,
        )
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "uif":
        raise VolumeError(
            "unsupported data type",
            f"{dtype} cannot be segmented",
            "convert the image to an integer or floating-point type",
            file=source,
        )


def check_volume_values(data: np.ndarray, source: str = "input") -> None:
    """Check that an in-memory volume is finite and not constant; raise VolumeError otherwise."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum() - n_nan)
            if n_nan == data.size:
                why = "all values are NaN"
            else:
                why = f"{n_nan} NaN and {n_inf} infinite values among {data.size} voxels"
            raise VolumeError(
                "invalid values",
                why,
                "replace them (e.g. by the background value) before segmenting",
                file=source,
            )
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise VolumeError(
            "constant image",
            f"every voxel has the value {lo.item()}",
            "there is nothing to segment: check the file and the channel",
            file=source,
        )


def check_label_values(data: np.ndarray, source: str = "labels") -> np.ndarray:
    """Instance labels as non-negative integers; a float array of whole numbers is accepted
    (some tools save labels so). Raises VolumeError otherwise."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all() or not np.array_equal(data, np.round(data)):
            n_bad = int((~finite).sum() + (finite & (data != np.round(data))).sum())
            raise VolumeError(
                "not a label image",
                f"{n_bad} voxels hold values that are not whole numbers ({data.dtype})",
                "give instance labels: one integer id per object, 0 for background",
                file=source,
            )
    elif data.dtype.kind not in "ui":
        raise VolumeError(
            "not a label image",
            f"{data.dtype} values are not object ids",
            "give instance labels: one integer id per object, 0 for background",
            file=source,
        )
    if data.size and data.min() < 0:
        raise VolumeError(
            "not a label image",
            f"it holds negative values (down to {data.min().item():g})",
            "give instance labels: one integer id per object, 0 for background",
            file=source,
        )
    if data.dtype.kind == "f":
        if data.size and data.max() > np.iinfo(np.int64).max:
            raise VolumeError(
                "not a label image", "its ids are too large", "relabel it", file=source
            )
        return data.astype(np.int64)
    return data


def check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    """Validate a (z, y, x) voxel size: three positive finite numbers."""
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3:
        raise VolumeError(
            "invalid voxel size",
            f"{len(values)} values given",
            "give three: Z Y X (micrometres)",
        )
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise VolumeError(
            "invalid voxel size",
            f"{values} has a value that is not a positive number",
            "give three positive sizes: Z Y X (micrometres)",
        )
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Writing


def write_volume(
    location: str | os.PathLike,
    data: Any,
    *,
    voxel_size: Sequence[float] | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
    compress: bool = True,
) -> Path:
    """Write a (z, y, x) array atomically; the format follows the suffix.

    Parameters
    ----------
    location
        Output path: ``.tif`` (OME-TIFF), ``.zarr`` (zarr v3 array), ``.ome.zarr`` (OME-Zarr 0.4,
        zarr v2), ``.h5[:dataset]`` (default dataset ``data``), ``.nii[.gz]`` or ``.npy``.
    data
        The volume: a numpy array, or a chunked array (zarr, HDF5), which TIFF, zarr and HDF5
        outputs copy piece by piece along its chunks, so memory stays at one chunk (other
        formats read it whole).
    voxel_size
        (z, y, x) in micrometres, stored where the format allows.
    overwrite
        Replace an existing output.
    chunks
        Chunk shape for zarr/HDF5 (default: a chunked input's chunks, else up to 64 per axis).
    compress
        Compress losslessly where the format allows (zlib/zstd/gzip).

    Returns
    -------
    Path
        The written file or folder.
    """
    chunked = not isinstance(data, np.ndarray) and getattr(data, "chunks", None) is not None
    if not chunked:
        data = np.asarray(data)
    check_volume_array(data, os.fspath(location))
    target = check_output(location, overwrite)
    _, key = split_location(location)
    vs = check_voxel_size(voxel_size) if voxel_size is not None else None
    fmt = detect_format(target)
    if chunked and fmt not in ("tiff", "zarr", "ome-zarr", "hdf5"):
        data, chunked = np.asarray(data[...]), False
    if chunks:
        chunk_shape = tuple(int(c) for c in chunks)
    elif chunked:
        chunk_shape = tuple(int(c) for c in data.chunks)
    else:
        chunk_shape = tuple(min(64, s) for s in data.shape)
    try:
        with atomic_output(target) as tmp:
            if fmt == "tiff":
                _write_tiff(tmp, data, vs, compress)
            elif fmt in ("zarr", "ome-zarr"):
                _write_zarr(tmp, data, vs, chunk_shape, ome=fmt == "ome-zarr", label_target=target)
            elif fmt == "hdf5":
                _write_hdf5(tmp, key or "data", data, vs, chunk_shape, compress)
            elif fmt == "nifti":
                _write_nifti(tmp, data, vs)
            else:
                with open(tmp, "wb") as fh:
                    np.save(fh, data)
    except OSError as e:
        raise OutputError(
            "cannot write output",
            str(e.strerror or e),
            "check free space and permissions",
            file=target,
        ) from e
    sync_label_list(target)
    return target


def sync_label_list(target: Path) -> None:
    """After a label image is written into an OME-Zarr image (``IMAGE.ome.zarr/labels/NAME``),
    list it there (temporaries, hidden names, are never listed)."""
    from cellcut.ngff import label_image_parent, sync_labels

    image = label_image_parent(target)
    if image is not None and not Path(target).name.startswith("."):
        sync_labels(import_zarr(), image)


def _copy(dst: Any, src: Any) -> None:
    """``dst[...] = src``, piece by piece along ``src``'s chunks when it is a chunked array."""
    if isinstance(src, np.ndarray):
        dst[...] = src
        return
    for piece in tiles(tuple(int(s) for s in src.shape), src.chunks):
        dst[piece] = src[piece]


def _write_tiff(path: Path, data: Any, vs, compress: bool) -> None:
    """OME-TIFF with physical sizes; a chunked ``data`` is streamed z-plane by z-plane."""
    import tifffile

    metadata: dict[str, Any] = {"axes": "ZYX"}
    if vs:
        for ax, size in zip("ZYX", vs, strict=True):
            metadata[f"PhysicalSize{ax}"] = size
            metadata[f"PhysicalSize{ax}Unit"] = "µm"
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    in_memory = isinstance(data, np.ndarray)
    pages = data if in_memory else (np.asarray(data[z]) for z in range(shape[0]))
    tifffile.imwrite(
        path,
        pages,
        shape=None if in_memory else shape,
        dtype=None if in_memory else dtype,
        ome=True,
        metadata=metadata,
        compression="zlib" if compress else None,
        bigtiff=int(np.prod(shape)) * dtype.itemsize > 2**31,
    )


def _write_zarr(
    path: Path, data: Any, vs, chunks, ome: bool, label_target: Path | None = None
) -> None:
    """A zarr v3 array, or an OME-Zarr multiscale group (:mod:`cellcut.ngff`); a label image
    when ``label_target`` lies in an OME-Zarr image's ``labels/``."""
    zarr = import_zarr()

    if ome:
        from cellcut.ngff import image_zarr_format, label_image_parent, write_multiscale

        image = label_image_parent(label_target) if label_target is not None else None
        fmt = image_zarr_format(image) if image is not None else 2
        write_multiscale(
            zarr, path, data, vs, chunks, _copy, label=image is not None, zarr_format=fmt
        )
    else:
        arr = zarr.create_array(
            str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0
        )
        _copy(arr, data)
        if vs:
            arr.attrs["voxel_size_um"] = list(vs)


def _write_hdf5(path: Path, key: str, data: Any, vs, chunks, compress: bool) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            key,
            shape=data.shape,
            dtype=data.dtype,
            chunks=tuple(min(c, 64) for c in chunks),
            compression="gzip" if compress else None,
        )
        _copy(dset, data)
        if vs:
            dset.attrs["element_size_um"] = list(vs)


def _write_nifti(path: Path, data: np.ndarray, vs) -> None:
    try:
        import nibabel as nib
    except ImportError as e:
        raise OutputError(
            "cannot write output",
            "NIfTI support is an optional extra",
            "install it with: pip install 'cellcut[nifti]'",
            file=path,
        ) from e
    zooms = vs or (1.0, 1.0, 1.0)
    affine = np.diag([zooms[2], zooms[1], zooms[0], 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("micron" if vs else "unknown")
    nib.save(img, str(path))


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Write JSON atomically (used for run records and metric reports)."""
    target = check_output(path, overwrite)
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    return target


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
