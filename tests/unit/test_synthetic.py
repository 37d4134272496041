"""The synthetic volume generator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellcut.synthetic import make_nuclei_volume


def test_deterministic_by_seed():
    a = make_nuclei_volume((16, 32, 32), seed=3)
    b = make_nuclei_volume((16, 32, 32), seed=3)
    c = make_nuclei_volume((16, 32, 32), seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_labels_are_consecutive_and_nuclei_brighter(small_synthetic):
    v = small_synthetic
    ids = np.unique(v.labels)
    np.testing.assert_array_equal(ids, np.arange(v.n_nuclei + 1))
    assert v.n_nuclei >= 5
    fg = v.image[v.labels > 0].mean()
    bg = v.image[v.labels == 0].mean()
    assert fg > 2.5 * bg


def test_each_nucleus_is_one_connected_piece(small_synthetic):
    labels = small_synthetic.labels
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        _, n = ndi.label(labels[sl] == i)
        assert n == 1, f"nucleus {i} is in {n} pieces"


def test_some_nuclei_touch():
    v = make_nuclei_volume((32, 64, 64), seed=0, touching=0.6)
    grown = ndi.grey_dilation(v.labels, size=3)
    touching = (grown != v.labels) & (v.labels > 0) & (grown > 0)
    assert touching.sum() > 0


def test_anisotropic_blur_is_wider_along_z():
    v = make_nuclei_volume(
        (40, 40, 40),
        seed=2,
        voxel_size=(1, 1, 1),
        photons=1e6,
        read_noise=0,
        texture=0,
        background_gradient=0,
    )
    img = v.image.astype(float) - v.image.mean()
    dz = np.abs(np.diff(img, axis=0)).mean()
    dx = np.abs(np.diff(img, axis=2)).mean()
    assert dz < 0.8 * dx


def test_artifacts_are_bright_and_not_labelled():
    v = make_nuclei_volume((16, 48, 48), seed=5, n_artifacts=3)
    assert v.artifacts.any()
    assert v.image[v.artifacts].mean() > 1.5 * v.image[v.labels > 0].mean()


def test_uint16_output_and_bad_arguments():
    v = make_nuclei_volume((8, 16, 16), seed=0, dtype="uint16")
    assert v.image.dtype == np.uint16 and v.image.max() > 100
    with pytest.raises(ValueError, match="shape"):
        make_nuclei_volume((8, 16))
    with pytest.raises(ValueError, match="voxel_size"):
        make_nuclei_volume((8, 16, 16), voxel_size=(1, 0, 1))


def _clean(seed: int, **kw):
    """Nearly noise-free and unblurred: what the generator drew is what the image shows."""
    return make_nuclei_volume(
        (24, 64, 64), seed=seed, voxel_size=(1.0, 0.5, 0.5), radius_um=(4.0, 5.0),
        photons=1e7, read_noise=0.0, psf_sigma_um=(0.01, 0.01, 0.01), texture=0.0, **kw,
    )  # fmt: skip


def test_nucleoli_darken_and_chromocenters_brighten_inside_nuclei_only():
    plain = _clean(5)
    sub = _clean(5, nucleoli=1.0, chromocenters=6)
    np.testing.assert_array_equal(plain.labels, sub.labels)  # the same nuclei in the truth
    inside = plain.labels > 0
    ratio = sub.image / np.maximum(plain.image, 1e-6)
    # nothing changes outside the nuclei
    assert np.abs(ratio[~inside] - 1).max() < 0.05
    dark, bright = (ratio < 0.4) & inside, (ratio > 1.8) & inside
    with_nucleolus = with_foci = 0
    for i, box in enumerate(ndi.find_objects(plain.labels), start=1):
        own = plain.labels[box] == i
        share = dark[box][own].mean()
        assert share < 0.2, f"nucleus {i}: a nucleolus of {share:.0%} of its volume"
        with_nucleolus += share > 0.005
        with_foci += bright[box][own].any()
    assert with_nucleolus >= 0.8 * plain.n_nuclei
    assert with_foci >= 0.6 * plain.n_nuclei


def test_substructure_is_off_by_default_and_its_own_random_stream():
    a = _clean(2)
    b = _clean(2, nucleoli=0.0, chromocenters=0)
    np.testing.assert_array_equal(a.image, b.image)
    with_dark = _clean(2, nucleoli=1.0)
    np.testing.assert_array_equal(a.labels, with_dark.labels)
    assert (with_dark.image < a.image - 0.1 * a.image.max()).any()


def test_the_nucleoli_regime_is_the_plant_regime_with_substructure():
    from cellcut.synthetic import REGIMES, regime_volume

    extra = set(REGIMES["confocal-nucleoli"]) - set(REGIMES["confocal-dense-grainy"])
    assert extra == {"nucleoli", "chromocenters"}
    plain = regime_volume("confocal-dense-grainy", 3)
    sub = regime_volume("confocal-nucleoli", 3)
    np.testing.assert_array_equal(plain.labels, sub.labels)
    inside = plain.labels > 0
    assert sub.image[inside].mean() != plain.image[inside].mean()


def test_random_regime_substructure_adds_to_the_same_draw():
    from cellcut.synthetic import random_regime

    seen = set()
    for seed in range(20):
        plain = random_regime(np.random.default_rng(seed))
        sub = random_regime(np.random.default_rng(seed), substructure=True)
        assert {k: v for k, v in sub.items() if k not in ("nucleoli", "chromocenters")} == plain
        assert 0.0 <= sub["nucleoli"] <= 1.0 and 0 <= sub["chromocenters"] <= 8
        seen.add(sub["nucleoli"] > 0)
    assert seen == {True, False}


def test_random_regime_max_fill_changes_only_the_fill():
    from cellcut.synthetic import random_regime

    fills = []
    for seed in range(40):
        plain = random_regime(np.random.default_rng(seed))
        packed = random_regime(np.random.default_rng(seed), max_fill=0.65)
        assert {k: v for k, v in packed.items() if k != "fill"} == {
            k: v for k, v in plain.items() if k != "fill"
        }
        assert 0.04 <= plain["fill"] <= 0.45 and packed["fill"] >= plain["fill"]
        fills.append(packed["fill"])
    assert max(fills) > 0.45  # the wider range is drawn, not only allowed
    with pytest.raises(ValueError, match="max_fill"):
        random_regime(np.random.default_rng(0), max_fill=0.9)
