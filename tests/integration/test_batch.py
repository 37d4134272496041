"""cellcut segment on many inputs: one output set per input, a summary, failures reported
without stopping the others, existing results skipped, folders of 2D slices as volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from cellcut.cli import main
from cellcut.segmentation import segment, segment_batch
from cellcut.synthetic import make_nuclei_volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    for seed in (1, 2):
        v = make_nuclei_volume((16, 48, 48), seed=seed, voxel_size=(1.5, 1, 1))
        tifffile.imwrite(folder / f"stack{seed}.tif", v.image)
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    slices = folder / "slices"
    slices.mkdir()
    v = make_nuclei_volume((16, 48, 48), seed=1, voxel_size=(1.5, 1, 1))
    for z in range(16):  # names whose text order is not their number order
        tifffile.imwrite(slices / f"plane{z}.tif", v.image[z])
    return folder


def read_summary(path):
    with open(path) as f:
        return {row["input"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}


def test_batch_goes_on_past_a_bad_file_and_skips_finished_ones(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(inputs / "*.tif"), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2  # one input failed
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "broken.tif" in errors[0]
    rows = read_summary(out / "segment_summary.csv")
    assert {k: r["status"] for k, r in rows.items()} == {
        "broken.tif": "failed", "stack1.tif": "done", "stack2.tif": "done",
    }  # fmt: skip
    for stem in ("stack1", "stack2"):
        for suffix in ("_labels.tif", "_cells.csv", "_cells.summary.json", "_overview.png"):
            assert (out / f"{stem}{suffix}").exists(), stem + suffix
    assert not list(out.glob("broken*"))
    single = segment(inputs / "stack1.tif", None)
    assert np.array_equal(tifffile.imread(out / "stack1_labels.tif"), single.labels)
    assert int(rows["stack1.tif"]["cells"]) == single.n_cells
    # again: the finished ones are skipped, the bad one fails again
    assert main(["segment", str(inputs), "--out", str(out), "--quiet"]) == 2
    again = read_summary(out / "segment_summary.csv")
    assert again["stack1.tif"]["status"] == "skipped" and again["stack2.tif"]["status"] == "skipped"


def test_stack_folder_is_one_volume_in_natural_order(inputs, tmp_path):
    result = segment_batch([inputs / "slices"], tmp_path / "out", stack_folders=True)
    assert [r["status"] for r in result.rows] == ["done"]
    from_file = segment(inputs / "stack1.tif", None)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "slices_labels.tif"), from_file.labels)


def test_batch_refuses_single_file_options(inputs, tmp_path, capsys):
    code = main(["segment", str(inputs / "stack1.tif"), str(inputs / "stack2.tif"),
                 "--out", str(tmp_path / "o"), "--stats", str(tmp_path / "c.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--stats names one file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_one_image_into_a_folder_takes_the_batch_layout(inputs, tmp_path):
    out = tmp_path / "results"
    assert main(["segment", str(inputs / "stack2.tif"), "--out", f"{out}/", "--quiet"]) == 0
    assert (out / "stack2_labels.tif").exists() and (out / "segment_summary.csv").exists()
