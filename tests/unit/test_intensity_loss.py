"""ClassIntensityLoss: hand-computed values, centres, and its purpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellcut.losses import SoftNCutLoss
from cellcut.losses.intensity import ClassIntensityLoss, initial_centres


def test_hand_computed_value():
    loss = ClassIntensityLoss([0.0, 10.0], momentum=0.0)  # scale s = 5
    image = torch.tensor([[[0.0, 10.0, 5.0]]])
    probs = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]])
    # voxel 3: 0.5 * 25/25 + 0.5 * 25/25 = 1; mean over 3 voxels
    assert loss(probs, image).item() == pytest.approx(1 / 3)
    wrong = torch.tensor([[[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]]])
    assert loss(wrong, image).item() == pytest.approx((4 + 4 + 1) / 3)


def test_centres_follow_batches_only_in_training():
    loss = ClassIntensityLoss([0.0, 10.0], momentum=0.5)
    image = torch.tensor([[[2.0, 2.0, 12.0, 12.0]]])
    probs = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    loss.eval()
    loss(probs, image)
    assert loss.centres.tolist() == [0.0, 10.0]
    loss.train()
    loss(probs, image)
    assert loss.centres.tolist() == pytest.approx([1.0, 11.0])


def test_initial_centres_multi_otsu():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.normal(0, 1, 5000), rng.normal(20, 1, 500), rng.normal(50, 1, 200)]
    )
    c2 = initial_centres(values, 2)
    c3 = initial_centres(values, 3)
    assert c2[0] < 2 and c2[1] > 20
    assert c3 == pytest.approx([0, 20, 50], abs=1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="centres"):
        ClassIntensityLoss([1.0])
    with pytest.raises(ValueError, match="classes"):
        ClassIntensityLoss([0.0, 1.0])(torch.rand(1, 3, 4), torch.rand(1, 1, 4))


def test_it_makes_the_true_mask_beat_a_positional_cut():
    """A blurred bright blob: the soft N-cut alone prefers cutting the patch in half."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(s) for s in (16, 32, 32)], indexing="ij")
    blob = ((z - 8) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) < 9
    img = ndi.gaussian_filter(60.0 * blob, 1.5) + 5 + 2 * rng.normal(size=blob.shape)
    image = torch.tensor(img, dtype=torch.float32)[None, None]
    mask = torch.tensor(blob, dtype=torch.float32)[None, None]
    half = torch.zeros_like(mask)
    half[..., :16] = 1

    def two(m):
        return torch.cat([1 - m, m], 1)

    ncut = SoftNCutLoss(15.0, 4.0, method="exact")
    intensity = ClassIntensityLoss([5.0, 50.0], momentum=0.0)
    assert ncut(two(half), image) < ncut(two(mask), image)
    combined_true = ncut(two(mask), image) + intensity(two(mask), image)
    combined_half = ncut(two(half), image) + intensity(two(half), image)
    assert combined_true < combined_half


def test_centres_follow_the_batch_to_its_device():
    # training on a GPU crashed here when the loss module stayed on the CPU (found on an H100):
    # the "meta" device stands in for any device other than the centres'
    loss = ClassIntensityLoss(np.array([10.0, 60.0])).eval()
    probs = torch.softmax(torch.randn(1, 2, 4, 4, 4, device="meta"), 1)
    image = torch.rand(1, 1, 4, 4, 4, device="meta")
    out = loss(probs, image)
    assert out.device.type == "meta" and loss.centres.device.type == "cpu"
