"""The soft normalized cut of Xia & Kulis (2017), exactly and in linear time.

For soft class maps p_k (k = 1..K, summing to 1 per voxel) and an image I, the loss is

    J = 1 - (1/K) Σ_k  Σ_ij w_ij p_ik p_jk  /  Σ_ij w_ij p_ik

with the affinity w_ij = exp(-(I_i - I_j)² / σ_I²) · exp(-|x_i - x_j|² / σ_X²) for voxel pairs
closer than the radius r (distances in physical units when a voxel size is given) and 0 beyond.
J lies in [0, 1): 0 when no affinity crosses between classes.

W is symmetric. With A_k = W p_k, d = W 1, N_k = <p_k, A_k>, D_k = <p_k, d>:

    J = 1 - (1/K) Σ_k N_k / D_k,    ∂J/∂p_k = -(1/K) (2 A_k / D_k - N_k d / D_k²)

so one application of W to the K class maps and the constant image gives both loss and gradient,
and autograd never has to trace the filter. Since Σ_k p_k = 1, W p_K = d - Σ_{k<K} W p_k saves
one channel. Two ways to apply W share that code:

``exact``
    Loops over the offsets of the ball of radius r with shifted views (each pair once, used in
    both directions). Memory O(K·V), time O(V · |ball|): the reference every other method is
    tested against. Voxels at the volume's border see only in-volume neighbours.
``grid``
    A bilateral grid (Paris & Durand 2006; Chen et al. 2007): splat p_k·1 multilinearly into a
    coarse (space × intensity) grid, blur it with a separable Gaussian, slice it back with the
    same weights. Because the slice is the transpose of the splat and the blur is symmetric,
    the grid's W is exactly symmetric and the analytic gradient above is exact for it. The
    blur's variance is matched to the (ball-truncated) spatial kernel and to the intensity
    kernel, minus the variance the splat and slice interpolation add. Its cost grows with the
    number of grid cells, i.e. with (intensity range / σ_I).

``fast`` (the default) picks, per call, whichever of the two is cheaper for the sizes at hand:
the exact loop for small balls (it is then also the fastest), the grid for large ones.

References
----------
X. Xia, B. Kulis. W-Net: A Deep Model for Fully Unsupervised Image Segmentation. arXiv:1711.08506.
J. Shi, J. Malik. Normalized cuts and image segmentation. IEEE TPAMI 22(8), 2000.
J. Chen, S. Paris, F. Durand. Real-time edge-aware image processing with the bilateral grid.
ACM TOG 26(3), 2007.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

METHODS = ("fast", "exact", "grid")
_EXP_FLOOR = -80.0  # exp(-80) ≈ 1.8e-35: above float32's denormal range, which is very slow on CPUs


# --------------------------------------------------------------------------------------------
# The spatial kernel on the voxel lattice


@dataclass(frozen=True)
class SpatialKernel:
    """Offsets of the half ball (each unordered pair once) and their spatial weights.

    ``offsets[0]`` is the zero offset (weight 1). ``variance`` holds the per-axis second moment
    (in voxels²) of the full ball-truncated kernel, which the grid reproduces.
    """

    offsets: tuple[tuple[int, ...], ...]
    log_weights: tuple[float, ...]
    variance: tuple[float, ...]
    n_full: int


@lru_cache(maxsize=64)
def spatial_kernel(
    spatial_sigma: float, radius: float, voxel_size: tuple[float, ...]
) -> SpatialKernel:
    """Enumerate the lattice offsets δ with |δ · voxel_size| < radius."""
    reach = [math.ceil(radius / s) for s in voxel_size]
    full = []
    for delta in itertools.product(*[range(-m, m + 1) for m in reach]):
        d2 = sum((d * s) ** 2 for d, s in zip(delta, voxel_size, strict=True))
        if d2 < radius**2:
            full.append((delta, -d2 / spatial_sigma**2))
    mass = sum(math.exp(lw) for _, lw in full)
    variance = tuple(
        sum(math.exp(lw) * delta[a] ** 2 for delta, lw in full) / mass
        for a in range(len(voxel_size))
    )
    zero = tuple(0 for _ in voxel_size)
    half = [(delta, lw) for delta, lw in full if delta > zero]  # lexicographically positive
    offsets = (zero, *(d for d, _ in half))
    log_weights = (0.0, *(lw for _, lw in half))
    return SpatialKernel(offsets, log_weights, variance, len(full))


def _pair_slices(delta: Sequence[int], shape: Sequence[int]) -> tuple[tuple, tuple] | None:
    """Slices selecting i and i + δ for every i with both inside the volume."""
    a, b = [], []
    for d, n in zip(delta, shape, strict=True):
        if abs(d) >= n:
            return None
        a.append(slice(max(0, -d), n - max(0, d)))
        b.append(slice(max(0, d), n - max(0, -d)))
    return (Ellipsis, *a), (Ellipsis, *b)


# --------------------------------------------------------------------------------------------
# Applying W


def affinity_exact(
    q: Tensor, image: Tensor, intensity_sigma: float, kernel: SpatialKernel
) -> Tensor:
    """W q by the offset loop. ``q``: (N, C, *S); ``image``: (N, 1, *S). Returns (N, C, *S)."""
    out = q.clone()  # the zero offset: w_ii = 1
    inv = 1.0 / intensity_sigma**2
    shape = q.shape[2:]
    for delta, log_w in zip(kernel.offsets[1:], kernel.log_weights[1:], strict=True):
        pair = _pair_slices(delta, shape)
        if pair is None:
            continue
        sa, sb = pair
        diff = image[sa] - image[sb]
        w = (diff * diff).mul_(-inv).add_(log_w).clamp_(min=_EXP_FLOOR).exp_()
        out[sa].addcmul_(w, q[sb])
        out[sb].addcmul_(w, q[sa])
    return out


@lru_cache(maxsize=256)
def _discrete_gaussian(variance: float) -> Tensor:
    """A symmetric sampled-Gaussian kernel whose discrete variance equals ``variance``."""
    if variance <= 1e-8:
        return torch.ones(1, dtype=torch.float64)
    half = max(1, math.ceil(3.0 * math.sqrt(variance)))
    x = torch.arange(-half, half + 1, dtype=torch.float64)

    def var_of(s2: float) -> float:
        k = torch.exp(-(x**2) / (2 * s2))
        k = k / k.sum()
        return float((k * x**2).sum())

    lo, hi = 1e-6, 4.0 * variance + 1.0
    for _ in range(60):  # bisection on the continuous σ² to hit the discrete variance
        mid = 0.5 * (lo + hi)
        if var_of(mid) < variance:
            lo = mid
        else:
            hi = mid
    k = torch.exp(-(x**2) / (2 * hi))
    return k / k.sum()


def _blur_axis(g: Tensor, taps: Tensor, axis: int) -> Tensor:
    """Convolve ``g`` along ``axis`` with a symmetric kernel, zero outside."""
    half = (len(taps) - 1) // 2
    out = g * float(taps[half])
    n = g.shape[axis]
    for j in range(1, min(half, n - 1) + 1):
        t = float(taps[half + j])
        lo = g.narrow(axis, 0, n - j)
        hi = g.narrow(axis, j, n - j)
        out.narrow(axis, j, n - j).add_(lo, alpha=t)
        out.narrow(axis, 0, n - j).add_(hi, alpha=t)
    return out


def affinity_grid(
    q: Tensor,
    image: Tensor,
    intensity_sigma: float,
    kernel: SpatialKernel,
    spacing_factor: float = 1.0,
) -> Tensor:
    """W q by a bilateral grid; same arguments as :func:`affinity_exact`.

    The grid's spacing is ``spacing_factor`` times the standard deviation of each axis' kernel
    (intensity: σ_I/√2; space: the ball-truncated kernel's), so its size is about
    (V / spacing³) × (intensity range / spacing_I) cells.
    """
    n, c = q.shape[:2]
    shape = q.shape[2:]
    nd = len(shape)
    out = torch.empty_like(q)
    std_i = intensity_sigma / math.sqrt(2.0)
    stds = [math.sqrt(v) for v in kernel.variance] + [std_i]
    for b in range(n):
        x = image[b, 0]
        lo = x.min()
        spacing = [max(spacing_factor * s, 1e-6) for s in stds]
        coords = [
            torch.arange(size, dtype=q.dtype, device=q.device) / spacing[a]
            for a, size in enumerate(shape)
        ]
        u_int = ((x - lo) / spacing[-1]).reshape(-1)
        grid_shape = [math.floor((size - 1) / spacing[a]) + 3 for a, size in enumerate(shape)]
        grid_shape.append(math.floor(float(u_int.max())) + 3)
        strides = [1] * (nd + 1)
        for a in range(nd - 1, -1, -1):
            strides[a] = strides[a + 1] * grid_shape[a + 1]
        # per-axis floor index (shifted by the one-cell pad) and fraction
        floors, fracs = [], []
        for a in range(nd):
            u = coords[a] + 1.0
            f = torch.floor(u)
            view = [1] * nd
            view[a] = shape[a]
            floors.append((f.long() * strides[a]).view(view))
            fracs.append((u - f).view(view))
        u = u_int + 1.0
        f_int = torch.floor(u)
        frac_int = (u - f_int).view(shape)
        base = f_int.long().view(shape) * strides[nd]
        for a in range(nd):
            base = base + floors[a]
        base = base.reshape(-1)
        idx_list, wt_list = [], []
        for corner in itertools.product((0, 1), repeat=nd + 1):
            offset = sum(cb * strides[a] for a, cb in enumerate(corner))
            w = torch.ones(shape, dtype=q.dtype, device=q.device)
            for a in range(nd):
                w = w * (fracs[a] if corner[a] else 1.0 - fracs[a])
            w = w * (frac_int if corner[nd] else 1.0 - frac_int)
            idx_list.append(base + offset)
            wt_list.append(w.reshape(-1))
        idx = torch.stack(idx_list)  # (2^D, V)
        wts = torch.stack(wt_list)  # (2^D, V)
        values = q[b].reshape(c, -1)  # (C, V)
        cells = math.prod(grid_shape)
        grid = torch.zeros(cells, c, dtype=q.dtype, device=q.device)
        src = (wts.unsqueeze(-1) * values.t().unsqueeze(0)).reshape(-1, c)
        grid.index_add_(0, idx.reshape(-1), src)
        grid = grid.t().reshape(c, *grid_shape)
        for a in range(nd + 1):
            # interpolation by the tent adds variance 1/6 (in cells) at splat and at slice
            target = (stds[a] / spacing[a]) ** 2 - 2.0 / 6.0
            taps = _discrete_gaussian(max(target, 0.0)).to(q.dtype)
            grid = _blur_axis(grid, taps, a + 1)
        flat = grid.reshape(c, -1).t()  # (cells, C)
        sliced = (flat[idx.reshape(-1)].reshape(len(idx_list), -1, c) * wts.unsqueeze(-1)).sum(0)
        out[b] = sliced.t().reshape(c, *shape)
    return out


def grid_cells(
    shape: Sequence[int], intensity_range: float, intensity_sigma: float, kernel: SpatialKernel
) -> int:
    """Number of cells the bilateral grid would have for one sample."""
    cells = 1
    for size, var in zip(shape, kernel.variance, strict=True):
        cells *= int((size - 1) / max(math.sqrt(var), 1e-6)) + 3
    return cells * (int(intensity_range / (intensity_sigma / math.sqrt(2.0))) + 3)


def choose_method(
    shape: Sequence[int], intensity_range: float, intensity_sigma: float, kernel: SpatialKernel
) -> str:
    """The cheaper of ``exact`` and ``grid`` by a cost model measured on a 2-core CPU.

    Per voxel, exact takes ~2 ns for each offset of the half ball; the grid ~270 ns for the
    splat and slice of its 2^(d+1) corners, plus ~18 ns per grid cell for the blur.
    """
    voxels = math.prod(shape)
    exact_cost = 1.0 * voxels * (len(kernel.offsets) - 1)
    grid_cost = 130.0 * voxels + 9.0 * grid_cells(shape, intensity_range, intensity_sigma, kernel)
    return "exact" if exact_cost <= grid_cost else "grid"


# --------------------------------------------------------------------------------------------
# Loss and gradient


class _SoftNCutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs: Tensor, image: Tensor, apply_w, eps: float):  # type: ignore[override]
        _n, k = probs.shape[:2]
        ones = torch.ones_like(probs[:, :1])
        # W p_K = d - Σ_{k<K} W p_k only where the classes sum to one to rounding error
        tol = 16 * k * torch.finfo(probs.dtype).eps
        sums_to_one = bool(torch.allclose(probs.sum(1, keepdim=True), ones, atol=tol, rtol=0))
        q = torch.cat([probs[:, : k - 1] if sums_to_one else probs, ones], 1)
        wq = apply_w(q, image)
        d = wq[:, -1:]
        if sums_to_one:
            a = torch.cat([wq[:, : k - 1], d - wq[:, : k - 1].sum(1, keepdim=True)], 1)
        else:
            a = wq[:, :k]
        dims = tuple(range(2, probs.ndim))
        num = (probs.double() * a.double()).sum(dims)  # (N, K): N_k, reduced in float64
        den = (probs.double() * d.double()).sum(dims).clamp_min(eps)  # D_k
        per_sample = 1.0 - (num / den).mean(1)
        ctx.save_for_backward(a, d, num, den)
        return per_sample.to(probs.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        a, d, num, den = ctx.saved_tensors
        k = a.shape[1]
        view = (*num.shape, *([1] * (a.ndim - 2)))
        g = grad_out.double().view(-1, *([1] * (a.ndim - 1))) / k
        coef_a = (2.0 / den).view(view)
        coef_d = (num / den**2).view(view)
        grad = -(g * (coef_a * a.double() - coef_d * d.double()))
        return grad.to(a.dtype), None, None, None


class SoftNCutLoss(nn.Module):
    """Soft normalized-cut loss (Xia & Kulis 2017) for N-D soft segmentations.

    Parameters
    ----------
    intensity_sigma
        σ_I of the intensity affinity exp(-(I_i - I_j)² / σ_I²), in the image's units (after
        normalization: 0..100 by default, where 1 is the reference plugin's default).
    spatial_sigma
        σ_X of the spatial affinity exp(-|x_i - x_j|² / σ_X²), in voxels, or in physical units
        when ``voxel_size`` is given.
    radius
        Pairs at distance ≥ ``radius`` have zero affinity. Default 2.5·σ_X, where the ball
        holds the Gaussian (≥ 99% of its mass in 3D), so ``exact`` and ``grid`` compute the
        same function. A smaller radius truncates the kernel, which ``exact`` honours and
        ``grid`` approximates by matching the truncated kernel's variance.
    voxel_size
        Physical size of a voxel per spatial axis (e.g. (z, y, x) in µm); default isotropic 1.
    method
        ``"fast"`` (default: the cheaper of the two below for each call), ``"exact"`` or
        ``"grid"``.
    reduction
        ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (one value per sample).
    eps
        Floor of the denominators Σ_ij w_ij p_ik (a class with no mass adds 0 association).

    Notes
    -----
    ``forward(probs, image)`` takes ``probs`` of shape (N, K, *spatial) — softmax outputs,
    K ≥ 2 — and ``image`` of shape (N, 1, *spatial) or (N, *spatial). Gradients flow to
    ``probs`` only; the image is data. Ratios are computed per sample and per class, never
    pooled over the batch.
    """

    def __init__(
        self,
        intensity_sigma: float = 1.0,
        spatial_sigma: float = 4.0,
        radius: float | None = None,
        voxel_size: Sequence[float] | None = None,
        method: str = "fast",
        reduction: str = "mean",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not intensity_sigma > 0 or not math.isfinite(intensity_sigma):
            raise ValueError(f"intensity_sigma must be a positive number, got {intensity_sigma}")
        if not spatial_sigma > 0 or not math.isfinite(spatial_sigma):
            raise ValueError(f"spatial_sigma must be a positive number, got {spatial_sigma}")
        if radius is not None and not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if voxel_size is not None and (len(voxel_size) == 0 or any(not v > 0 for v in voxel_size)):
            raise ValueError(f"voxel_size must hold positive sizes, got {voxel_size}")
        self.intensity_sigma = float(intensity_sigma)
        self.spatial_sigma = float(spatial_sigma)
        self.radius = float(radius) if radius is not None else 2.5 * self.spatial_sigma
        self.voxel_size = tuple(float(v) for v in voxel_size) if voxel_size is not None else None
        self.method = method
        self.reduction = reduction
        self.eps = eps
        self.last_method: str | None = None

    def extra_repr(self) -> str:
        return (
            f"intensity_sigma={self.intensity_sigma}, spatial_sigma={self.spatial_sigma}, "
            f"radius={self.radius}, voxel_size={self.voxel_size}, method={self.method!r}"
        )

    def kernel(self, ndim: int) -> SpatialKernel:
        vs = self.voxel_size or (1.0,) * ndim
        if len(vs) != ndim:
            raise ValueError(f"voxel_size has {len(vs)} values for {ndim} spatial dimensions")
        return spatial_kernel(self.spatial_sigma, self.radius, vs)

    def forward(self, probs: Tensor, image: Tensor) -> Tensor:
        """Loss of soft segmentations ``probs`` (N, K, *S) of ``image`` (N, 1, *S) or (N, *S)."""
        if not isinstance(probs, Tensor) or probs.ndim < 3:
            raise ValueError(
                "probs must be a tensor of shape (N, K, *spatial) with at least one spatial "
                f"axis, got {getattr(probs, 'shape', type(probs))}"
            )
        if probs.shape[1] < 2:
            raise ValueError(f"probs needs K >= 2 classes (axis 1), got K={probs.shape[1]}")
        if not probs.is_floating_point():
            raise ValueError(f"probs must be floating point, got {probs.dtype}")
        if image.ndim == probs.ndim - 1:
            image = image.unsqueeze(1)
        if image.ndim != probs.ndim or image.shape[1] != 1:
            raise ValueError(
                f"image must have shape (N, 1, *spatial) or (N, *spatial) matching probs "
                f"{tuple(probs.shape)}, got {tuple(image.shape)}"
            )
        if image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
            raise ValueError(
                f"image shape {tuple(image.shape)} does not match probs shape "
                f"{tuple(probs.shape)} (batch and spatial axes must agree)"
            )
        image = image.detach().to(probs.dtype)
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        if not torch.isfinite(probs.detach()).all():
            raise ValueError("probs contains NaN or infinite values")
        shape = tuple(probs.shape[2:])
        kernel = self.kernel(len(shape))
        method = self.method
        if method == "fast":
            value_range = float(image.amax() - image.amin())
            method = choose_method(shape, value_range, self.intensity_sigma, kernel)
        self.last_method = method
        sigma = self.intensity_sigma
        if method == "exact":

            def apply_w(q: Tensor, x: Tensor) -> Tensor:
                return affinity_exact(q, x, sigma, kernel)
        else:

            def apply_w(q: Tensor, x: Tensor) -> Tensor:
                return affinity_grid(q, x, sigma, kernel)

        per_sample = _SoftNCutFunction.apply(probs, image, apply_w, self.eps)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
