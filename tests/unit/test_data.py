"""Training data: regions, validation patches, and the input-only intensity augmentation."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from cellcut.config import AugmentConfig, DataConfig
from cellcut.training.data import PatchSampler, array_volume, validation_patches


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 50.0, size=shape).astype(np.float32)


def _is_crop(patch: np.ndarray, data: np.ndarray) -> bool:
    pz, py, px = patch.shape
    for z in range(data.shape[0] - pz + 1):
        for y in range(data.shape[1] - py + 1):
            for x in range(data.shape[2] - px + 1):
                if np.array_equal(data[z : z + pz, y : y + py, x : x + px], patch):
                    return True
    return False


def test_small_volume_validation_patches_are_real_sub_volumes():
    cfg = DataConfig(patch_size=(16, 16, 16), val_fraction=0.1)
    vol = array_volume(_volume((20, 24, 24)), 0, cfg)
    assert vol.val_region == vol.train_region == (slice(0, 20), slice(0, 24), slice(0, 24))
    patches = validation_patches([vol], cfg.patch_size, 3)
    data = vol.data.numpy()
    assert all(_is_crop(p[0].numpy(), data) for p in patches)


def test_large_volume_holds_back_a_slab():
    cfg = DataConfig(patch_size=(8, 8, 8), val_fraction=0.2)
    vol = array_volume(_volume((12, 12, 60)), 0, cfg)
    assert vol.train_region[2] == slice(0, 48) and vol.val_region[2] == slice(48, 60)


def test_input_only_augmentation_changes_the_input_not_the_target():
    cfg = DataConfig(patch_size=(8, 16, 16))
    vol = array_volume(_volume((16, 32, 32)), 0, cfg)
    augment = AugmentConfig(gamma=0.4, intensity_scale=0.3, blur=1.0, noise=0.2, input_only=True)
    target, seen = PatchSampler([vol], cfg.patch_size, augment, seed=3).pair(4)
    assert target.shape == seen.shape == (4, 1, 8, 16, 16)
    data = vol.data.numpy()
    for t in target:  # targets are crops (up to flips and rotations) of the volume
        assert np.isin(t.numpy().round(4), data.round(4)).all()
    assert not torch.allclose(target, seen)
    # without input_only both are the same augmented patch, as before
    plain = AugmentConfig(intensity_scale=0.3)
    a, b = PatchSampler([vol], cfg.patch_size, plain, seed=3).pair(2)
    assert a is b


def test_grainy_volumes_are_denoised_for_training_as_for_segmentation():
    from cellcut.fingerprint import measure
    from cellcut.postprocess import sigma_voxels
    from cellcut.synthetic import regime_volume
    from cellcut.training.data import denoised

    grainy = regime_volume("confocal-dense-grainy", 0)
    clean = regime_volume("large-nuclei", 0)
    sigma = measure(grainy.image, grainy.voxel_size).denoise_sigma()
    assert sigma > 0
    expected = ndi.gaussian_filter(
        grainy.image.astype(np.float32), sigma_voxels(sigma, grainy.voxel_size)
    )
    np.testing.assert_allclose(denoised(grainy.image, grainy.voxel_size, "auto"), expected)
    assert denoised(clean.image, clean.voxel_size, "auto") is clean.image  # clean: untouched
    assert denoised(grainy.image, grainy.voxel_size, 0.0) is grainy.image  # turned off
