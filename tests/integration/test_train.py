"""Training runs: resume equivalence, diagnostics, foreground choice, outputs, bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import tifffile
import torch

from cellcut.config import build_config, load_config
from cellcut.errors import (
    CheckpointError,
    ConfigError,
    InputFileError,
    OutputError,
    VolumeError,
)
from cellcut.losses.reconstruction import ReconstructionLoss
from cellcut.model import Checkpoint, load_model
from cellcut.model.classes import choose_foreground_classes
from cellcut.synthetic import make_nuclei_volume
from cellcut.training import TrainCallback, train

TINY = {
    "model": {"base_width": 4, "depth": 2},
    "data": {"patch_size": [16, 16, 16], "val_patches": 1},
    "log": {"every": 2, "checkpoint_every": 4, "progress": False, "plots": False},
    "stop": {"steps": 8},
}


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vol")
    v = make_nuclei_volume((20, 40, 40), seed=2, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(folder / "img.tif", v.image)
    tifffile.imwrite(folder / "lab.tif", v.labels)
    return folder / "img.tif", folder / "lab.tif"


def config(**sections):
    data = {k: dict(v) for k, v in TINY.items()}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return build_config(data)


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_run_writes_outputs_and_metrics(tmp_path, volume_file):
    img, lab = volume_file
    cfg = config(log={"plots": True}, stop={"steps": 6})
    run = train([img], tmp_path / "run", cfg, val_labels=[lab])
    assert run.step == 6 and run.stopped_by == "6 steps"
    for name in ("checkpoint.pt", "config.yaml", "metrics.csv", "losses.png", "preview.png"):
        assert (run.run_dir / name).exists(), name
    rows = read_metrics(run.run_dir)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(0 <= float(r["ncut"]) < 1 for r in rows)
    assert all(r["val_dice"] != "" and r["val_f1"] != "" for r in rows)
    loaded = load_model(run.run_dir)
    assert loaded.foreground_classes == run.foreground_classes
    assert loaded.model.n_classes == 2


def test_resume_continues_exactly(tmp_path, volume_file):
    img, _ = volume_file
    full = train([img], tmp_path / "full", config(stop={"steps": 12}))
    part = train([img], tmp_path / "part", config(stop={"steps": 4}))
    assert part.step == 4
    resumed = train([], tmp_path / "part", resume=True, overrides=["stop.steps=12"])
    assert resumed.step == 12
    a = read_metrics(tmp_path / "full")
    b = read_metrics(tmp_path / "part")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("ncut", "reconstruction", "val_ncut"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-7), key
    for (name, pa), pb in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, msg=name)


def test_explosion_rolls_back_and_lowers_learning_rate(tmp_path, volume_file, monkeypatch):
    img, _ = volume_file
    original = ReconstructionLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, output, target):
        calls["n"] += 1
        value = original(self, output, target)
        # the 5th training forward (validation adds calls at log points: count only grads)
        return value * float("nan") if calls["n"] == 7 else value

    monkeypatch.setattr(ReconstructionLoss, "forward", sometimes_nan)
    seen = []

    class Collect(TrainCallback):
        def on_diagnosis(self, d):
            seen.append(d)

    run = train([img], tmp_path / "run", config(stop={"steps": 8}), callbacks=[Collect()])
    assert [d.kind for d in seen] == ["exploded"]
    assert "rolled back" in seen[0].message and "halved the learning rate" in seen[0].message
    rows = read_metrics(run.run_dir)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-4)
    assert all(math.isfinite(float(r["ncut"])) for r in rows)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert (run.run_dir / "diagnostics.txt").read_text().count("exploded") == 1


def test_lone_gradient_spike_skips_its_batch_and_keeps_the_learning_rate(
    tmp_path, volume_file, monkeypatch
):
    img, _ = volume_file
    import cellcut.training.loop as loop

    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def spiking(parameters, max_norm, *args, **kwargs):
        calls["n"] += 1
        norm = original(parameters, max_norm, *args, **kwargs)
        return norm * 1000 if calls["n"] == 25 else norm  # the 25th batch: an outlier

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", spiking)
    cfg = config(schedule={"kind": "constant", "warmup_steps": 0}, stop={"steps": 30})
    run = train([img], tmp_path / "run", cfg)
    assert [d.kind for d in run.diagnoses] == ["outlier_batch"]
    assert run.diagnoses[0].step == 25 and run.step == 30 and calls["n"] == 31
    assert [float(r["lr"]) for r in read_metrics(run.run_dir)] == pytest.approx([1e-3] * 15)


def test_unstable_ncut_is_reported_with_suggested_sigma(tmp_path, volume_file):
    img, _ = volume_file
    # σ_I far below the noise: every voxel looks unrelated to its neighbours, nothing to learn
    cfg = config(loss={"intensity_sigma": 1e-3}, log={"every": 1}, stop={"steps": 24})
    run = train([img], tmp_path / "run", cfg)
    kinds = [d.kind for d in run.diagnoses]
    assert "unstable" in kinds
    message = next(d.message for d in run.diagnoses if d.kind == "unstable")
    assert f"{run.suggested_sigma:.3g}" in message and "normalization" in message


def test_poor_reconstruction_is_reported(tmp_path, volume_file):
    img, _ = volume_file
    cfg = config(
        loss={"rec_weight": 1e-9, "ncut_weight": 1.0},
        optimizer={"lr": 5e-3},  # the N-cut must fall for "poor reconstruction" to apply
        log={"every": 1},
        stop={"steps": 30},
    )
    run = train([img], tmp_path / "run", cfg)
    assert "poor_reconstruction" in [d.kind for d in run.diagnoses], [
        (h["ncut"], h["rec_ratio"]) for h in run.history
    ]
    message = next(d.message for d in run.diagnoses if d.kind == "poor_reconstruction")
    assert "BCE with weight 0.5" in message


def test_plateau_is_reported_and_can_stop_training(tmp_path, volume_file):
    img, _ = volume_file
    cfg = config(
        optimizer={"lr": 3e-3}, log={"every": 1}, stop={"steps": 200, "early_stop_on_plateau": True}
    )
    run = train([img], tmp_path / "run", cfg)
    assert "plateau" in [d.kind for d in run.diagnoses]
    assert run.stopped_by == "N-cut plateau" and run.step < 200


def test_foreground_class_is_the_bright_one_after_training(tmp_path, volume_file):
    img, lab = volume_file
    run = train([img], tmp_path / "run", config(stop={"steps": 10}))
    image = torch.from_numpy(tifffile.imread(img)).float()
    labels = tifffile.imread(lab)
    with torch.inference_mode():
        probs = run.model.encode((image / image.max())[None, None])
    fg = probs[0, run.foreground_classes].sum(0).numpy() > 0.5
    assert image.numpy()[fg].mean() > image.numpy()[~fg].mean()
    assert labels[fg].astype(bool).mean() > labels[~fg].astype(bool).mean()


def test_choose_foreground_classes_by_brightness():
    image = torch.tensor([0.0, 0.0, 10.0, 10.0, 11.0, 50.0]).view(1, 1, 6)
    assign = torch.tensor([0, 0, 2, 2, 2, 1])
    probs = torch.nn.functional.one_hot(assign, 3).T.float()[None]
    assert choose_foreground_classes(probs, image) == [1]
    image = torch.tensor([0.0, 1.0, 40.0, 42.0, 45.0, 50.0]).view(1, 1, 6)
    assign = torch.tensor([0, 3, 2, 2, 1, 1])
    probs = torch.nn.functional.one_hot(assign, 4).T.float()[None]
    assert choose_foreground_classes(probs, image) == [1, 2]


def test_volume_smaller_than_patch_is_reflected(tmp_path):
    small = make_nuclei_volume((8, 12, 10), seed=0, radius_um=(2, 3))
    tifffile.imwrite(tmp_path / "small.tif", small.image)
    run = train([tmp_path / "small.tif"], tmp_path / "run", config(stop={"steps": 2}))
    assert run.step == 2


def test_bad_inputs(tmp_path, volume_file):
    img, _ = volume_file
    with pytest.raises(InputFileError, match="no image was given"):
        train([], tmp_path / "a", config())
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).random((32, 32)))
    with pytest.raises(VolumeError, match="not a 3D volume"):
        train([tmp_path / "flat.npy"], tmp_path / "b", config())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        train([img], blocker, config())
    with pytest.raises(OutputError, match="holds no checkpoint"):
        train([], tmp_path / "empty", resume=True)


def test_existing_run_is_not_overwritten_and_corrupt_checkpoint_is_refused(tmp_path, volume_file):
    img, _ = volume_file
    run = train([img], tmp_path / "run", config(stop={"steps": 2}))
    with pytest.raises(OutputError, match="already holds a training run"):
        train([img], tmp_path / "run", config(stop={"steps": 2}))
    data = run.checkpoint.read_bytes()
    run.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train([], tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Checkpoint.load(run.checkpoint)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a cellcut checkpoint"):
        load_model(other)


def test_fine_tune_from_pretrained_path(tmp_path, volume_file):
    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    tuned = train(
        [img], tmp_path / "tuned", config(stop={"steps": 2}), from_pretrained=base.checkpoint
    )
    assert tuned.model.arch == base.model.arch
    with pytest.raises(CheckpointError, match="does not exist"):
        train([img], tmp_path / "x", config(), from_pretrained=tmp_path / "missing.pt")


def _distance(model, weights):
    squares = [float((p.detach() - weights[k]).pow(2).sum()) for k, p in model.named_parameters()]
    return sum(squares) ** 0.5


def test_anchor_holds_fine_tuning_to_the_starting_weights(tmp_path, volume_file):
    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    start = {k: v.clone() for k, v in base.model.state_dict().items()}
    moved = {}
    for anchor in (0.0, 200.0, 1000.0):  # lr 1e-3: pull 0, 20%, 100% of the way back
        run = train(
            [img],
            tmp_path / f"a{anchor:g}",
            config(stop={"steps": 6}, optimizer={"anchor": anchor}),
            from_pretrained=base.checkpoint,
        )
        moved[anchor] = _distance(run.model, start)
    assert moved[1000.0] == 0.0  # pulled all the way back after every step
    assert 0 < moved[200.0] < moved[0.0]


def test_anchor_auto_holds_fine_tunes_only(tmp_path, volume_file):
    img, _ = volume_file
    fresh = train([img], tmp_path / "fresh", config(stop={"steps": 2}))
    assert Checkpoint.load(fresh.checkpoint).anchor is None
    keep = {"intensity_centres": "model"}  # a 2-step model's split: not adopted from the data
    tuned = train(
        [img], tmp_path / "tuned", config(stop={"steps": 2}, loss=keep),
        from_pretrained=fresh.checkpoint,
    )  # fmt: skip
    anchor = Checkpoint.load(tuned.checkpoint).anchor
    for k, v in fresh.model.named_parameters():
        torch.testing.assert_close(anchor[k], v.detach(), msg=k)
    off = train(
        [img], tmp_path / "off", config(stop={"steps": 2}, optimizer={"anchor": 0}),
        from_pretrained=fresh.checkpoint,
    )  # fmt: skip
    assert Checkpoint.load(off.checkpoint).anchor is None


def test_anchored_fine_tuning_resumes_exactly_and_ships_without_its_anchor(tmp_path, volume_file):
    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    cfg = config(stop={"steps": 8}, optimizer={"anchor": 100.0})
    full = train([img], tmp_path / "full", cfg, from_pretrained=base.checkpoint)
    part = train(
        [img], tmp_path / "part", config(stop={"steps": 4}, optimizer={"anchor": 100.0}),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    saved = Checkpoint.load(part.checkpoint)
    for k, v in base.model.named_parameters():
        torch.testing.assert_close(saved.anchor[k], v.detach(), msg=k)
    assert saved.started_from == str(base.checkpoint)
    resumed = train([], tmp_path / "part", resume=True, overrides=["stop.steps=8"])
    assert Checkpoint.load(resumed.checkpoint).started_from == str(base.checkpoint)
    for (name, pa), pb in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, msg=name)
    assert saved.for_inference().anchor is None
    with pytest.raises(ConfigError, match="anchor"):
        config(optimizer={"anchor": -1})


def test_resume_keeps_the_anchor_strength_the_run_started_with(tmp_path, volume_file, monkeypatch):
    from cellcut.training import session as session_module

    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    keep = {"intensity_centres": "model"}  # not adopted: "auto" anchors this fine-tune
    full = train(
        [img], tmp_path / "full", config(stop={"steps": 8}, loss=keep),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    part = train(
        [img], tmp_path / "part", config(stop={"steps": 4}, loss=keep),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    assert Checkpoint.load(part.checkpoint).anchor_strength == session_module.AUTO_ANCHOR
    monkeypatch.setattr(session_module, "AUTO_ANCHOR", 1.0)  # a later cellcut's default
    resumed = train([], tmp_path / "part", resume=True, overrides=["stop.steps=8"])
    for (name, pa), pb in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(pa, pb, msg=name)
    legacy = Checkpoint.load(part.checkpoint)
    legacy.anchor_strength = None  # a file written before the strength was recorded
    assert session_module._restored_strength(legacy) == session_module.LEGACY_AUTO_ANCHOR
    legacy.anchor = None
    assert session_module._restored_strength(legacy) == 0.0


def test_callback_can_stop_training(tmp_path, volume_file):
    img, _ = volume_file

    class StopAt3(TrainCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, record):
            self.logs.append(record["step"])

        def stop_requested(self):
            return len(self.logs) >= 2

    cb = StopAt3()
    run = train([img], tmp_path / "run", config(stop={"steps": 100}), callbacks=[cb])
    assert run.stopped_by == "stop requested" and run.step == 4
    assert Checkpoint.load(run.checkpoint).step == 4


class _ThresholdModel(torch.nn.Module):
    """Class 1 where the network input exceeds ``t`` (a stand-in for a pretrained encoder)."""

    n_classes = 2

    def __init__(self, t):
        super().__init__()
        self.t = t

    def encode(self, x):
        fg = (x > self.t).float()
        return torch.cat([1 - fg, fg], 1)


def test_model_centres_are_the_soft_class_means(volume_file):
    from cellcut.training.data import load_volumes
    from cellcut.training.session import model_centres

    img, _ = volume_file
    cfg = config()
    volumes = load_volumes([img], cfg.data)
    model = _ThresholdModel(0.3)  # the network sees the image / 100
    got = model_centres(model, volumes, cfg, 100.0, torch.device("cpu"), fallback=np.zeros(2))
    data = volumes[0].data.numpy()
    # patches are crops of the volume: the means match the whole volume's to sampling error
    assert got[0] == pytest.approx(data[data <= 30].mean(), abs=3.0)
    assert got[1] == pytest.approx(data[data > 30].mean(), abs=6.0)
    assert got[0] < 30 < got[1]
    # a class without mass keeps its fallback centre
    empty = model_centres(
        _ThresholdModel(10.0), volumes, cfg, 100.0, torch.device("cpu"), fallback=np.array([1, 7])
    )
    assert empty[1] == 7


def test_fine_tuning_holds_the_starting_models_class_centres(tmp_path, volume_file):
    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 6}))
    base_state = Checkpoint.load(base.checkpoint)
    assert base_state.intensity_momentum == 0.01
    # "model" asks for the starting model's classes whatever they are; "auto" (the default)
    # takes them only where they agree with the data, and a 6-step base model's do not (see
    # test_fine_tuning_adopts_the_datas_classes_when_the_models_split_disagrees)
    held = {"intensity_centres": "model"}
    tuned = train(
        [img],
        tmp_path / "tuned",
        config(stop={"steps": 6}, loss=held),
        from_pretrained=base.checkpoint,
    )
    state = Checkpoint.load(tuned.checkpoint)
    assert state.intensity_momentum == 0.0
    from cellcut.training.data import load_volumes
    from cellcut.training.session import model_centres

    cfg = config()
    start = model_centres(
        base.model, load_volumes([img], cfg.data), cfg, 100.0, torch.device("cpu"), np.zeros(2)
    )
    np.testing.assert_allclose(state.intensity_centres, start, rtol=1e-6)
    # asked for explicitly, Otsu centres that follow the batches
    otsu = train(
        [img],
        tmp_path / "otsu",
        config(stop={"steps": 6}, loss={"intensity_centres": "otsu"}),
        from_pretrained=base.checkpoint,
    )
    assert Checkpoint.load(otsu.checkpoint).intensity_momentum == 0.01
    # a resumed fine-tuning run keeps its held centres
    cfg = config(stop={"steps": 4}, loss=held)
    part = train([img], tmp_path / "part", cfg, from_pretrained=base.checkpoint)
    resumed = train([], part.run_dir, resume=True, overrides=["stop.steps=6"])
    end = Checkpoint.load(resumed.checkpoint)
    assert end.intensity_momentum == 0.0
    np.testing.assert_allclose(end.intensity_centres, state.intensity_centres, rtol=1e-6)


def test_metrics_log_the_class_intensity_term(tmp_path, volume_file):
    img, _ = volume_file
    run = train([img], tmp_path / "run", config(stop={"steps": 4}))
    rows = read_metrics(run.run_dir)
    assert all(float(r["intensity"]) >= 0 and float(r["val_intensity"]) >= 0 for r in rows)
    # the total is the weighted sum of the three terms the row reports
    w = run.config.loss
    for r in rows:
        ncut, rec, intensity = (float(r[k]) for k in ("ncut", "reconstruction", "intensity"))
        weighted = w.ncut_weight * ncut + w.rec_weight * rec + w.intensity_weight * intensity
        assert float(r["total"]) == pytest.approx(weighted, rel=1e-4)
    off = train([img], tmp_path / "off", config(stop={"steps": 2}, loss={"intensity_weight": 0.0}))
    assert [r["intensity"] for r in read_metrics(off.run_dir)] == [""]


def test_train_on_arrays_equals_train_on_files(tmp_path, volume_file):
    from cellcut.io import Volume, read_volume

    img, _ = volume_file
    data = tifffile.imread(img)
    cfg = config(stop={"steps": 4}, data={"voxel_size": [1.5, 1.0, 1.0]})
    from_file = train([img], tmp_path / "file", cfg)
    from_array = train([data], tmp_path / "array", cfg)
    a, b = read_metrics(from_file.run_dir), read_metrics(from_array.run_dir)
    assert [r["ncut"] for r in a] == [r["ncut"] for r in b]
    assert Checkpoint.load(from_array.checkpoint).images == ["<in-memory array>"]
    # a Volume brings its own voxel size; without one the loss would be isotropic
    vol = Volume(read_volume(img).data, (1.5, 1.0, 1.0), "layer")
    from_volume = train([vol], tmp_path / "volume", config(stop={"steps": 4}))
    assert [r["ncut"] for r in read_metrics(from_volume.run_dir)] == [r["ncut"] for r in a]
    # arrays are not in the checkpoint: resuming needs them again, and then continues
    with pytest.raises(Exception, match="pass the same arrays again"):
        train([], from_array.run_dir, resume=True, overrides=["stop.steps=6"])
    resumed = train([data], from_array.run_dir, resume=True, overrides=["stop.steps=6"])
    assert resumed.step == 6
    with pytest.raises(VolumeError, match="not a 3D volume"):
        train([data[0]], tmp_path / "flat", cfg)


def test_checkpoint_of_an_older_version_still_resumes(tmp_path, volume_file):
    """Keys and settings that older versions wrote (log.select_best, best_contrast) are ignored."""
    img, _ = volume_file
    run = train([img], tmp_path / "run", config(stop={"steps": 4}))
    data = torch.load(run.checkpoint, weights_only=True)
    data["config"]["log"]["select_best"] = False
    data["best_contrast"] = 0.5
    torch.save(data, run.checkpoint)
    resumed = train([], run.run_dir, resume=True, overrides=["stop.steps=6"])
    assert resumed.step == 6


def test_a_too_high_learning_rate_collapse_is_said_and_rolled_back(tmp_path, volume_file):
    img, _ = volume_file
    cfg = config(stop={"steps": 60}, log={"every": 10, "checkpoint_every": 100})
    run = train(
        [img], tmp_path / "run", cfg, overrides=["optimizer.lr=0.9", "optimizer.grad_clip=null"]
    )
    kinds = [d.kind for d in run.diagnoses]
    assert "collapsed" in kinds
    message = next(d.message for d in run.diagnoses if d.kind == "collapsed")
    assert "learning rate" in message and "too high" in message


def test_fine_tuning_adopts_the_datas_classes_when_the_models_split_disagrees(tmp_path):
    """A starting model that calls (almost) nothing a cell on volumes whose bright class is a
    fifth of them: fine-tuning says so, starts from the data's own classes, and moves the
    model's split towards them."""
    from dataclasses import asdict

    from cellcut.losses.intensity import initial_centres
    from cellcut.model import WNet3D
    from cellcut.synthetic import regime_volume
    from cellcut.training.data import load_volumes
    from cellcut.training.session import _soft_class_stats

    v = regime_volume("dense-touching", 0)
    tifffile.imwrite(tmp_path / "img.tif", v.image[:32, :48, :48])
    torch.manual_seed(0)
    model = WNet3D(base_width=4, depth=2)
    with torch.no_grad():
        model.encoder.head.bias[:] = torch.tensor([3.0, -3.0])  # class 0 almost everywhere
    Checkpoint(
        architecture=asdict(model.arch),
        model=model.state_dict(),
        config=config().model_dump(mode="json"),
        foreground_classes=[1],
    ).save(tmp_path / "biased.pt")
    cfg = config(stop={"steps": 60}, optimizer={"lr": 1e-2})
    volumes = load_volumes([tmp_path / "img.tif"], cfg.data)

    def cell_share(m):
        means, mass, _ = _soft_class_stats(m, volumes, cfg, 100.0, torch.device("cpu"))
        return float(mass[int(np.argmax(means))] / mass.sum())

    start = cell_share(model)
    biased = tmp_path / "biased.pt"
    run = train([tmp_path / "img.tif"], tmp_path / "tuned", cfg, from_pretrained=biased)
    adopted = next(d for d in run.diagnoses if d.kind == "classes_adopted")
    assert "does not hold the weights" in adopted.message
    assert Checkpoint.load(run.checkpoint).anchor is None  # the model's split was wrong
    from cellcut.training.session import _intensity_sample

    sample = _intensity_sample(volumes)
    np.testing.assert_allclose(
        Checkpoint.load(run.checkpoint).intensity_centres, initial_centres(sample, 2), rtol=1e-6
    )
    truth = float((v.labels[:32, :48, :48] > 0).mean())
    assert abs(cell_share(run.model) - truth) < abs(start - truth) / 2


def test_fine_tuning_config_follows_the_checkpoint(tmp_path, volume_file):
    img, _ = volume_file
    three = config(model={"base_width": 4, "depth": 2, "n_classes": 3}, stop={"steps": 1})
    base = train([img], tmp_path / "three", three)
    plain = {k: v for k, v in TINY.items() if k != "model"}
    plain["stop"] = {"steps": 1}
    tuned = train([img], tmp_path / "tuned", build_config(plain), from_pretrained=base.checkpoint)
    saved = load_config(tuned.run_dir / "config.yaml").model
    assert (saved.n_classes, saved.base_width, saved.depth) == (3, 4, 2)
    assert tuned.model.n_classes == 3
    assert not [d for d in tuned.diagnoses if d.kind == "architecture-from-checkpoint"]
    asked = config(model={"n_classes": 5}, stop={"steps": 1})
    noted = train([img], tmp_path / "noted", asked, from_pretrained=base.checkpoint)
    notes = [d.message for d in noted.diagnoses if d.kind == "architecture-from-checkpoint"]
    assert len(notes) == 1 and "n_classes 5 -> 3" in notes[0], notes


def test_a_fine_tune_that_leaves_the_models_cells_goes_back_and_stops(
    tmp_path, volume_file, monkeypatch
):
    """``stop.cell_share_drift``: when the watch says the fine-tune is redefining the cells, the
    run returns to the last state near the starting share and stops there (the watch's own
    rule is tested in tests/unit/test_diagnostics.py; here, the loop acting on it)."""
    import cellcut.training.loop as loop
    from cellcut.training.diagnostics import CELL_SHARE_DRIFT, CellShareWatch, Diagnosis

    class Scripted(CellShareWatch):  # near the start up to step 4, drifted at step 8
        last = 0

        def update(self, step, share):
            self.shares.append(share)
            self.last = step
            self.near_step = min(step, 4)
            return Diagnosis(CELL_SHARE_DRIFT, step, "drifted") if step == 8 else None

        @property
        def near_start(self):
            return self.last <= 4

    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    held = {"intensity_centres": "model"}  # a 2-step model's split would be adopted otherwise
    early = train(
        [img], tmp_path / "early", config(stop={"steps": 4}, loss=held),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    monkeypatch.setattr(loop, "CellShareWatch", Scripted)
    run = train(
        [img], tmp_path / "drift", config(stop={"steps": 12}, loss=held),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    assert run.step == 8 and run.stopped_by == "cell share drift"
    assert [d.kind for d in run.diagnoses if d.kind == CELL_SHARE_DRIFT] == [CELL_SHARE_DRIFT]
    assert "drifted" in (run.run_dir / "diagnostics.txt").read_text()
    for (name, a), b in zip(
        early.model.state_dict().items(), run.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)  # the weights of step 4, not of step 8
    shares = [float(r["cell_share"]) for r in read_metrics(run.run_dir)]
    assert len(shares) == 4 and all(0 < s < 1 for s in shares)
    start = Checkpoint.load(run.checkpoint).cell_share_start
    assert start["classes"] == Checkpoint.load(base.checkpoint).foreground_classes
    assert 0 < start["share"] < 1


def test_the_cell_share_watch_only_watches_fine_tunes_that_keep_the_models_classes(
    tmp_path, volume_file
):
    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    assert Checkpoint.load(base.checkpoint).cell_share_start is None  # not a fine-tune
    assert all(r["cell_share"] == "" for r in read_metrics(base.run_dir))
    held = {"intensity_centres": "model"}
    cases = {
        "adopted": config(stop={"steps": 2}),  # a 2-step model's split disagrees with the data
        "otsu": config(stop={"steps": 2}, loss={"intensity_centres": "otsu"}),
        "off": config(stop={"steps": 2, "cell_share_drift": None}, loss=held),
    }
    for name, cfg in cases.items():
        run = train([img], tmp_path / name, cfg, from_pretrained=base.checkpoint)
        assert Checkpoint.load(run.checkpoint).cell_share_start is None, name
        assert all(r["cell_share"] == "" for r in read_metrics(run.run_dir)), name
    # a resumed fine-tune compares with its own start, and a shipped model holds none of it
    part = train(
        [img], tmp_path / "part", config(stop={"steps": 4}, loss=held),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    start = Checkpoint.load(part.checkpoint).cell_share_start
    resumed = train([], part.run_dir, resume=True, overrides=["stop.steps=8"])
    end = Checkpoint.load(resumed.checkpoint)
    assert end.cell_share_start == start
    assert len([r for r in read_metrics(part.run_dir) if r["cell_share"]]) == 4
    assert end.for_inference().cell_share_start is None
    with pytest.raises(ConfigError, match="cell_share_drift"):
        config(stop={"cell_share_drift": 1.0})


def _changed(model, start, names):
    return [n for n, p in model.named_parameters() if n in names and not torch.equal(p, start[n])]


def test_fine_tunes_that_keep_the_models_classes_train_the_norms_only(tmp_path, volume_file):
    """``optimizer.trainable=auto``: a fine-tune that keeps the starting model's classes trains
    the classifier's normalization layers and last layer (and the decoder); every other run,
    and ``all``, trains every weight. A resume keeps what its run started with."""
    from cellcut.model.network import feature_weights
    from cellcut.training.session import NORMS_ONLY

    img, _ = volume_file
    base = train([img], tmp_path / "base", config(stop={"steps": 2}))
    start = {k: v.detach().clone() for k, v in base.model.named_parameters()}
    fixed = {n for n, p in base.model.named_parameters() if any(p is q for q in
             feature_weights(base.model))}  # fmt: skip
    trained = {n for n in start if n.startswith("encoder.") and n not in fixed}
    decoder = {n for n in start if n.startswith("decoder.")}
    assert fixed and trained and all(n.startswith("encoder.") for n in fixed)
    assert Checkpoint.load(base.checkpoint).trainable == "all"  # not a fine-tune
    held = {"intensity_centres": "model"}  # a 2-step model's split would be adopted otherwise
    norms = train(
        [img], tmp_path / "norms", config(stop={"steps": 4}, loss=held),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    assert Checkpoint.load(norms.checkpoint).trainable == "norms"
    assert [d.kind for d in norms.diagnoses if d.kind == NORMS_ONLY] == [NORMS_ONLY]
    assert _changed(norms.model, start, fixed) == []
    assert _changed(norms.model, start, trained) and _changed(norms.model, start, decoder)
    cases = {
        "all": config(stop={"steps": 4}, loss=held, optimizer={"trainable": "all"}),
        "adopted": config(stop={"steps": 4}),  # the 2-step model's split disagrees: adopted
        "otsu": config(stop={"steps": 4}, loss={"intensity_centres": "otsu"}),
    }
    for name, cfg in cases.items():
        run = train([img], tmp_path / name, cfg, from_pretrained=base.checkpoint)
        assert Checkpoint.load(run.checkpoint).trainable == "all", name
        assert _changed(run.model, start, fixed), name
        assert not [d for d in run.diagnoses if d.kind == NORMS_ONLY], name
    # resumed without the cell-share watch (which would otherwise tell it was a fine-tune)
    off = {"cell_share_drift": None}
    part = train(
        [img], tmp_path / "part", config(stop={"steps": 4, **off}, loss=held),
        from_pretrained=base.checkpoint,
    )  # fmt: skip
    resumed = train([], part.run_dir, resume=True, overrides=["stop.steps=8"])
    assert resumed.step == 8 and Checkpoint.load(resumed.checkpoint).trainable == "norms"
    assert _changed(resumed.model, start, fixed) == []
    assert Checkpoint.load(resumed.checkpoint).for_inference().trainable is None
    with pytest.raises(ConfigError, match="trainable"):
        config(optimizer={"trainable": "head"})


@pytest.mark.parametrize("norm", ["group", "batch", "instance", "none"])
def test_norms_only_keeps_every_classifier_weight_but_norms_and_head(norm):
    from cellcut.model import WNet3D
    from cellcut.model.network import feature_weights

    model = WNet3D(base_width=4, depth=2, norm=norm)
    fixed = {id(p) for p in feature_weights(model)}
    free = {n for n, p in model.named_parameters() if id(p) not in fixed}
    norms = {
        f"encoder.{m}.{n}"
        for m, module in model.encoder.named_modules()
        if type(module).__name__.endswith(("Norm", "Norm3d"))
        for n, _ in module.named_parameters()
    }
    assert bool(norms) == (norm != "none")
    heads = {"encoder.head.weight", "encoder.head.bias"}
    assert {n for n in free if n.startswith("encoder.")} == heads | norms
    assert all(n in free for n, _ in model.named_parameters() if n.startswith("decoder."))
