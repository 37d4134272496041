"""Segmentation: block processing equals one piece, outputs, statistics, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from cellcut.cli import main
from cellcut.errors import CheckpointError, ConfigError, VolumeError
from cellcut.io import Volume
from cellcut.metrics import match_instances
from cellcut.model import load_model
from cellcut.segmentation import cell_statistics, label_blocks, segment
from cellcut.synthetic import make_nuclei_volume
from cellcut.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    v = make_nuclei_volume((24, 48, 48), seed=4, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(folder / "img.tif", v.image)
    cfg = {
        "model": {"base_width": 4, "depth": 2},
        "data": {"patch_size": [16, 32, 32], "val_patches": 1, "normalization": "percentile"},
        "loss": {"intensity_weight": 1.0},
        "log": {"every": 5, "checkpoint_every": 100, "progress": False, "plots": False},
        "stop": {"steps": 20},
    }
    run = train([folder / "img.tif"], folder / "run", cfg)
    return load_model(run.run_dir), folder


def test_block_labelling_equals_one_piece():
    v = make_nuclei_volume((40, 80, 80), seed=9, voxel_size=(1.0, 1.0, 1.0), radius_um=(3, 5))
    prob = (v.labels > 0).astype(np.float32) * 0.9 + 0.05
    whole = np.zeros(prob.shape, np.int32)
    label_blocks(
        prob, whole, method="voronoi-otsu", voxel_size=None, block=(64, 128, 128), halo=(16, 16, 16)
    )
    blocks = np.zeros(prob.shape, np.int32)
    n = label_blocks(
        prob, blocks, method="voronoi-otsu", voxel_size=None, block=(16, 24, 24), halo=(16, 16, 16)
    ).n_objects
    assert n == len(np.unique(whole)) - 1 > 20
    matches = match_instances(whole, blocks, thresholds=(0.999,))[0]
    assert matches.tp == n and matches.fp == 0 and matches.fn == 0


def test_segment_writes_labels_stats_and_overview(tmp_path, trained):
    model, folder = trained
    out = tmp_path / "labels.tif"
    result = segment(
        folder / "img.tif",
        out,
        model=model,
        window=32,
        block=24,
        stats=tmp_path / "cells.csv",
        overview=tmp_path / "overview.png",
        probability_out=tmp_path / "prob.zarr",
        voxel_size=(1.5, 1, 1),
    )
    labels = tifffile.imread(out)
    assert labels.shape == (24, 48, 48) and labels.max() == result.n_cells
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "cells.csv")))
    assert len(rows) == result.n_cells
    summary = json.loads((tmp_path / "cells.summary.json").read_text())
    assert summary["cells"] == result.n_cells and summary["units"] == "µm"
    np.testing.assert_array_equal(result.labels, labels)
    # the automatic seed blur is measured once and said; a fixed one is used as given
    assert summary["spot_sigma"] > 0 and summary["instances"] == "auto"
    assert sum(summary["instances_chosen"].values()) >= 1 and summary["min_distance"] > 0
    if summary["median_object_radius"] is not None:
        assert summary["spot_sigma"] == pytest.approx(
            max(0.5 * summary["median_object_radius"], 0.5)
        )
    fixed = segment(folder / "img.tif", None, model=model, window=32, spot_sigma=3.0)
    assert fixed.summary["spot_sigma"] == 3.0 and fixed.summary["median_object_radius"] is None


def test_statistics_hand_checked():
    labels = np.zeros((4, 5, 6), np.int32)
    labels[1:3, 1:3, 1:4] = 1  # 12 voxels
    labels[0, 4, 5] = 2
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    rows, summary = cell_statistics(labels, image, (2.0, 1.0, 1.0), block=(2, 2, 2))
    first = rows[0]
    assert first["area"] == 12 and first["volume_um3"] == 24.0
    assert first["centroid-0"] == pytest.approx(1.5) and first["centroid_z_um"] == pytest.approx(3)
    assert first["centroid-2"] == pytest.approx(2.0)
    assert first["intensity_mean"] == pytest.approx(image[labels == 1].mean())
    assert first["intensity_max"] == image[labels == 1].max()
    assert (first["bbox-0"], first["bbox-5"]) == (1, 4)
    assert rows[1]["area"] == 1 and summary["cells"] == 2


def test_cli_segment_and_evaluate(tmp_path, trained, capsys):
    model, folder = trained
    code = main(
        [
            "segment",
            str(folder / "img.tif"),
            "--out",
            str(tmp_path / "l.tif"),
            "--model",
            model.source,
            "--window",
            "32",
            "--quiet",
        ]
    )
    assert code == 0
    assert (tmp_path / "l_overview.png").exists()
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            str(tmp_path / "l.tif"),
            str(tmp_path / "l.tif"),
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "foreground Dice 1.0000" in out
    assert json.loads((tmp_path / "e.json").read_text())["mean_f1"] == 1.0


def test_bad_inputs(tmp_path, trained, capsys):
    model, folder = trained
    with pytest.raises(VolumeError, match="2 values given; give three"):
        segment(folder / "img.tif", None, model=model, voxel_size=(1, 1))
    with pytest.raises(VolumeError, match="positive"):
        segment(folder / "img.tif", None, model=model, voxel_size=(1, -1, 1))
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).random((32, 32)))
    code = main(
        [
            "segment",
            str(tmp_path / "flat.npy"),
            "--out",
            str(tmp_path / "x.tif"),
            "--model",
            model.source,
        ]
    )
    assert code == 2 and "not a 3D volume" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        segment(folder / "img.tif", None, model=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="spot_sigma must be a positive number or 'auto'"):
        segment(folder / "img.tif", None, model=model, spot_sigma=-1.0)
    for bad in ("-2", "big"):
        argv = ["segment", str(folder / "img.tif"), "--out", "x.tif", "--spot-sigma", bad]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: argument --spot-sigma") and len(err.splitlines()) == 1
        assert "positive number or 'auto'" in err


def test_model_with_mismatched_classes_is_refused(tmp_path, trained):

    from cellcut.model import Checkpoint

    model, _ = trained
    ckpt = Checkpoint.load(model.source)
    ckpt.foreground_classes = [3]
    ckpt.save(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="K=2"):
        load_model(tmp_path / "bad.pt")


@pytest.mark.parametrize("suffix", ["tif", "zarr", "h5"])
def test_out_of_core_outputs_match_in_memory(tmp_path, trained, suffix):
    from cellcut.io import read_volume

    model, folder = trained
    ref = segment(folder / "img.tif", None, model=model, window=32, block=16)
    out = tmp_path / f"labels.{suffix}"
    segment(
        folder / "img.tif",
        out,
        model=model,
        window=32,
        block=16,
        keep_in_memory=False,
        probability_out=tmp_path / f"prob.{suffix}",
    )
    np.testing.assert_array_equal(read_volume(out, validate=False).numpy(), ref.labels)
    np.testing.assert_allclose(
        read_volume(tmp_path / f"prob.{suffix}").numpy(), ref.probability, atol=1e-6
    )


def test_denoise_blockwise_equals_blurring_the_whole_volume(trained):
    from scipy import ndimage as ndi

    from cellcut.io import read_volume
    from cellcut.postprocess import sigma_voxels

    model, folder = trained
    vol = read_volume(folder / "img.tif")
    blurred = ndi.gaussian_filter(vol.numpy().astype(np.float32), sigma_voxels(1.5, vol.voxel_size))
    settings = dict(model=model, window=32, block=16, voxel_size=vol.voxel_size)
    ours = segment(vol, None, denoise=1.5, **settings)
    whole = segment(Volume(blurred, vol.voxel_size, "blurred"), None, denoise=0, **settings)
    plain = segment(vol, None, denoise=0, **settings)
    np.testing.assert_allclose(ours.probability, whole.probability, atol=1e-5)
    assert np.abs(ours.probability - plain.probability).max() > 0.01  # the blur took effect
    assert ours.summary["denoise"] == 1.5 and plain.summary["denoise"] == 0.0


def test_trimmed_objects_are_split_at_the_necks_the_trim_opens():
    # two nuclei of radius 4 µm side by side in x, under 2 z-steps of 3 µm tall; the model's
    # outline takes a blur halo of 2 z-steps and a voxel in y and x, which fills the neck
    # between them: one object until the trim takes the halo off
    from scipy import ndimage as ndi

    vs = (3.0, 1.0, 1.0)
    grid = np.indices((16, 30, 40)).astype(float)
    nuclei = np.zeros(grid.shape[1:], bool)
    for x in (16.5, 23.5):
        nuclei |= ((grid[0] - 8) * 3) ** 2 + (grid[1] - 15) ** 2 + (grid[2] - x) ** 2 <= 16
    image = 10 + 100 * ndi.gaussian_filter(nuclei.astype(np.float32), (0.8, 0.6, 0.6))
    prob = ndi.binary_dilation(nuclei, np.ones((5, 3, 3))).astype(np.float32)
    counts = {}
    for trim in (None, 4.0):
        for method in ("watershed", "seeded", "connected"):
            out = np.zeros(prob.shape, np.int32)
            interior = prob if method == "seeded" else None  # a refined model's, as wide
            counts[trim, method] = label_blocks(
                prob, out, method=method, voxel_size=vs, block=prob.shape, halo=(0, 0, 0),
                image=image, trim_radius=trim, min_distance=2.0, interior=interior,
            ).n_objects  # fmt: skip
            if trim and method == "watershed":
                split = out
    assert [counts[None, m] for m in ("watershed", "seeded", "connected")] == [1, 1, 1]
    assert counts[4.0, "watershed"] == 2 and counts[4.0, "seeded"] == 2  # trimmed, split again
    assert counts[4.0, "connected"] == 1  # connected components ask for no split
    left, right = split[8, 15, 14], split[8, 15, 26]
    assert left != right and 0 not in (left, right)


def test_block_labelling_with_the_halo_trimmed_equals_one_piece():
    v = make_nuclei_volume(
        (24, 96, 96), seed=5, voxel_size=(3.0, 1.0, 1.0), radius_um=(2.5, 3.0),
        psf_sigma_um=(2.5, 0.6, 0.6),
    )  # fmt: skip
    from scipy import ndimage as ndi

    prob = ndi.binary_dilation(v.labels > 0, np.ones((3, 1, 1))).astype(np.float32)  # z-halo
    image = v.image.astype(np.float32)
    untouched = image.copy()
    runs = []
    for block in ((24, 96, 96), (12, 40, 40)):
        out = np.zeros(prob.shape, np.int32)
        labelling = label_blocks(
            prob, out, method="watershed", voxel_size=v.voxel_size, block=block,
            halo=(8, 16, 16), image=image, trim_radius=2.75, min_distance=1.4,
        )  # fmt: skip
        assert labelling.trimmed
        assert np.array_equal(image, untouched)  # the input is read, never blurred in place
        runs.append(out)
    assert np.array_equal(runs[0] > 0, runs[1] > 0)
    n = len(np.unique(runs[0])) - 1
    matches = match_instances(runs[0], runs[1], thresholds=(0.999,))[0]
    assert n > 20 and matches.tp == n and matches.fp == 0 and matches.fn == 0
    assert (runs[0] > 0).sum() < 0.8 * (prob > 0).sum()  # the halo went
