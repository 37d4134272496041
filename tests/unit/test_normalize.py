"""Normalization and the σ_I suggestion."""

from __future__ import annotations

import numpy as np
import pytest

from cellcut.errors import VolumeError
from cellcut.normalize import (
    estimate_noise,
    fit_normalization,
    normalize,
    suggest_intensity_sigma,
)
from cellcut.synthetic import make_nuclei_volume


def test_remap_to_0_100(rng):
    x = rng.uniform(200, 1200, size=(4, 8, 8))
    y = normalize(x, "remap")
    assert y.dtype == np.float32
    assert y.min() == pytest.approx(0) and y.max() == pytest.approx(100)


def test_percentile_is_robust_to_hot_pixels(rng):
    x = rng.normal(100, 10, size=(8, 32, 32))
    x[0, 0, 0] = 1e6
    remapped = normalize(x, "remap")
    robust = normalize(x, "percentile")
    assert np.median(remapped) < 0.1  # squashed by one hot pixel
    assert 30 < np.median(robust) < 70
    assert robust.max() == 100 and robust.min() == 0


def test_none_keeps_values_and_statistics_are_reused(rng):
    x = rng.uniform(0, 5, size=(4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(normalize(x, "none"), x)
    norm = fit_normalization(x, "remap")
    window = x[:2, :4, :4]
    np.testing.assert_allclose(norm(window), normalize(x, "remap")[:2, :4, :4], rtol=1e-6)


def test_sampled_statistics_for_large_volumes(rng):
    x = rng.uniform(0, 1, size=(64, 64, 64))
    sampled = fit_normalization(x, "percentile", max_voxels=100_000)
    full = fit_normalization(x, "percentile")
    assert sampled.low == pytest.approx(full.low, abs=0.01)
    assert sampled.high == pytest.approx(full.high, abs=0.01)


def test_bad_normalization_input():
    with pytest.raises(VolumeError, match="constant image"):
        fit_normalization(np.ones((2, 3, 3)))
    with pytest.raises(VolumeError, match="NaN"):
        fit_normalization(np.full((2, 3, 3), np.nan))
    with pytest.raises(VolumeError, match="unknown method"):
        fit_normalization(np.arange(18.0).reshape(2, 3, 3), "zscore")


def test_noise_estimate(rng):
    x = rng.normal(0, 3.0, size=(16, 64, 64))
    assert estimate_noise(x) == pytest.approx(3.0, rel=0.05)


def test_suggested_sigma_separates_nuclei_from_background():
    v = make_nuclei_volume((24, 48, 48), seed=0)
    s = suggest_intensity_sigma(v.image, "remap")
    x = normalize(v.image)
    fg, bg = x[v.labels > 0].mean(), x[v.labels == 0].mean()
    assert s.background_mean < bg < fg < s.foreground_mean + 10
    assert s.intensity_sigma == pytest.approx((s.foreground_mean - s.background_mean) / 2)
    assert s.contrast_to_noise > 2
    raw = suggest_intensity_sigma(v.image.astype(np.float64) * 1000, "none")
    scale = (v.image.max() - v.image.min()) * 1000 / 100
    assert raw.intensity_sigma == pytest.approx(s.intensity_sigma * scale, rel=1e-3)


def _saturate(image: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    out = image.copy()
    idx = np.random.default_rng(seed).choice(out.size, n, replace=False)
    out.flat[idx] = np.iinfo(out.dtype).max
    return out


@pytest.mark.parametrize("regime", ["confocal-dense-grainy", "lightsheet-sparse", "small-nuclei"])
def test_classes_normalization_ignores_a_few_saturated_voxels(regime):
    from cellcut.synthetic import regime_volume

    v = regime_volume(regime, 0)
    clean = fit_normalization(v.image, "classes")
    hot = fit_normalization(_saturate(v.image, 50), "classes")
    window = v.image[:8, :32, :32]
    # the mapped values move by well under one output unit (0..100 scale)
    assert np.abs(clean(window) - hot(window)).max() < 0.1
    # percentiles do move: 50 saturated voxels are far above the 99.9th percentile's share
    assert fit_normalization(_saturate(v.image, 5000), "percentile").high > 1.5 * (
        fit_normalization(v.image, "percentile").high
    )


def test_classes_put_background_and_nuclei_at_fixed_levels():
    from cellcut.normalize import CLASS_LEVELS
    from cellcut.synthetic import regime_volume

    for regime in ("confocal-dense-grainy", "dense-touching", "large-nuclei"):
        v = regime_volume(regime, 0)
        x = normalize(v.image, "classes")
        bg, fg = np.median(x[v.labels == 0]), np.median(x[v.labels > 0])
        assert abs(bg - CLASS_LEVELS[0]) < 10, regime
        assert abs(fg - CLASS_LEVELS[1]) < 15, regime
        assert x.min() >= 0 and x.max() <= 200
