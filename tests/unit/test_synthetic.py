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
