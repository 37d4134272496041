"""Readers fuzzed with hypothesis: mutated TIFF headers and strips, zarr chunks and metadata,
HDF5 and .npy files never raise anything but :class:`~cellcut.errors.CellcutError`.

Each format gets ``FUZZ_EXAMPLES`` examples (100) in the normal run; with
``CELLCUT_FUZZ_LONG=1`` the slow variants run 2,000 each
(``CELLCUT_FUZZ_LONG=1 ./scripts/test -m slow -k fuzz``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellcut.errors import CellcutError
from cellcut.io import import_zarr, read_volume

FUZZ_EXAMPLES = 100
LONG_EXAMPLES = int(os.environ.get("CELLCUT_FUZZ_LONG_EXAMPLES", "2000"))
LONG = os.environ.get("CELLCUT_FUZZ_LONG") == "1"
SHAPE = (6, 24, 24)
RUNS: dict[str, int] = {}  # examples run per format: the fuzzing must not be vacuous


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, SHAPE).astype(np.uint16)


def _tiff_bytes(compression: str | None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.tif"
        tifffile.imwrite(path, _volume(), compression=compression, rowsperstrip=8)
        return path.read_bytes()


def _h5_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=_volume(), chunks=(3, 12, 12), compression="gzip")
        return path.read_bytes()


def _npy_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.npy"
        np.save(path, _volume())
        return path.read_bytes()


ORIGINALS = {
    "plain.tif": _tiff_bytes(None),
    "zlib.tif": _tiff_bytes("zlib"),
    "v.h5": _h5_bytes(),
    "v.npy": _npy_bytes(),
}


def read_both_ways(location: str) -> None:
    """Read eagerly, then lazily and every block: only CellcutError may come out."""
    for lazy in (False, True):
        try:
            vol = read_volume(location, lazy=lazy)
            if lazy:
                for z in range(vol.shape[0]):
                    np.asarray(vol.data[z])
                vol.numpy()
        except CellcutError:
            pass


@st.composite
def mutations(draw, size: int, header: int):
    """Byte changes (most in the first ``header`` bytes, where the structure lives), and
    perhaps a cut."""
    n = draw(st.integers(1, 8))
    changes = []
    for _ in range(n):
        limit = header if draw(st.booleans()) else size
        changes.append((draw(st.integers(0, min(limit, size) - 1)), draw(st.integers(0, 255))))
    cut = draw(st.one_of(st.none(), st.integers(0, size)))
    return changes, cut


def mutate(data: bytes, changes, cut) -> bytes:
    out = bytearray(data)
    for position, value in changes:
        out[position] = value
    return bytes(out[:cut] if cut is not None else out)


def fuzz_file(name: str, examples: int):
    original = ORIGINALS[name]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(mutations(len(original), 512))
    def check(mutation):
        RUNS[name] = RUNS.get(name, 0) + 1
        changes, cut = mutation
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_bytes(mutate(original, changes, cut))
            read_both_ways(str(path) + (":raw" if name.endswith(".h5") else ""))

    return check


def _zarr_store(folder: Path) -> Path:
    path = folder / "v.zarr"
    arr = import_zarr().create_array(str(path), shape=SHAPE, dtype=np.uint16, chunks=(3, 12, 12))
    arr[...] = _volume()
    return path


def fuzz_zarr(examples: int):
    with tempfile.TemporaryDirectory() as d:
        template = Path(d) / "template"
        template.mkdir()
        store = _zarr_store(template)
        files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
        contents = {f: (store / f).read_bytes() for f in files}

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=not LONG,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.sampled_from(files), st.data())
    def check(victim, data):
        RUNS["zarr"] = RUNS.get("zarr", 0) + 1
        original = contents[victim]
        changes, cut = data.draw(mutations(max(1, len(original)), 512))
        delete = data.draw(st.booleans()) and victim != "zarr.json"
        with tempfile.TemporaryDirectory() as d:
            store = Path(d) / "v.zarr"
            for f, content in contents.items():
                (store / f).parent.mkdir(parents=True, exist_ok=True)
                (store / f).write_bytes(content)
            if delete:
                (store / victim).unlink()
            elif original:
                (store / victim).write_bytes(mutate(original, changes, cut))
            read_both_ways(str(store))
            shutil.rmtree(store, ignore_errors=True)

    return check


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_fuzz_file_readers(name):
    RUNS.pop(name, None)
    fuzz_file(name, FUZZ_EXAMPLES)()
    assert RUNS[name] >= FUZZ_EXAMPLES


def test_fuzz_zarr_reader():
    RUNS.pop("zarr", None)
    fuzz_zarr(FUZZ_EXAMPLES)()
    assert RUNS["zarr"] >= FUZZ_EXAMPLES


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set CELLCUT_FUZZ_LONG=1 for the long fuzzing run")
@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_fuzz_file_readers_long(name):
    RUNS.pop(name, None)
    fuzz_file(name, LONG_EXAMPLES)()
    print(f"{name}: {RUNS[name]} examples")
    assert RUNS[name] >= LONG_EXAMPLES


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set CELLCUT_FUZZ_LONG=1 for the long fuzzing run")
def test_fuzz_zarr_reader_long():
    RUNS.pop("zarr", None)
    fuzz_zarr(LONG_EXAMPLES)()
    print(f"zarr: {RUNS['zarr']} examples")
    assert RUNS["zarr"] >= LONG_EXAMPLES


def test_mutation_reaches_the_reader_errors():
    """The fuzzing is not vacuous: a cut TIFF and a broken chunk do raise CellcutError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "zlib.tif"
        path.write_bytes(ORIGINALS["zlib.tif"][:-100])
        with pytest.raises(CellcutError, match="truncated or corrupt"):
            read_volume(str(path))
        store = _zarr_store(Path(d))
        chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json")
        chunk.write_bytes(b"\x01" * 9)
        with pytest.raises(CellcutError, match="cannot be decoded"):
            read_volume(str(store))
