"""The second stage's parts: targets, loss, network, seeded watershed, artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cellcut.artifacts import KINDS, apply_artifacts
from cellcut.losses import dice_ce_loss
from cellcut.model import Checkpoint, RefinedNet3D, load_model
from cellcut.postprocess import boundary_axes, cross, instances, seeded_watershed
from cellcut.refinement.targets import (
    BACKGROUND,
    BOUNDARY,
    IGNORE,
    INTERIOR,
    doubtful_objects,
    refine_targets,
)
from cellcut.synthetic import regime_volume


def two_touching_boxes() -> np.ndarray:
    lab = np.zeros((10, 12, 16), np.int32)
    lab[2:8, 2:10, 2:8] = 1
    lab[2:8, 2:10, 8:14] = 2
    return lab


def test_targets_of_touching_boxes():
    lab = two_touching_boxes()
    t = refine_targets(lab, shell=False, doubtful=[])
    # the contact plane: each box's own face is boundary, on both sides
    assert (t[4, 5, 7] == BOUNDARY) and (t[4, 5, 8] == BOUNDARY)
    assert t[4, 5, 4] == INTERIOR and t[4, 5, 11] == INTERIOR
    assert t[0, 0, 0] == BACKGROUND
    # interior = the boxes eroded by one voxel (6-connectivity)
    assert (t == INTERIOR).sum() == 2 * (4 * 6 * 4)
    assert ((t == BOUNDARY) | (t == INTERIOR)).sum() == (lab > 0).sum()


def test_boundaries_skip_axes_the_nuclei_are_thin_along():
    assert boundary_axes((3.0, 1.0, 1.0), radius=3.0) == (False, True, True)
    assert boundary_axes((0.3, 0.13, 0.13), radius=1.3) == (True, True, True)
    assert boundary_axes((3.0, 1.0, 1.0), radius=None) == (True, True, True)
    lab = two_touching_boxes()  # 6 planes thick along z
    coarse = refine_targets(lab, shell=False, doubtful=[], voxel_size=(3, 1, 1), radius=3.0)
    fine = refine_targets(lab, shell=False, doubtful=[])
    assert coarse[2, 5, 4] == INTERIOR and fine[2, 5, 4] == BOUNDARY  # the top plane
    assert coarse[4, 5, 7] == BOUNDARY == coarse[4, 5, 8]  # the contact is still parted
    assert (coarse == INTERIOR).sum() == 2 * (6 * 6 * 4)
    shell = refine_targets(lab, doubtful=[], voxel_size=(3, 1, 1), radius=3.0)
    assert shell[1, 5, 4] == BACKGROUND and shell[4, 5, 1] == IGNORE


def test_shell_uncertain_and_doubtful_are_ignored():
    lab = two_touching_boxes()
    t = refine_targets(lab, doubtful=[])
    assert t[4, 5, 1] == IGNORE and t[4, 1, 5] == IGNORE  # just outside, 6-neighbours
    assert t[4, 5, 0] == BACKGROUND and t[4, 1, 1] == BACKGROUND  # diagonal: not the shell
    prob = np.zeros(lab.shape, np.float32)
    prob[0, 0, 0] = 0.5
    prob[4, 5, 4] = 0.65
    t = refine_targets(lab, prob, uncertain=(0.3, 0.7), doubtful=[])
    assert t[0, 0, 0] == IGNORE and t[4, 5, 4] == IGNORE
    t = refine_targets(lab, prob, uncertain=None, doubtful=[2])
    assert (t[lab == 2] == IGNORE).all() and t[4, 5, 4] == INTERIOR


def test_doubtful_objects_are_size_outliers():
    lab = np.zeros((20, 40, 40), np.int32)
    for i in range(5):
        lab[2:6, 2 + 7 * i : 7 + 7 * i, 2:7] = i + 1  # 100 voxels each
    lab[10:18, 5:35, 5:35] = 6  # 7200 voxels: 72x the median
    lab[0, 0, 0] = 7  # a speck
    assert doubtful_objects(lab).tolist() == [6, 7]
    assert doubtful_objects(lab, ratio=80.0).tolist() == [7]
    assert doubtful_objects(lab[:, :, :9] * (lab[:, :, :9] < 3)).size == 0  # too few to judge


def test_dice_ce_loss_golden_values():
    target = torch.tensor([[[[0, 1, 2, 255]]]])  # (1, 1, 1, 4)
    perfect = torch.full((1, 3, 1, 1, 4), -20.0)
    for i, c in enumerate([0, 1, 2, 0]):
        perfect[0, c, 0, 0, i] = 20.0
    out = dice_ce_loss(perfect, target)
    assert float(out.total) < 1e-6
    flat = torch.zeros((1, 3, 1, 1, 4))  # uniform: CE = ln 3; Dice per class 1 - (2/3+1)/(4/3+1)
    out = dice_ce_loss(flat, target, eps=1.0)
    assert float(out.cross_entropy) == pytest.approx(np.log(3), rel=1e-6)
    assert float(out.dice) == pytest.approx(1 - (2 / 3 + 1) / (2 + 1), rel=1e-6)
    # the ignored voxel does not count, whatever the logits say there
    changed = flat.clone()
    changed[0, :, 0, 0, 3] = torch.tensor([5.0, -3.0, 9.0])
    assert float(dice_ce_loss(changed, target).total) == pytest.approx(float(out.total))
    assert float(dice_ce_loss(flat, torch.full_like(target, 255)).total) == 0.0


def test_refined_network_and_checkpoint(tmp_path):
    net = RefinedNet3D(base_width=2, depth=1)
    x = torch.rand(1, 1, 9, 10, 11)
    p = net.encode(x)
    assert p.shape == (1, 3, 9, 10, 11)
    assert torch.allclose(p.sum(1), torch.ones(1, 9, 10, 11), atol=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        RefinedNet3D(widthh=3)
    Checkpoint(
        architecture=net.arch.__dict__,
        model=net.state_dict(),
        config={"data": {"normalization": "percentile"}},
        kind="refined",
        foreground_classes=[1, 2],
    ).save(tmp_path / "r.pt")
    loaded = load_model(tmp_path / "r.pt")
    assert loaded.kind == "refined" and isinstance(loaded.model, RefinedNet3D)
    with torch.inference_mode():
        assert torch.allclose(loaded.model.encode(x), net.eval().encode(x), atol=1e-6)


def ball(shape, centre, r):
    g = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((a - c) ** 2 for a, c in zip(g, centre, strict=True)) <= r * r


def test_seeded_watershed_splits_touching_and_keeps_seedless():
    shape = (20, 40, 50)
    a, b, c = (
        ball(shape, (10, 20, 12), 7),
        ball(shape, (10, 20, 24), 7),
        ball(shape, (10, 20, 42), 3),
    )
    foreground = 0.6 * (a | b | c).astype(np.float32)  # foreground, not sure (< 0.7)
    interior = (ball(shape, (10, 20, 12), 4) | ball(shape, (10, 20, 24), 4)).astype(np.float32)
    labels = seeded_watershed(foreground, interior)
    assert labels.max() == 3  # two seeded, one seedless component kept whole
    assert labels[10, 20, 12] != labels[10, 20, 24]
    grown = ball(shape, (10, 20, 12), 4)
    grown = ndi.binary_dilation(grown, ndi.generate_binary_structure(3, 1))
    assert (labels == labels[10, 20, 12]).sum() == grown.sum()  # the interior plus one voxel
    assert np.unique(labels[c]).tolist() == [3] and (labels == 3).sum() == c.sum()
    # a boundary drawn thicker but sure (>= 0.7) is taken whole, the doubtful shell beyond not
    sure = ball(shape, (10, 20, 12), 6) & ~ball(shape, (10, 20, 24), 6.5)
    thick = np.where(sure, np.float32(0.9), foreground)
    wide = seeded_watershed(thick, interior)
    first = wide == wide[10, 20, 12]
    assert (first & sure).sum() == sure.sum()
    assert not (first & ~sure & ~grown).any()
    assert wide.max() == 3 and (wide == wide[10, 20, 24]).sum() == grown.sum()
    # through instances(): a size floor removes the small seedless one; W-Net input is refused
    assert instances(foreground, "seeded", interior=interior, min_volume=200).max() == 2
    assert instances(foreground, "auto", interior=interior).max() == 3
    # with coarse z-steps the interiors grow in (y, x) only, as such targets were drawn
    flat = seeded_watershed(foreground, interior, voxel_size=(3.0, 1.0, 1.0), radius=3.0)
    core = ball(shape, (10, 20, 12), 4)
    ring = ndi.binary_dilation(core, cross((False, True, True)))
    assert (flat == flat[10, 20, 12]).sum() == ring.sum()
    with pytest.raises(ValueError, match="refined"):
        instances(foreground, "seeded")


@pytest.mark.parametrize("kind", KINDS)
def test_each_artifact_changes_the_image_and_is_seeded(kind):
    image = np.random.default_rng(0).normal(10, 1, (16, 32, 32)).astype(np.float32)
    a = apply_artifacts(image, [kind], np.random.default_rng(1), level=20.0)
    b = apply_artifacts(image, [kind], np.random.default_rng(1), level=20.0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, image) and a.shape == image.shape and a.dtype == np.float32


def test_structures_avoid_the_nuclei_and_labels_stay():
    image = np.zeros((16, 32, 32), np.float32)
    avoid = np.zeros(image.shape, bool)
    avoid[:, :16] = True
    out = apply_artifacts(image, ["debris", "tubes"], np.random.default_rng(3), level=1.0,
                          base=0.0, avoid=avoid)  # fmt: skip
    assert (out[avoid] == 0).all() and (out[~avoid] > 0).any()
    with pytest.raises(ValueError, match="unknown"):
        apply_artifacts(image, ["smudge"], np.random.default_rng(0))
    plain, spoiled = (
        regime_volume("lightsheet-sparse", 0),
        regime_volume("lightsheet-sparse", 0, artifacts=True),
    )
    assert np.array_equal(plain.labels, spoiled.labels)
    assert not np.array_equal(plain.image, spoiled.image)
    assert spoiled.artifacts.any() and not (spoiled.artifacts & (spoiled.labels > 0)).any()
