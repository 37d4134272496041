"""One source of settings: API, command line and widgets read the same defaults and ranges."""

from __future__ import annotations

import pytest

from cellcut.cli import _SEGMENT_FLAGS, build_parser, main
from cellcut.config import (
    INSTANCE_CHOICES,
    SEGMENT_DEFAULTS,
    SegmentOptions,
    TrainConfig,
    apply_overrides,
    segment_options,
)
from cellcut.errors import CellcutError, ConfigError, VolumeError
from cellcut.postprocess import METHODS

API_ONLY = {"halo"}  # settings the command line leaves to the Python API


def test_cli_segment_defaults_are_the_options_defaults():
    args = build_parser().parse_args(["segment", "img.tif", "--out", "x.tif"])
    assert set(_SEGMENT_FLAGS) | API_ONLY == set(SegmentOptions.model_fields)
    for name in _SEGMENT_FLAGS:
        assert getattr(args, name) == getattr(SEGMENT_DEFAULTS, name), name
    assert (
        SegmentOptions.model_validate({n: getattr(args, n) for n in _SEGMENT_FLAGS})
        == SegmentOptions()
    )


def test_instance_choices_come_from_postprocess():
    assert INSTANCE_CHOICES == (*METHODS, "none")
    parser = build_parser()
    with pytest.raises(Exception, match="invalid choice: 'magic'"):
        parser.parse_args(["segment", "i.tif", "--out", "o.tif", "--instances", "magic"])


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("window", 0, "window: sizes must be at least 1 voxel"),
        ("block", (4, 0, 4), "block: sizes must be at least 1 voxel"),
        ("overlap", 1.5, "overlap: Input should be less than 1"),
        ("batch_size", 0, "batch_size: Input should be greater than or equal to 1"),
        ("outline_sigma", -1.0, "outline_sigma must be a positive number or 'auto', got -1.0"),
        ("min_volume", -5, "min_volume must be a number >= 0 or .auto., got -5"),
        ("spot_sigma", float("nan"), "spot_sigma must be a positive number or 'auto'"),
        ("min_distance", 0, "min_distance must be a positive number or 'auto', got 0"),
        ("denoise", -0.5, "denoise must be a number >= 0 or 'auto', got -0.5"),
        ("denoise", "strong", "denoise must be a number >= 0 or 'auto'"),
        ("instances", "magic", "instances: Input should be"),
        ("trim_halo", "sometimes", "trim_halo must be auto, on or off, got 'sometimes'"),
    ],
)
def test_bad_settings_fail_with_the_field_named(setting, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        segment_options(**{setting: value})
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid option")


def test_voxel_size_errors_stay_volume_errors():
    with pytest.raises(VolumeError, match="2 values given; give three"):
        segment_options(voxel_size=(1, 1))
    assert segment_options(voxel_size=[2, 1, 1]).voxel_size == (2.0, 1.0, 1.0)


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="segmentation has no setting windw"):
        segment_options(windw=32)


def test_options_then_overrides():
    opts = segment_options({"window": 32, "overlap": 0.5}, overlap=0.1)
    assert (opts.window, opts.overlap, opts.triple("window")) == (32, 0.1, (32, 32, 32))


def test_cli_bad_setting_is_one_line(capsys, tmp_path):
    code = main(["segment", str(tmp_path / "i.tif"), "--out", str(tmp_path / "o.tif"),
                 "--window", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: invalid option") and err.count("\n") == 1


def test_train_overrides_take_a_dict_of_typed_values():
    cfg = apply_overrides(TrainConfig(), {"data.patch_size": [32, 32, 32], "optimizer.lr": 3e-4})
    assert cfg.data.patch_size == (32, 32, 32) and cfg.optimizer.lr == 3e-4
    with pytest.raises(CellcutError, match="names no setting"):
        apply_overrides(TrainConfig(), {"log.select_best": True})


def test_min_volume_auto_is_the_speck_floor_of_the_typical_radius(tmp_path):
    """'auto' removes objects under a sphere of half the typical radius: the image's
    fingerprint heard with the model's foreground (object_scale)."""
    from dataclasses import replace

    import numpy as np
    from tests.helpers import untrained_model

    from cellcut.fingerprint import measure
    from cellcut.segmentation import estimate_spot_sigma, segment
    from cellcut.segmentation.labelling import object_scale
    from cellcut.synthetic import regime_volume

    v = regime_volume("lightsheet-sparse", 0)
    image = v.image[:24, :48, :48]
    model = untrained_model(tmp_path / "m.pt")
    auto = segment(image, None, model=model, voxel_size=v.voxel_size, instances="connected")
    fp = measure(image, v.voxel_size)
    _, model_radius = estimate_spot_sigma(auto.probability, v.voxel_size, fp.outline_sigma())
    radius = object_scale(fp.object_radius, model_radius)
    assert auto.summary["object_radius"] == pytest.approx(radius)
    floor = replace(fp, object_radius=radius).speck_volume()
    assert floor == pytest.approx(4 / 3 * np.pi * (radius / 2) ** 3)
    assert auto.summary["min_volume"] == pytest.approx(floor) and floor > 0
    assert auto.n_cells == 0 or np.min(auto.stats.columns["volume_um3"]) >= floor
    none = segment(
        image, None, model=model, voxel_size=v.voxel_size, instances="connected", min_volume=0
    )
    assert none.summary["min_volume"] == 0 and none.n_cells >= auto.n_cells
