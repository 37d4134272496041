"""The checkpoint file format: one dataclass, written and read in one place."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cellcut.errors import CheckpointError
from cellcut.model import Checkpoint, WNet3D, export_model, load_model


def small_checkpoint(**fields) -> Checkpoint:
    torch.manual_seed(0)
    model = WNet3D(base_width=2, depth=1)
    return Checkpoint(
        architecture=dataclasses.asdict(model.arch),
        model=model.state_dict(),
        config={"data": {"normalization": "percentile"}},
        foreground_classes=[1],
        **fields,
    )


def test_round_trip_keeps_every_field(tmp_path):
    ckpt = small_checkpoint(
        step=7, intensity_sigma=2.5, intensity_centres=[10.0, 60.0], optimizer={"x": 1}
    )
    ckpt.save(tmp_path / "c.pt")
    back = Checkpoint.load(tmp_path / "c.pt")
    for name in Checkpoint.fields():
        if name != "model":
            assert getattr(back, name) == getattr(ckpt, name), name
    for key, value in ckpt.model.items():
        assert torch.equal(back.model[key], value)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == "cellcut-checkpoint" and set(Checkpoint.fields()) <= set(raw)


def test_for_inference_drops_the_training_state(tmp_path):
    ckpt = small_checkpoint(optimizer={"state": 1}, said=["plateau"], lr_scale=0.5, step=3)
    slim = ckpt.for_inference()
    assert slim.optimizer is None and slim.said == [] and slim.lr_scale == 1.0
    assert slim.step == 3 and slim.foreground_classes == [1]
    ckpt.save(tmp_path / "run.pt")
    target = export_model(tmp_path / "run.pt", tmp_path / "named.pt", card="# card")
    assert Checkpoint.load(target).optimizer is None
    assert (tmp_path / "named.md").read_text() == "# card"
    assert load_model(target).foreground_classes == [1]


def test_unknown_keys_are_ignored_and_missing_ones_refused(tmp_path):
    data = {
        "format": "cellcut-checkpoint",
        "format_version": 1,
        **{f: getattr(small_checkpoint(), f) for f in ("architecture", "model", "config")},
        "best_contrast": 0.3,
    }
    torch.save(data, tmp_path / "old.pt")
    assert Checkpoint.load(tmp_path / "old.pt").foreground_classes == []
    del data["model"]
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="lacks model"):
        Checkpoint.load(tmp_path / "broken.pt")
