"""SoftNCutLoss: hand-computed values, a dense N×N reference, gradients, fast vs exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_file

from cellcut.losses import SoftNCutLoss
from cellcut.losses.ncut import spatial_kernel
from cellcut.normalize import normalize, suggest_intensity_sigma
from cellcut.synthetic import make_nuclei_volume


def dense_reference(probs, image, intensity_sigma, spatial_sigma, radius, voxel_size=None):
    """The definition, literally: an explicit N×N affinity matrix, float64."""
    n, k = probs.shape[:2]
    shape = probs.shape[2:]
    vs = voxel_size or (1.0,) * len(shape)
    axes = [torch.arange(s, dtype=torch.float64) * v for s, v in zip(shape, vs, strict=True)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    d2 = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    out = []
    for b in range(n):
        x = image[b].reshape(-1).double()
        w = torch.exp(-((x[:, None] - x[None]) ** 2) / intensity_sigma**2)
        w = w * torch.exp(-d2 / spatial_sigma**2) * (d2 < radius**2)
        p = probs[b].reshape(k, -1).double()
        ratio = sum((p[c] @ w @ p[c]) / (p[c] @ w.sum(1)) for c in range(k))
        out.append(1 - ratio / k)
    return torch.stack(out)


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


E = math.e
GOLDEN = [
    # (probs (K, *S), image (*S), sigma_I, sigma_X, radius, voxel size, expected J)
    ("two equal voxels, split", [[1, 0], [0, 1]], [0, 0], 1, 1, 2, None, 1 / (1 + E)),
    ("two voxels one apart in intensity", [[1, 0], [0, 1]], [0, 1], 1, 1, 2, None, 1 / (1 + E**2)),
    ("undecided classes", [[0.5, 0.5], [0.5, 0.5]], [0, 0], 1, 1, 2, None, 0.5),
    ("pair outside radius", [[1, 0], [0, 1]], [0, 0], 1, 1, 1, None, 0.0),
    (
        "three voxels, nearest neighbours",
        [[1, 1, 0], [0, 0, 1]],
        [0, 0, 0],
        1,
        1,
        1.5,
        None,
        1 - 0.5 * ((2 + 2 / E) / (2 + 3 / E) + 1 / (1 + 1 / E)),
    ),
    (
        "voxel size 2 along z, σ_X 2",
        [[[1], [0]], [[0], [1]]],
        [[0], [0]],
        1,
        2,
        3,
        (2, 1),
        1 / (1 + E),
    ),
    (
        "voxel size 2, radius 2 is exclusive",
        [[[1], [0]], [[0], [1]]],
        [[0], [0]],
        1,
        2,
        2,
        (2, 1),
        0,
    ),
]


@pytest.mark.parametrize("method", ["exact", "grid"])
@pytest.mark.parametrize(
    "name,probs,image,sigma_i,sigma_x,radius,vs,expected", GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_hand_computed_values(name, probs, image, sigma_i, sigma_x, radius, vs, expected, method):
    loss = SoftNCutLoss(sigma_i, sigma_x, radius=radius, voxel_size=vs, method="exact")
    value = loss(t(probs)[None], t(image)[None])
    assert value.item() == pytest.approx(expected, abs=1e-12)
    if method == "grid" and name == "undecided classes":
        grid = SoftNCutLoss(sigma_i, sigma_x, radius=radius, voxel_size=vs, method="grid")
        assert grid(t(probs)[None], t(image)[None]).item() == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("shape", [(7,), (5, 6), (4, 5, 6)])
@pytest.mark.parametrize("k", [2, 3])
def test_exact_matches_dense_reference(shape, k):
    g = torch.Generator().manual_seed(sum(shape) + k)
    probs = torch.softmax(torch.randn(2, k, *shape, generator=g, dtype=torch.float64), 1)
    image = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64) * 3
    vs = (1.5, 1.0, 0.7)[-len(shape) :]
    loss = SoftNCutLoss(1.2, 2.0, radius=3.0, voxel_size=vs, method="exact", reduction="none")
    expected = dense_reference(probs, image, 1.2, 2.0, 3.0, vs)
    torch.testing.assert_close(loss(probs, image), expected, atol=1e-10, rtol=1e-10)


def test_unnormalised_probs_also_match_reference():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 2, 5, 5, 5, generator=g, dtype=torch.float64)  # rows do not sum to 1
    image = torch.rand(1, 1, 5, 5, 5, generator=g, dtype=torch.float64)
    loss = SoftNCutLoss(0.5, 1.5, radius=2.5, method="exact", reduction="none")
    torch.testing.assert_close(
        loss(probs, image), dense_reference(probs, image, 0.5, 1.5, 2.5), atol=1e-10, rtol=0
    )


def test_perfect_partition_of_two_blobs_beats_random_and_positional_cuts():
    z, y, x = torch.meshgrid(
        *[torch.arange(s, dtype=torch.float32) for s in (16, 24, 32)], indexing="ij"
    )
    blobs = ((z - 8) ** 2 + (y - 12) ** 2 + (x - 8) ** 2 < 16) | (
        (z - 8) ** 2 + (y - 12) ** 2 + (x - 24) ** 2 < 16
    )
    g = torch.Generator().manual_seed(0)
    image = (10 + 80 * blobs.float() + 3 * torch.randn(16, 24, 32, generator=g))[None, None]
    fg = blobs.float()[None, None]
    half = torch.zeros_like(fg)
    half[..., :16] = 1
    cases = {
        "perfect": torch.cat([fg, 1 - fg], 1),
        "inverted": torch.cat([1 - fg, fg], 1),  # the same cut with the class names swapped
        "random": torch.softmax(torch.randn(1, 2, 16, 24, 32, generator=g), 1),
        "position": torch.cat([half, 1 - half], 1),
    }
    loss = SoftNCutLoss(20.0, 2.0, method="exact")
    values = {name: loss(p, image).item() for name, p in cases.items()}
    assert all(0 <= v < 1 for v in values.values())
    assert values["perfect"] == pytest.approx(values["inverted"], abs=1e-6)
    assert values["perfect"] < 1e-4 < values["position"] < values["random"]


def test_gradcheck_raw_probabilities():
    g = torch.Generator().manual_seed(1)
    probs = (torch.rand(2, 3, 3, 4, 3, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    image = torch.rand(2, 1, 3, 4, 3, generator=g, dtype=torch.float64) * 2
    loss = SoftNCutLoss(0.8, 1.5, radius=2.2, method="exact", reduction="none")
    assert torch.autograd.gradcheck(lambda p: loss(p, image), (probs,))


@pytest.mark.parametrize("method", ["exact", "grid"])
def test_gradcheck_through_softmax(method):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 4, 5, 4, generator=g, dtype=torch.float64).requires_grad_()
    image = torch.rand(1, 1, 4, 5, 4, generator=g, dtype=torch.float64) * 2
    loss = SoftNCutLoss(1.0, 1.5, method=method)
    assert torch.autograd.gradcheck(lambda z: loss(torch.softmax(z, 1), image), (logits,))


def test_gradient_matches_autograd_through_dense_reference():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 4, 5, generator=g, dtype=torch.float64)
    image = torch.rand(2, 1, 4, 4, 5, generator=g, dtype=torch.float64) * 2
    p1 = torch.softmax(logits, 1).requires_grad_()
    SoftNCutLoss(1.0, 2.0, radius=3.0, method="exact")(p1, image).backward()
    p2 = torch.softmax(logits, 1).requires_grad_()
    dense_reference(p2, image, 1.0, 2.0, 3.0).mean().backward()
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-10, rtol=1e-8)


def compare_fast_exact(image, probs, sigma_i, sigma_x, radius=None, voxel_size=None):
    grads, values = {}, {}
    for method in ("exact", "grid"):
        p = probs.clone().requires_grad_()
        loss = SoftNCutLoss(sigma_i, sigma_x, radius=radius, voxel_size=voxel_size, method=method)
        value = loss(p, image)
        value.backward()
        values[method], grads[method] = value.item(), p.grad.flatten()
    rel = abs(values["grid"] - values["exact"]) / values["exact"]
    cos = F.cosine_similarity(grads["grid"], grads["exact"], dim=0).item()
    rel_l2 = ((grads["grid"] - grads["exact"]).norm() / grads["exact"].norm()).item()
    return rel, cos, rel_l2


def plausible_probs(image, seed=0):
    """Soft classes that follow the image (as a trained encoder would), plus noise."""
    g = torch.Generator().manual_seed(seed)
    z = (image - image.mean()) / image.std()
    logits = torch.cat([z, -z], 1) + 0.5 * torch.randn(
        image.shape[0], 2, *image.shape[2:], generator=g
    )
    return torch.softmax(logits, 1)


@pytest.mark.parametrize(
    "sigma_x,radius,voxel_size",
    [(2.0, None, None), (3.0, None, None), (2.0, 5.0, None), (3.0, None, (2.0, 1.0, 1.0))],
)
def test_grid_matches_exact_on_synthetic(sigma_x, radius, voxel_size):
    v = make_nuclei_volume((24, 40, 40), seed=7, voxel_size=(2.0, 1, 1))
    image = torch.from_numpy(normalize(v.image))[None, None]
    sigma_i = suggest_intensity_sigma(v.image).intensity_sigma
    rel, cos, rel_l2 = compare_fast_exact(
        image, plausible_probs(image), sigma_i, sigma_x, radius, voxel_size
    )
    assert rel <= 1e-2 and cos >= 0.99 and rel_l2 <= 0.1, (rel, cos, rel_l2)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "relative,crop",
    [
        ("embryo/8cell_image.tif", (slice(10, 34), slice(30, 70), slice(30, 70))),
        ("mesospim/c5image.tif", (slice(40, 72), slice(20, 52), slice(30, 62))),
        ("cells3d/cells3d_nuclei.tif", (slice(20, 44), slice(100, 140), slice(100, 140))),
    ],
)
def test_grid_matches_exact_on_real_patches(relative, crop):
    import tifffile

    raw = tifffile.imread(shared_file(relative))[crop]
    image = torch.from_numpy(normalize(raw))[None, None]
    sigma_i = suggest_intensity_sigma(raw).intensity_sigma
    rel, cos, rel_l2 = compare_fast_exact(image, plausible_probs(image, 1), sigma_i, 2.0)
    assert rel <= 1e-2 and cos >= 0.99 and rel_l2 <= 0.1, (rel, cos, rel_l2)


def test_fast_chooses_exact_for_small_ball_and_grid_for_large():
    image = torch.rand(1, 1, 48, 48, 48) * 100
    probs = torch.softmax(torch.randn(1, 2, 48, 48, 48), 1)
    small = SoftNCutLoss(1.0, 4.0, radius=2)
    small(probs.double(), image.double())  # the compiled loop takes float32 only
    assert small.last_method == "exact"
    large = SoftNCutLoss(30.0, 4.0)  # radius 10: 2000+ offsets, a coarse grid
    large(probs, image)
    assert large.last_method == "grid"


def test_spatial_kernel_counts_ball_offsets():
    k = spatial_kernel(4.0, 2.0, (1.0, 1.0, 1.0))
    assert k.n_full == 27  # |δ|² < 4: the 3×3×3 cube
    assert len(k.offsets) == 14  # zero + half of the 26 others
    assert spatial_kernel(4.0, 5.0, (1.0, 1.0, 1.0)).n_full == 485


def test_batch_ratios_are_per_sample():
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(3, 2, 6, 6, 6, generator=g, dtype=torch.float64), 1)
    image = torch.rand(3, 1, 6, 6, 6, generator=g, dtype=torch.float64)
    image[1] *= 10
    loss = SoftNCutLoss(1.0, 2.0, method="exact", reduction="none")
    per_sample = loss(probs, image)
    for b in range(3):
        torch.testing.assert_close(per_sample[b : b + 1], loss(probs[b : b + 1], image[b : b + 1]))
    mean = SoftNCutLoss(1.0, 2.0, method="exact")(probs, image)
    torch.testing.assert_close(mean, per_sample.mean())


def test_float32_and_image_without_channel_axis():
    probs = torch.softmax(torch.randn(1, 2, 8, 8, 8), 1)
    image = torch.rand(1, 8, 8, 8) * 100
    value = SoftNCutLoss(10.0, 2.0)(probs, image)
    assert value.dtype == torch.float32 and 0 < value.item() < 1


def test_large_intensity_gaps_do_not_produce_nan():
    probs = torch.softmax(torch.randn(1, 2, 8, 8, 8), 1).requires_grad_()
    image = torch.zeros(1, 1, 8, 8, 8)
    image[..., ::2] = 1e4  # exp(-1e8): flushed, never denormal or NaN
    value = SoftNCutLoss(1.0, 2.0, method="exact")(probs, image)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(probs.grad).all()


@pytest.mark.parametrize(
    "probs,image,match",
    [
        (torch.rand(2, 8), torch.rand(2, 8), "probs must be a tensor of shape"),
        (torch.ones(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4), "K >= 2"),
        (torch.rand(1, 2, 4, 4, 4), torch.rand(1, 1, 4, 4, 5), "image shape"),
        (torch.rand(1, 2, 4, 4, 4), torch.rand(2, 1, 4, 4, 4), "image shape"),
        (torch.rand(1, 2, 4, 4, 4), torch.rand(1, 3, 4, 4, 4), "image must have shape"),
        (
            torch.rand(1, 2, 4, 4, 4),
            torch.full((1, 1, 4, 4, 4), float("nan")),
            "image contains NaN",
        ),
        (torch.ones(1, 2, 4, 4, 4, dtype=torch.long), torch.rand(1, 1, 4, 4, 4), "floating point"),
    ],
)
def test_bad_input(probs, image, match):
    with pytest.raises(ValueError, match=match):
        SoftNCutLoss()(probs, image)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"intensity_sigma": 0}, "intensity_sigma"),
        ({"spatial_sigma": -1}, "spatial_sigma"),
        ({"radius": 0}, "radius"),
        ({"method": "magic"}, "method"),
        ({"reduction": "max"}, "reduction"),
        ({"voxel_size": (1, 0, 1)}, "voxel_size"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftNCutLoss(**kwargs)


def test_voxel_size_must_match_dimensions():
    with pytest.raises(ValueError, match="voxel_size has 2 values for 3 spatial dimensions"):
        SoftNCutLoss(voxel_size=(1, 1))(torch.rand(1, 2, 4, 4, 4), torch.rand(1, 1, 4, 4, 4))
