"""The dense CRF: shifts, what it smooths away and keeps, block-wise equals one piece."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellcut.crf import _shift, dense_crf
from cellcut.segmentation.predict import crf_probability


@pytest.mark.parametrize("offset", [(0, 0, 1), (-2, 1, 0), (1, -1, -3)])
def test_shift_reads_the_neighbour_and_replicates_borders(offset):
    x = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    got = _shift(x, offset).numpy()
    idx = np.meshgrid(*[np.clip(np.arange(n) + o, 0, n - 1) for n, o in
                        zip(x.shape, offset, strict=True)], indexing="ij")  # fmt: skip
    assert np.array_equal(got, x.numpy()[tuple(idx)])
    two = _shift(torch.stack([x, -x]), offset).numpy()
    assert np.array_equal(two[1], -got)


def test_crf_drops_specks_and_keeps_supported_objects():
    shape = (16, 32, 32)
    image = np.zeros(shape, np.float32)
    image[4:12, 8:24, 8:24] = 60.0  # a bright object
    prob = np.full(shape, 0.1, np.float32)
    prob[4:12, 8:24, 8:24] = 0.6  # unsure, but the image supports it
    prob[8, 28, 28] = 0.9  # a lone speck on flat background
    out = dense_crf(prob, image, (1.0, 1.0, 1.0))
    assert out.shape == shape and out.dtype == np.float32
    assert out[8, 28, 28] < 0.5 and out[8, 16, 16] > 0.9
    assert out[0, 0, 0] < prob[0, 0, 0]


def test_blockwise_crf_equals_one_piece():
    rng = np.random.default_rng(0)
    shape = (20, 40, 36)
    image = rng.normal(20, 5, shape).astype(np.float32)
    prob = rng.random(shape).astype(np.float32)
    whole = dense_crf(prob, image, (2.0, 1.0, 1.0))
    out = np.zeros(shape, np.float32)
    crf_probability(image, prob, out, voxel_size=(2.0, 1.0, 1.0), block=(8, 16, 16))
    np.testing.assert_allclose(out, whole, atol=1e-5)
