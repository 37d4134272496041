"""cellcut refine: end to end (refine -> segment), resume, outputs, and bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from cellcut.cli import main
from cellcut.errors import CellcutError, CheckpointError, ConfigError, VolumeError
from cellcut.model import load_model
from cellcut.refinement import refine
from cellcut.segmentation import segment
from cellcut.synthetic import make_nuclei_volume
from tests.helpers import untrained_model

TINY = dict(patch_size=(16, 24, 24), batch_size=1, base_width=2, depth=1, log_every=2,
            checkpoint_every=3, progress=False, plots=True, minutes=None)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine")
    v = make_nuclei_volume((16, 40, 40), seed=4, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(folder / "img.tif", v.image)
    tifffile.imwrite(folder / "lab.tif", v.labels)
    return folder, v


def test_refine_then_segment_with_the_refined_model(tmp_path, data):
    folder, v = data
    run = refine([folder / "img.tif"], tmp_path / "run", steps=4, voxel_size=v.voxel_size,
                 **TINY)  # fmt: skip
    assert run.step == 4 and run.stopped_by == "4 steps"
    for name in ("checkpoint.pt", "refine.yaml", "metrics.csv", "losses.png", "preview.png"):
        assert (run.run_dir / name).exists(), name
    assert sorted(p.name for p in (run.run_dir / "pseudo-labels").iterdir()) == [
        "000.labels.npy",
        "000.probability.npy",
    ]
    with open(run.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    model = load_model(run.run_dir)
    assert model.kind == "refined" and model.normalization == "percentile"
    result = segment(v.image, None, model=run.run_dir, voxel_size=v.voxel_size)
    assert result.summary["instances_chosen"] == {"seeded": 1}
    assert result.labels is not None and result.labels.shape == v.image.shape
    # another instance method works on the refined model's foreground
    other = segment(v.image, None, model=run.run_dir, voxel_size=v.voxel_size,
                    instances="watershed")  # fmt: skip
    assert "instances_chosen" not in other.summary


def test_targets_are_drawn_at_the_scale_of_the_wnet_instance_step(tmp_path, data, monkeypatch):
    """The boundary axes of the targets come from the typical radius segment() used for the
    pseudo-labels (fingerprint and model foreground), as a refined model's inference does."""
    import cellcut.refinement.sources as sources

    folder, v = data
    seen = {}
    real = sources.refine_targets

    def spy(*args, radius=None, **kwargs):
        seen["radius"] = radius
        return real(*args, radius=radius, **kwargs)

    monkeypatch.setattr(sources, "refine_targets", spy)
    refine([folder / "img.tif"], tmp_path / "run", steps=1, voxel_size=v.voxel_size, **TINY)
    expected = segment(v.image, None, voxel_size=v.voxel_size).summary["object_radius"]
    assert expected is not None and seen["radius"] == pytest.approx(expected)


def test_targets_keep_the_wnet_outline_where_segment_trims_its_halo(tmp_path, monkeypatch):
    """On small nuclei, segment() trims the W-Net's objects to the image (trim_halo); refine
    learns from the untrimmed outline (a refined model that learned the trimmed one merged
    touching nuclei), and segmenting with the refined model trims as with the W-Net."""
    import cellcut.refinement.sources as sources
    from cellcut.postprocess import trims_halo
    from cellcut.synthetic import regime_volume

    v = regime_volume("small-nuclei", 1)
    image = v.image[:, :64, :64]
    seen = {}
    real = sources.refine_targets

    def spy(labels, *args, **kwargs):
        seen["labels"] = labels
        return real(labels, *args, **kwargs)

    monkeypatch.setattr(sources, "refine_targets", spy)
    run = refine([image], tmp_path / "run", steps=1, voxel_size=v.voxel_size, **TINY)
    trimmed = segment(image, None, voxel_size=v.voxel_size)
    untrimmed = segment(image, None, voxel_size=v.voxel_size, trim_halo="off")
    assert trimmed.summary["trim_halo"] and not untrimmed.summary["trim_halo"]
    assert (trimmed.labels > 0).sum() < 0.8 * (untrimmed.labels > 0).sum()
    assert np.array_equal(seen["labels"] > 0, untrimmed.labels > 0)
    refined = segment(image, None, model=run.run_dir, voxel_size=v.voxel_size, trim_halo="on")
    assert refined.summary["trim_halo"] is True  # the refined model's objects can be trimmed
    auto = segment(image, None, model=run.run_dir, voxel_size=v.voxel_size)
    assert auto.summary["trim_halo"] == trims_halo(auto.summary["object_radius"], v.voxel_size)


def test_resume_continues_the_same_run(tmp_path, data):
    folder, _ = data
    out = tmp_path / "run"
    refine([folder / "img.tif"], out, steps=3, labels=[folder / "lab.tif"], **TINY)
    run = refine([folder / "img.tif"], out, steps=6, labels=[folder / "lab.tif"], resume=True,
                 **TINY)  # fmt: skip
    assert run.step == 6
    with open(out / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4, 6]
    with pytest.raises(CellcutError, match="run folder in use"):
        refine([folder / "img.tif"], out, steps=3, labels=[folder / "lab.tif"], **TINY)


def test_resume_is_exact(tmp_path, data):
    import torch

    folder, _ = data
    args = dict(labels=[folder / "lab.tif"], **{**TINY, "plots": False})
    from cellcut.training import TrainCallback

    class StopAtThree(TrainCallback):  # an interruption: the budget stays 6 steps
        def on_start(self, run):
            self.run = run

        def stop_requested(self):
            return self.run.step >= 3

    full = refine([folder / "img.tif"], tmp_path / "full", steps=6, **args)
    part = refine([folder / "img.tif"], tmp_path / "part", steps=6, callbacks=[StopAtThree()],
                  **args)  # fmt: skip
    assert part.step == 3 and part.stopped_by == "stop requested"
    resumed = refine([folder / "img.tif"], tmp_path / "part", steps=6, resume=True, **args)
    assert resumed.step == 6
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert [r["loss"] for r in full.history] == pytest.approx([r["loss"] for r in resumed.history])


def test_cli_refine_and_segment(tmp_path, data, capsys):
    folder, _ = data
    run = tmp_path / "cli-run"
    code = main(["refine", str(folder / "img.tif"), "--labels", str(folder / "lab.tif"),
                 "--out", str(run), "--steps", "2", "--quiet", "--set", "base_width=2",
                 "depth=1", "patch_size=[16,24,24]", "batch_size=1"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert "cellcut segment IMAGE --model" in capsys.readouterr().out
    out = tmp_path / "seg.tif"
    assert main(["segment", str(folder / "img.tif"), "--model", str(run), "--out", str(out)]) == 0
    assert tifffile.imread(out).shape == (16, 40, 40)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_line(tmp_path, data, capsys):
    folder, _ = data
    img, lab = str(folder / "img.tif"), str(folder / "lab.tif")
    out = str(tmp_path / "r")
    assert "no image" in one_line_error(capsys, ["refine", "--out", out])
    assert "names no refine setting" in one_line_error(
        capsys, ["refine", img, "--out", out, "--set", "lrr=1"]
    )
    assert "lr" in one_line_error(capsys, ["refine", img, "--out", out, "--set", "lr=-1"])
    assert "uncertain" in one_line_error(
        capsys, ["refine", img, "--out", out, "--set", "uncertain=[0.8,0.2]"]
    )
    assert "label volume" in one_line_error(
        capsys, ["refine", img, img, "--labels", lab, "--out", out]
    )
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((4, 8, 8), np.int32))
    assert "shape" in one_line_error(
        capsys, ["refine", img, "--labels", str(tmp_path / "small.tif"), "--out", out]
    )
    tifffile.imwrite(tmp_path / "float.tif", np.full((16, 40, 40), 0.5, np.float32))
    assert "not whole numbers" in one_line_error(
        capsys, ["refine", img, "--labels", str(tmp_path / "float.tif"), "--out", out]
    )
    assert "does not exist" in one_line_error(
        capsys, ["refine", img, "--from", str(tmp_path / "none.pt"), "--out", out]
    )


def test_models_that_do_not_fit_are_refused(tmp_path, data):
    folder, v = data
    run = refine([folder / "img.tif"], tmp_path / "run", steps=1, labels=[folder / "lab.tif"],
                 **TINY)  # fmt: skip
    with pytest.raises(CheckpointError, match="already a refined model"):
        refine([folder / "img.tif"], tmp_path / "again", model=run.run_dir, steps=1, **TINY)
    from cellcut.training import train

    with pytest.raises(CheckpointError, match="not a W-Net"):
        train([folder / "img.tif"], tmp_path / "t", from_pretrained=run.run_dir,
              overrides={"stop.steps": 1, "log.progress": False})  # fmt: skip
    wnet = untrained_model(tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="refined model"):
        segment(v.image, None, model=wnet, instances="seeded")
    with pytest.raises(VolumeError):
        refine([folder / "img.tif"], tmp_path / "x", labels=[folder / "lab.tif"] * 2, **TINY)


def test_a_refined_model_is_a_named_model_like_any_other(tmp_path, data, capsys, monkeypatch):
    from cellcut.model import export_model

    folder, v = data
    run = refine([folder / "img.tif"], tmp_path / "run", steps=1, labels=[folder / "lab.tif"],
                 **TINY)  # fmt: skip
    export_model(run.checkpoint, tmp_path / "models" / "mine.pt", card="refined on img.tif")
    monkeypatch.setenv("CELLCUT_MODELS", str(tmp_path / "models"))
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "mine: refined (cellcut refine)" in listed and "default: W-Net" in listed
    result = segment(v.image, None, model="mine", voxel_size=v.voxel_size)
    assert result.summary["instances_chosen"] == {"seeded": 1}
