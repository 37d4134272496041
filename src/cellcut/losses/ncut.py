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

``native``
    The same offset loop as ``exact``, compiled (``_affinity.c``, built at install where a C
    compiler exists): one exp per pair, vectorized, z-chunks on ``torch.get_num_threads()``
    threads. It equals ``exact`` to float32 rounding (tested) and is 7-14× faster on a CPU.
    float32 on the CPU, 1-3 spatial axes; ``NATIVE`` is None where it was not built.

``fast`` (the default) picks, per call, whichever available method is cheapest for the sizes at
hand: the offset loop for small and medium balls (compiled where possible), the grid for large
balls with a coarse intensity axis.

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
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

try:  # the compiled offset loop; optional (see setup.py)
    import cellcut.losses._affinity as NATIVE
except ImportError as error:  # pragma: no cover - depends on the install
    NATIVE = None
    _NATIVE_ERROR = str(error)
else:
    _NATIVE_ERROR = ""


def native_status() -> str:
    """One line: whether the compiled loop is in use, and what to do where it is not."""
    if NATIVE is not None:
        return "soft N-cut: compiled offset loop (float32 on the CPU)"
    return (
        "soft N-cut: PyTorch loop only, 7-14x slower on the CPU: the compiled loop was not built "
        f"({_NATIVE_ERROR}); install a C compiler and reinstall cellcut"
    )


METHODS = ("fast", "exact", "grid", "native")
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
) -> tuple[Tensor, Tensor]:
    """(W q, W 1) by the offset loop. ``q``: (N, C, *S); ``image``: (N, 1, *S).

    Each unordered pair of voxels is visited once; its weight is added in both directions.
    The spatial factor of each offset is a constant folded into the accumulation, and the
    image is pre-divided by σ_I, so a weight costs four passes (difference, negated square,
    floor, exp). Buffers are reused across offsets.
    """
    # the constant image rides along as one more channel: one accumulation gives W q and W 1
    qq = torch.cat([q, torch.ones_like(image)], 1)
    out = qq.clone()  # the zero offset: w_ii = 1
    x = image / intensity_sigma
    shape = q.shape[2:]
    buf = torch.empty(x.numel(), dtype=q.dtype, device=q.device)
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    for delta, log_w in zip(kernel.offsets[1:], kernel.log_weights[1:], strict=True):
        pair = _pair_slices(delta, shape)
        if pair is None:
            continue
        sa, sb = pair
        xa, xb = x[sa], x[sb]
        w = buf[: xa.numel()].view(xa.shape)
        torch.sub(xa, xb, out=w)
        torch.addcmul(zero, w, w, value=-1.0, out=w)
        w.clamp_(min=_EXP_FLOOR).exp_()
        s = math.exp(log_w)
        out[sa].addcmul_(w, qq[sb], value=s)
        out[sb].addcmul_(w, qq[sa], value=s)
    return out[:, :-1], out[:, -1:]


@lru_cache(maxsize=256)
def _discrete_gaussian(variance: float) -> Tensor:
    """A symmetric sampled-Gaussian kernel whose discrete variance equals ``variance``."""
    if variance <= 1e-8:
        return torch.ones(1, dtype=torch.float64)
    half = max(1, math.ceil(2.0 * math.sqrt(variance)))  # tails beyond 2σ: < 0.5% of mass
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
) -> tuple[Tensor, Tensor]:
    """(W q, W 1) by a bilateral grid; same arguments as :func:`affinity_exact`.

    The grid's spacing is ``spacing_factor`` times the standard deviation of each axis' kernel
    (intensity: σ_I/√2; space: the ball-truncated kernel's), so its size is about
    (V / spacing³) × (intensity range / spacing_I) cells. Splat and slice use the same
    multilinear weights over the 2^(d+1) corners of each voxel's cell, so the operator is
    symmetric.
    """
    q = torch.cat([q, torch.ones_like(image)], 1)
    n, c = q.shape[:2]
    shape = tuple(q.shape[2:])
    nd = len(shape)
    dev, dt = q.device, q.dtype
    stds = [math.sqrt(v) for v in kernel.variance] + [intensity_sigma / math.sqrt(2.0)]
    spacing = [max(spacing_factor * s, 1e-6) for s in stds]
    # interpolation with the tent adds variance 1/6 cell² at splat and again at slice
    taps = [
        _discrete_gaussian(max((s / h) ** 2 - 2.0 / 6.0, 0.0)).to(dt)
        for s, h in zip(stds, spacing, strict=True)
    ]
    spatial_cells = [math.floor((size - 1) / spacing[a]) + 3 for a, size in enumerate(shape)]

    # Spatial corners are the same for every sample: per-axis floor (one-cell pad) and weight.
    spatial_w = torch.ones((1,) * (2 * nd), dtype=dt, device=dev)
    spatial_base = torch.zeros((1,) * nd, dtype=torch.long, device=dev)
    sp_strides = [math.prod(spatial_cells[a + 1 :]) for a in range(nd)]
    for a, size in enumerate(shape):
        u = torch.arange(size, dtype=dt, device=dev) / spacing[a] + 1.0
        f = torch.floor(u)
        t = u - f
        w_axis = torch.stack([1.0 - t, t])  # (2, size)
        view = [1] * (2 * nd)
        view[a], view[nd + a] = 2, size
        spatial_w = spatial_w * w_axis.view(view)
        base_view = [1] * nd
        base_view[a] = size
        spatial_base = spatial_base + (f.long() * sp_strides[a]).view(base_view)
    spatial_w = spatial_w.reshape(2**nd, 1, -1)  # (2^d, 1, V)
    spatial_base = spatial_base.reshape(-1)
    corner_sp = torch.tensor(
        [
            sum(cb * st for cb, st in zip(corner, sp_strides, strict=True))
            for corner in itertools.product((0, 1), repeat=nd)
        ],
        dtype=torch.long,
        device=dev,
    )

    out = torch.empty_like(q)
    for b in range(n):
        x = image[b, 0].reshape(-1)
        u = (x - x.min()) / spacing[-1] + 1.0
        f = torch.floor(u)
        t = u - f
        n_int = int(f.max()) + 2
        cells = math.prod(spatial_cells) * n_int
        # flat index = spatial index * n_int + intensity index
        base = spatial_base * n_int + f.long()
        offsets = (corner_sp[:, None] * n_int + torch.arange(2, device=dev)[None]).reshape(-1)
        idx = (base[None] + offsets[:, None]).reshape(-1)  # (2^(d+1) · V)
        weights = (spatial_w * torch.stack([1.0 - t, t])[None]).reshape(-1, x.numel())
        grid = torch.zeros(c, cells, dtype=dt, device=dev)
        for ch in range(c):
            values = (weights * q[b, ch].reshape(1, -1)).reshape(-1)
            grid[ch].index_add_(0, idx, values)
        grid = grid.view(c, *spatial_cells, n_int)
        for a in range(nd + 1):
            grid = _blur_axis(grid, taps[a], a + 1)
        grid = grid.reshape(c, -1)
        for ch in range(c):
            sliced = torch.take(grid[ch], idx).view(-1, x.numel())
            out[b, ch] = (sliced * weights).sum(0).view(shape)
    return out[:, :-1], out[:, -1:]


def grid_cells(
    shape: Sequence[int], intensity_range: float, intensity_sigma: float, kernel: SpatialKernel
) -> int:
    """Number of cells the bilateral grid would have for one sample."""
    cells = 1
    for size, var in zip(shape, kernel.variance, strict=True):
        cells *= int((size - 1) / max(math.sqrt(var), 1e-6)) + 3
    return cells * (int(intensity_range / (intensity_sigma / math.sqrt(2.0))) + 3)


def native_supports(probs: Tensor) -> bool:
    """Whether the compiled loop can take these class maps (float32, CPU, 1-3 spatial axes)."""
    return (
        NATIVE is not None
        and probs.dtype == torch.float32
        and probs.device.type == "cpu"
        and 1 <= probs.ndim - 2 <= 3
    )


def choose_method(
    shape: Sequence[int],
    intensity_range: float | Callable[[], float],
    intensity_sigma: float,
    kernel: SpatialKernel,
    native: bool = False,
) -> str:
    """The cheapest of ``exact`` (or ``native`` where usable) and ``grid``, by a cost model.

    Measured on a 2-core CPU, per voxel: the PyTorch loop takes ~2 ns and the compiled one
    ~0.2 ns for each offset of the half ball; the grid ~90 ns for the splat and slice of its
    2^(d+1) corners, plus ~20 ns per grid cell for the blur. ``intensity_range`` may be a
    function, called only when the grid could win.
    """
    voxels = math.prod(shape)
    per_offset = 0.2 if native else 2.0
    loop_cost = per_offset * voxels * (len(kernel.offsets) - 1)
    grid_cost = 90.0 * voxels
    if loop_cost > grid_cost:
        value_range = intensity_range() if callable(intensity_range) else intensity_range
        grid_cost += 20.0 * grid_cells(shape, value_range, intensity_sigma, kernel)
    if loop_cost <= grid_cost:
        return "native" if native else "exact"
    return "grid"


@lru_cache(maxsize=64)
def _native_offsets(kernel: SpatialKernel, ndim: int) -> tuple[bytes, bytes]:
    """The half ball's offsets embedded in 3-D (see :func:`_native_shape`), as C buffers."""
    import numpy as np

    def embed(delta: tuple[int, ...]) -> tuple[int, int, int]:
        if ndim == 3:
            return delta  # type: ignore[return-value]
        if ndim == 2:
            return (delta[0], 0, delta[1])
        return (0, 0, delta[0])

    offsets = np.array([embed(d) for d in kernel.offsets[1:]], dtype=np.int32).reshape(-1, 3)
    weights = np.exp(np.array(kernel.log_weights[1:], dtype=np.float64)).astype(np.float32)
    return offsets.tobytes(), weights.tobytes()


def _native_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Lay 1-D and 2-D volumes out as 3-D with the same memory order.

    2-D (H, W) becomes (H, 1, W) so that threads can split the rows; offsets (dy, dx) become
    (dy, 0, dx), which keeps them lexicographically positive.
    """
    if len(shape) == 3:
        return tuple(shape)  # type: ignore[return-value]
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    return (1, 1, shape[0])


class _BufferPool:
    """Large CPU buffers handed out as tensors and taken back when the tensor's memory dies.

    A fresh multi-megabyte allocation is mapped from the kernel and faults in page by page
    (~1 µs per 4 kB page here); at 64³ that was as long as the whole compiled loss. The loss'
    few large tensors (A, d and the gradient) are drawn from here instead. Ownership is exact:
    each tensor is made with ``torch.from_numpy`` on a fresh array view of a pooled block, and
    the block returns to the pool only when that view is freed, i.e. when the last tensor using
    the memory is gone. At most ``max_bytes`` of free blocks are kept (:meth:`clear` drops them).
    """

    def __init__(self, max_bytes: int = 256 * 2**20, min_bytes: int = 2**18) -> None:
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self._free: dict[int, list] = {}
        self._held = 0
        self._lock = threading.Lock()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        import numpy as np

        np_dtype = np.dtype({torch.float32: "float32", torch.float64: "float64"}[dtype])
        nbytes = math.prod(shape) * np_dtype.itemsize
        if nbytes < self.min_bytes:
            return torch.empty(tuple(shape), dtype=dtype)
        with self._lock:
            blocks = self._free.get(nbytes)
            block = blocks.pop() if blocks else None
            if block is not None:
                self._held -= nbytes
        if block is None:
            block = np.empty(nbytes, dtype=np.uint8)
        view = block.view(np_dtype).reshape(tuple(shape))
        weakref.finalize(view, self._give_back, block)
        return torch.from_numpy(view)

    def _give_back(self, block) -> None:
        with self._lock:
            if self._held + block.nbytes <= self.max_bytes:
                self._free.setdefault(block.nbytes, []).append(block)
                self._held += block.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._held = 0


_POOL = _BufferPool()


def native_terms(
    probs: Tensor, image: Tensor, intensity_sigma: float, kernel: SpatialKernel
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A, d, N, D) of every sample by the compiled loop; see :func:`loop_terms`.

    Where the classes sum to one, A holds only the first K-1 classes (A_K = d - Σ A_k, which
    :func:`native_gradient` knows): the last channel is never filtered nor stored.
    """
    if NATIVE is None:
        raise RuntimeError("the compiled soft N-cut loop (cellcut.losses._affinity) is not built")
    n, k = probs.shape[:2]
    shape = tuple(probs.shape[2:])
    p = probs.detach().contiguous()
    x = image.detach().contiguous()
    a = _POOL.empty(p.shape, torch.float32)  # an unwritten last channel is never touched
    d = _POOL.empty(x.shape, torch.float32)
    sums = torch.empty(n, 2, k, dtype=torch.float64)
    offsets, weights = _native_offsets(kernel, len(shape))
    tol = 16 * k * torch.finfo(torch.float32).eps
    threads = torch.get_num_threads()
    complete = [
        NATIVE.ncut_terms(
            x[b].numpy(),
            p[b].numpy(),
            a[b].numpy(),
            d[b].numpy(),
            sums[b].numpy(),
            _native_shape(shape),
            offsets,
            weights,
            1.0 / intensity_sigma,
            threads,
            tol,
        )
        for b in range(n)
    ]
    if all(complete):
        a = a[:, : k - 1]
    else:  # mixed batch (rare): write the last class where it was left out
        for b in range(n):
            if complete[b]:
                torch.sub(d[b, 0], a[b, : k - 1].sum(0), out=a[b, k - 1])
    return a, d, sums[:, 0], sums[:, 1]


def native_gradient(a: Tensor, d: Tensor, coef_a: Tensor, coef_d: Tensor) -> Tensor:
    """coef_a[:, k] · A_k + coef_d[:, k] · d by the compiled code (A as from native_terms)."""
    n, k = coef_a.shape
    grad = _POOL.empty((n, k, *d.shape[2:]), torch.float32)
    threads = torch.get_num_threads()
    for b in range(n):
        NATIVE.ncut_grad(
            a[b].numpy(),
            d[b].numpy(),
            coef_a[b].contiguous().numpy(),
            coef_d[b].contiguous().numpy(),
            grad[b].numpy(),
            threads,
        )
    return grad


def loop_terms(probs: Tensor, image: Tensor, apply_w) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A_k = W p_k, d = W 1, N_k = <p_k, A_k> and D_k = <p_k, d> through ``apply_w``.

    W p_K = d - Σ_{k<K} W p_k (one channel less to filter) only where the classes sum to one
    to rounding error.
    """
    k = probs.shape[1]
    lo, hi = torch.aminmax(probs.sum(1))
    tol = 16 * k * torch.finfo(probs.dtype).eps
    sums_to_one = max(abs(float(lo) - 1.0), abs(float(hi) - 1.0)) <= tol
    wq, d = apply_w(probs[:, : k - 1] if sums_to_one else probs, image)
    a = torch.cat([wq, d - wq.sum(1, keepdim=True)], 1) if sums_to_one else wq
    dims = tuple(range(2, probs.ndim))
    # products in the input's precision, sums in float64 (Σ d reaches 1e8)
    num = (probs * a).sum(dims, dtype=torch.float64)  # (N, K): N_k
    den = (probs * d).sum(dims, dtype=torch.float64)  # D_k
    return a, d, num, den


# --------------------------------------------------------------------------------------------
# Loss and gradient


class _SoftNCutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs: Tensor, image: Tensor, terms, native: bool, eps: float):  # type: ignore[override]
        a, d, num, den = terms(probs, image)
        den = den.clamp_min(eps)
        per_sample = 1.0 - (num / den).mean(1)
        ctx.save_for_backward(a, d, num, den)
        ctx.native = native
        return per_sample.to(probs.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        a, d, num, den = ctx.saved_tensors
        k = num.shape[1]
        g = grad_out.double().view(-1, 1) / k
        # ∂J/∂p_k = -(1/K) (2 A_k / D_k - N_k d / D_k²), scaled by the incoming gradient
        coef_a = -2.0 * g / den
        coef_d = g * num / den**2
        if ctx.native:
            return native_gradient(a, d, coef_a, coef_d), None, None, None, None
        view = (*num.shape, *([1] * (a.ndim - 2)))
        grad = a * coef_a.to(a.dtype).view(view)  # one new tensor (page faults at this size)
        return grad.addcmul_(d, coef_d.to(a.dtype).view(view)), None, None, None, None


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
        ``"fast"`` (default: the cheapest available for each call), ``"exact"`` (the PyTorch
        offset loop), ``"native"`` (the same loop compiled; float32 on the CPU) or ``"grid"``.
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
        # a sum is finite iff every term is (barring overflow, re-checked voxel by voxel)
        if not torch.isfinite(image.sum()) and not torch.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        if not torch.isfinite(probs.detach().sum()) and not torch.isfinite(probs).all():
            raise ValueError("probs contains NaN or infinite values")
        shape = tuple(probs.shape[2:])
        kernel = self.kernel(len(shape))
        method = self.method
        # the C code takes 1/σ_I² as float32: below ~1e-18 it would overflow
        native = native_supports(probs) and self.intensity_sigma >= 1e-18
        if method == "native" and not native:
            raise ValueError(
                "method='native' needs the compiled loop (built: "
                f"{NATIVE is not None}), float32 CPU class maps with 1-3 spatial axes and "
                f"intensity_sigma >= 1e-18, got {probs.dtype} on {probs.device} with "
                f"{len(shape)} spatial axes and intensity_sigma {self.intensity_sigma:g}"
            )
        if method == "fast":
            method = choose_method(
                shape,
                lambda: float(image.amax() - image.amin()),
                self.intensity_sigma,
                kernel,
                native,
            )
        self.last_method = method
        sigma = self.intensity_sigma
        if method == "native":

            def terms(p: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                return native_terms(p, x, sigma, kernel)
        elif method == "exact":

            def terms(p: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                return loop_terms(p, x, lambda q, y: affinity_exact(q, y, sigma, kernel))
        else:

            def terms(p: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                return loop_terms(p, x, lambda q, y: affinity_grid(q, y, sigma, kernel))

        per_sample = _SoftNCutFunction.apply(probs, image, terms, method == "native", self.eps)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
