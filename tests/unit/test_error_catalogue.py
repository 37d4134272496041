"""A catalogue of bad input, as a hostile user gives it: every case ends with exit code 2, one
line on stderr starting with ``error:``, no traceback, and nothing left behind (no output, no
temporary sibling, no run folder, inputs untouched).

Each case builds its files in a fresh folder and returns the command line; the folder's whole
listing (names, sizes, modification times, hidden files included) is compared before and after.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from cellcut.cli import main
from cellcut.io import import_zarr
from cellcut.model import resolve_model_path

Case = Callable[[Path], list[str]]
CASES: dict[str, Case] = {}
SHAPE = (12, 40, 40)


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return register


def image(folder: Path, name: str = "img.tif", shape=SHAPE, **kwargs) -> str:
    """A small volume with blobs, written as ``name``."""
    rng = np.random.default_rng(0)
    data = rng.poisson(20, shape).astype(np.uint16)
    z, y, x = np.indices(shape)
    for cz, cy, cx in ((6, 12, 12), (6, 28, 26)):
        data[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 36] += 200
    path = folder / name
    if name.endswith((".tif", ".tiff")):
        tifffile.imwrite(path, data, **kwargs)
    elif name.endswith(".npy"):
        np.save(path, data)
    elif name.endswith(".zarr"):
        arr = import_zarr().create_array(str(path), shape=shape, dtype=data.dtype, chunks=(6,) * 3)
        arr[...] = data
    elif name.endswith(".h5"):
        with h5py.File(path, "w") as f:
            f["raw"] = data
    return str(path)


def labels_file(folder: Path, name: str, values: np.ndarray) -> str:
    np.save(folder / name, values)
    return str(folder / name)


def cut(path: str, keep: float | int) -> str:
    data = Path(path).read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else len(data) - keep
    Path(path).write_bytes(data[:n])
    return path


def corrupt_zarr_chunk(store: str) -> str:
    chunks = sorted(p for p in Path(store).rglob("*") if p.is_file() and "zarr.json" not in p.name)
    victim = chunks[len(chunks) // 2]
    victim.write_bytes(b"\x00garbage" * 8)
    return store


def checkpoint_copy(folder: Path, keep: float | None = None) -> str:
    data = resolve_model_path("default").read_bytes()
    path = folder / "model.pt"
    path.write_bytes(data if keep is None else data[: int(len(data) * keep)])
    return str(path)


# --- reading: every format, every way a file can be wrong ------------------------------------


@case("info: missing file")
def _(d):
    return ["info", str(d / "nope.tif")]


@case("info: missing file, unicode name")
def _(d):
    return ["info", str(d / "noyau-ß-核.tif")]


@case("info: 300-character file name")
def _(d):
    return ["info", str(d / ("a" * 300 + ".tif"))]


@case("info: unknown format")
def _(d):
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    return ["info", str(d / "image.png")]


@case("info: folder that is not zarr")
def _(d):
    (d / "stack").mkdir()
    return ["info", str(d / "stack")]


@case("info: empty .tif")
def _(d):
    (d / "e.tif").write_bytes(b"")
    return ["info", str(d / "e.tif")]


@case("info: text file named .tif")
def _(d):
    (d / "t.tif").write_text("not an image\n" * 20)
    return ["info", str(d / "t.tif")]


@case("info: uncompressed TIFF truncated at a third")
def _(d):
    return ["info", cut(image(d), 1 / 3)]


@case("info: zlib TIFF cut inside its last strip")
def _(d):
    return ["info", cut(image(d, compression="zlib"), 200)]


@case("info: TIFF with a broken header")
def _(d):
    path = image(d)
    data = bytearray(Path(path).read_bytes())
    data[4:8] = (10**9).to_bytes(4, "little")  # first page offset far beyond the end
    Path(path).write_bytes(bytes(data))
    return ["info", path]


@case("info: 2D TIFF")
def _(d):
    tifffile.imwrite(d / "p.tif", np.ones((32, 32), np.uint8))
    return ["info", str(d / "p.tif")]


@case("info: 4D without --channel")
def _(d):
    np.save(d / "c.npy", np.random.default_rng(0).random((3, 4, 8, 8)))
    return ["info", str(d / "c.npy")]


@case("info: 5D without --time")
def _(d):
    np.save(d / "t.npy", np.random.default_rng(0).random((2, 1, 4, 8, 8)))
    return ["info", str(d / "t.npy")]


@case("info: --channel out of range")
def _(d):
    np.save(d / "c.npy", np.random.default_rng(0).random((3, 4, 8, 8)))
    return ["info", str(d / "c.npy"), "--channel", "5"]


@case("info: --channel on a single-channel image")
def _(d):
    return ["info", image(d), "--channel", "2"]


@case("info: an axis of length 0")
def _(d):
    np.save(d / "e.npy", np.zeros((0, 8, 8)))
    return ["info", str(d / "e.npy")]


@case("info: all NaN")
def _(d):
    np.save(d / "n.npy", np.full((4, 8, 8), np.nan, np.float32))
    return ["info", str(d / "n.npy")]


@case("info: some infinite values")
def _(d):
    a = np.random.default_rng(0).random((4, 8, 8))
    a[0, 0, :3] = np.inf
    np.save(d / "i.npy", a)
    return ["info", str(d / "i.npy")]


@case("info: constant image")
def _(d):
    np.save(d / "k.npy", np.full((4, 8, 8), 7.0))
    return ["info", str(d / "k.npy")]


@case("info: complex values")
def _(d):
    np.save(d / "c.npy", np.ones((4, 8, 8), np.complex64))
    return ["info", str(d / "c.npy")]


@case("info: boolean values")
def _(d):
    np.save(d / "b.npy", np.ones((4, 8, 8), bool))
    return ["info", str(d / "b.npy")]


@case("info: truncated .npy")
def _(d):
    return ["info", cut(image(d, "v.npy"), 0.5)]


@case("info: .npy of Python objects")
def _(d):
    np.save(d / "o.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    return ["info", str(d / "o.npy")]


@case("info: corrupt zarr chunk")
def _(d):
    return ["info", corrupt_zarr_chunk(image(d, "v.zarr"))]


@case("info: zarr with broken metadata")
def _(d):
    store = image(d, "v.zarr")
    (Path(store) / "zarr.json").write_text("{ not json")
    return ["info", store]


@case("info: HDF5 with a missing dataset")
def _(d):
    return ["info", image(d, "v.h5") + ":nothing"]


@case("info: HDF5 with several datasets and no name")
def _(d):
    path = image(d, "v.h5")
    with h5py.File(path, "a") as f:
        f["other"] = np.ones((4, 8, 8))
    return ["info", path]


@case("info: truncated HDF5")
def _(d):
    return ["info", cut(image(d, "v.h5"), 0.5) + ":raw"]


# --- flags --------------------------------------------------------------------------------


@case("segment: 300-character input name")
def _(d):
    return ["segment", str(d / ("i" * 300 + ".tif")), "--out", str(d / "s.tif")]


@case("segment: --window 0")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--window", "0"]


@case("segment: --overlap 1.5")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--overlap", "1.5"]


@case("segment: --batch-size 0")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--batch-size", "0"]


@case("segment: --block -1")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--block", "-1"]


@case("segment: --spot-sigma nan")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--spot-sigma", "nan"]


@case("segment: --min-volume -5")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--min-volume", "-5"]


@case("segment: --outline-sigma -1")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--outline-sigma", "-1"]


@case("segment: --voxel-size with a zero")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--voxel-size", "0", "1", "1"]


@case("segment: --voxel-size inf")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--voxel-size", "inf", "1", "1"]


@case("segment: --instances that does not exist")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--instances", "magic"]


@case("segment: missing --out")
def _(d):
    return ["segment", image(d)]


@case("segment: unknown flag")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--fast"]


@case("command that does not exist")
def _(d):
    return ["segmnet", image(d)]


@case("segment: --device that does not exist")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--device", "tpu"]


@case("segment: missing model")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--model", str(d / "none.pt")]


@case("segment: model of random bytes")
def _(d):
    (d / "bad.pt").write_bytes(os.urandom(4096))
    return ["segment", image(d), "--out", str(d / "s.tif"), "--model", str(d / "bad.pt")]


@case("segment: truncated model")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--model", checkpoint_copy(d, 0.5)]


# --- outputs ------------------------------------------------------------------------------


@case("segment: existing output")
def _(d):
    (d / "s.tif").write_bytes(b"earlier result")
    return ["segment", image(d), "--out", str(d / "s.tif")]


@case("segment: --out is the input, with --overwrite")
def _(d):
    path = image(d)
    return ["segment", path, "--out", path, "--overwrite"]


@case("segment: --probability equal to --out")
def _(d):
    out = str(d / "s.tif")
    return ["segment", image(d), "--out", out, "--probability", out]


@case("segment: --overview equal to --stats")
def _(d):
    out = str(d / "x.png")
    return ["segment", image(d), "--out", str(d / "s.tif"), "--stats", out, "--overview", out]


@case("segment: --stats in /proc")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.tif"), "--stats", "/proc/cells.csv"]


@case("segment: output inside a file")
def _(d):
    (d / "file.txt").write_text("a file")
    return ["segment", image(d), "--out", str(d / "file.txt" / "s.tif")]


@case("segment: 300-character output name")
def _(d):
    return ["segment", image(d), "--out", str(d / ("s" * 300 + ".tif"))]


@case("segment: output format unknown")
def _(d):
    return ["segment", image(d), "--out", str(d / "s.png")]


@case("segment: zlib TIFF cut inside its last strip")
def _(d):
    path = cut(image(d, "ü.tif", compression="zlib"), 200)
    return ["segment", path, "--out", str(d / "s.tif"), "--stats", str(d / "c.csv")]


@case("segment: corrupt zarr chunk, every output asked")
def _(d):
    store = corrupt_zarr_chunk(image(d, "v.zarr"))
    return [
        "segment", store, "--out", str(d / "out" / "s.tif"), "--stats", str(d / "c.csv"),
        "--probability", str(d / "p.zarr"), "--overview", str(d / "o.png"),
    ]  # fmt: skip


# --- training and refinement --------------------------------------------------------------


@case("train: checkpoint of random bytes")
def _(d):
    (d / "bad.pt").write_bytes(os.urandom(4096))
    return ["train", image(d), "--out", str(d / "run"), "--from-pretrained", str(d / "bad.pt")]


@case("train: truncated checkpoint")
def _(d):
    model = checkpoint_copy(d, 0.5)
    return ["train", image(d), "--out", str(d / "run"), "--from-pretrained", model]


@case("train: folder with no images")
def _(d):
    (d / "empty").mkdir()
    return ["train", str(d / "empty"), "--out", str(d / "run")]


@case("train: glob that matches nothing")
def _(d):
    return ["train", str(d / "*.tif"), "--out", str(d / "run")]


@case("train: text file named .tif")
def _(d):
    (d / "t.tif").write_text("hello")
    return ["train", str(d / "t.tif"), "--out", str(d / "run")]


@case("train: all-NaN image")
def _(d):
    np.save(d / "n.npy", np.full((16, 32, 32), np.nan, np.float32))
    return ["train", str(d / "n.npy"), "--out", str(d / "run")]


@case("train: --set of an unknown setting")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--set", "optimizer.speed=3"]


@case("train: --set of a bad value")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--set", "optimizer.lr=-1"]


@case("train: --set without '='")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--set", "optimizer.lr"]


@case("train: malformed YAML config")
def _(d):
    (d / "c.yaml").write_text("optimizer:\n  lr: [1e-3\n  weight_decay: 0\n")
    return ["train", image(d), "--out", str(d / "run"), "--config", str(d / "c.yaml")]


@case("train: missing config file")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--config", str(d / "c.yaml")]


@case("train: --steps 0")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--steps", "0"]


@case("train: --minutes -1")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--minutes", "-1"]


@case("train: --resume without a run")
def _(d):
    return ["train", image(d), "--out", str(d / "run"), "--resume"]


@case("train: --out is a file")
def _(d):
    (d / "run").write_text("a file")
    return ["train", image(d), "--out", str(d / "run")]


@case("refine: no images")
def _(d):
    return ["refine", "--out", str(d / "run")]


@case("refine: --labels of another count")
def _(d):
    lab = labels_file(d, "l.npy", np.zeros(SHAPE, np.int32))
    return ["refine", image(d), image(d, "b.tif"), "--labels", lab, "--out", str(d / "run")]


@case("refine: --labels of another shape")
def _(d):
    lab = labels_file(d, "l.npy", np.zeros((4, 8, 8), np.int32))
    return ["refine", image(d), "--labels", lab, "--out", str(d / "run")]


@case("refine: --set of an unknown setting")
def _(d):
    return ["refine", image(d), "--out", str(d / "run"), "--set", "speed=3"]


@case("refine: --from a truncated model")
def _(d):
    return ["refine", image(d), "--out", str(d / "run"), "--from", checkpoint_copy(d, 0.3)]


# --- evaluate and synth -------------------------------------------------------------------


@case("evaluate: float labels")
def _(d):
    truth = labels_file(d, "t.npy", np.zeros(SHAPE, np.int32))
    return ["evaluate", truth, labels_file(d, "p.npy", np.full(SHAPE, 1.5, np.float32))]


@case("evaluate: negative labels")
def _(d):
    truth = labels_file(d, "t.npy", np.zeros(SHAPE, np.int32))
    return ["evaluate", truth, labels_file(d, "p.npy", np.full(SHAPE, -3, np.int32))]


@case("evaluate: shapes differ")
def _(d):
    truth = labels_file(d, "t.npy", np.zeros(SHAPE, np.int32))
    return ["evaluate", truth, labels_file(d, "p.npy", np.zeros((4, 8, 8), np.int32))]


@case("evaluate: --thresholds 1.5")
def _(d):
    truth = labels_file(d, "t.npy", np.ones(SHAPE, np.int32))
    return ["evaluate", truth, truth, "--thresholds", "1.5"]


@case("evaluate: --json in /proc")
def _(d):
    truth = labels_file(d, "t.npy", np.ones(SHAPE, np.int32))
    return ["evaluate", truth, truth, "--json", "/proc/s.json"]


@case("evaluate: --json exists")
def _(d):
    truth = labels_file(d, "t.npy", np.ones(SHAPE, np.int32))
    (d / "s.json").write_text(json.dumps({}))
    return ["evaluate", truth, truth, "--json", str(d / "s.json")]


@case("evaluate: --json is the truth file")
def _(d):
    truth = labels_file(d, "t.npy", np.ones(SHAPE, np.int32))
    return ["evaluate", truth, truth, "--json", truth, "--overwrite"]


@case("synth: --shape with a zero")
def _(d):
    return ["synth", str(d / "s.tif"), "--shape", "0", "8", "8"]


@case("synth: --labels equal to the image")
def _(d):
    return ["synth", str(d / "s.tif"), "--labels", str(d / "s.tif")]


@case("synth: existing output")
def _(d):
    (d / "s_labels.tif").write_bytes(b"earlier")
    return ["synth", str(d / "s.tif"), "--shape", "8", "16", "16"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_catalogue_is_large():
    assert len(CASES) >= 45


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = CASES[name](tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "files were left, removed or changed"
