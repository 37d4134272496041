"""The compiled offset loop (method="native") against the PyTorch loop and the dense definition."""

from __future__ import annotations

import shutil
import sysconfig

import pytest
import torch
from tests.unit.test_ncut_loss import GOLDEN, dense_reference, t

from cellcut.losses import SoftNCutLoss
from cellcut.losses import ncut as ncut_module

needs_native = pytest.mark.skipif(
    ncut_module.NATIVE is None, reason="cellcut.losses._affinity was not built (no C compiler)"
)


def test_extension_is_built_where_a_compiler_exists():
    """A failed build falls back silently to PyTorch (10x slower): catch it here instead."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine: the PyTorch loop is used")
    assert ncut_module.NATIVE is not None, (
        f"{compiler} exists but cellcut.losses._affinity did not build: reinstall with "
        "`pip install -v -e .` and read the compiler's error"
    )


def values_and_grads(method, probs, image, **kwargs):
    p = probs.clone().requires_grad_()
    loss = SoftNCutLoss(method=method, reduction="none", **kwargs)
    value = loss(p, image)
    value.sum().backward()
    return value.detach(), p.grad


@needs_native
@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((9, 10, 11), {"intensity_sigma": 10.0, "spatial_sigma": 4.0, "radius": 2.0}),
        ((9, 10, 11), {"intensity_sigma": 10.0, "spatial_sigma": 4.0, "radius": 5.0}),
        ((13, 6, 17), {"intensity_sigma": 5.0, "spatial_sigma": 2.0}),  # radius 5 > y size
        ((3, 4, 40), {"intensity_sigma": 20.0, "spatial_sigma": 3.0, "radius": 6.0}),
        ((8, 12, 12), {"intensity_sigma": 8.0, "spatial_sigma": 3.0, "voxel_size": (2.5, 1, 1)}),
        ((1, 1, 30), {"intensity_sigma": 8.0, "spatial_sigma": 2.0}),
        ((20, 21), {"intensity_sigma": 8.0, "spatial_sigma": 2.0, "voxel_size": (1.0, 0.5)}),
        ((50,), {"intensity_sigma": 8.0, "spatial_sigma": 2.0}),
    ],
    ids=["r2", "r5", "ball-wider-than-y", "thin", "anisotropic", "one-row", "2d", "1d"],
)
@pytest.mark.parametrize("k", [2, 3])
def test_native_equals_pytorch_loop(shape, kwargs, k):
    g = torch.Generator().manual_seed(len(shape) * 10 + k)
    probs = torch.softmax(3 * torch.randn(2, k, *shape, generator=g), 1)
    image = torch.rand(2, 1, *shape, generator=g) * 100
    v_exact, g_exact = values_and_grads("exact", probs, image, **kwargs)
    v_native, g_native = values_and_grads("native", probs, image, **kwargs)
    torch.testing.assert_close(v_native, v_exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_native, g_exact, rtol=1e-4, atol=1e-6 * g_exact.abs().max())


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_native_gives_the_same_result_on_any_number_of_threads(threads):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 2, 23, 9, 10, generator=g), 1)
    image = torch.rand(1, 1, 23, 9, 10, generator=g) * 100
    loss = SoftNCutLoss(10.0, 3.0, method="native")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss(probs, image)
        torch.set_num_threads(threads)
        many = loss(probs, image)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(many, one, rtol=1e-6, atol=0)


@needs_native
def test_native_matches_dense_definition_with_unnormalised_probs():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(2, 3, 5, 6, 7, generator=g)  # classes do not sum to one: all K filtered
    image = torch.rand(2, 1, 5, 6, 7, generator=g) * 3
    loss = SoftNCutLoss(1.2, 2.0, radius=3.0, voxel_size=(1.5, 1, 0.7), method="native")
    value = SoftNCutLoss.forward(loss, probs, image)
    expected = dense_reference(probs.double(), image.double(), 1.2, 2.0, 3.0, (1.5, 1, 0.7))
    torch.testing.assert_close(value.double(), expected.mean(), rtol=1e-5, atol=0)


@needs_native
@pytest.mark.parametrize(
    "name,probs,image,sigma_i,sigma_x,radius,vs,expected", GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_native_hand_computed_values(name, probs, image, sigma_i, sigma_x, radius, vs, expected):
    loss = SoftNCutLoss(sigma_i, sigma_x, radius=radius, voxel_size=vs, method="native")
    value = loss(t(probs, torch.float32)[None], t(image, torch.float32)[None])
    assert value.item() == pytest.approx(expected, abs=1e-6)


@needs_native
def test_native_flushes_huge_intensity_gaps():
    probs = torch.softmax(torch.randn(1, 2, 8, 8, 8), 1).requires_grad_()
    image = torch.zeros(1, 1, 8, 8, 8)
    image[..., ::2] = 1e4
    value = SoftNCutLoss(1.0, 2.0, method="native")(probs, image)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(probs.grad).all()
    # no pair across the gap survives: each voxel pairs only with its own column parity
    expected = SoftNCutLoss(1.0, 2.0, method="exact")(probs.detach().double(), image.double())
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fast_uses_native_for_float32_and_the_pytorch_loop_for_float64():
    probs = torch.softmax(torch.randn(1, 2, 12, 12, 12), 1)
    image = torch.rand(1, 1, 12, 12, 12) * 100
    loss = SoftNCutLoss(1.0, 4.0, radius=2.0)
    loss(probs, image)
    assert loss.last_method == ("native" if ncut_module.NATIVE is not None else "exact")
    loss(probs.double(), image.double())
    assert loss.last_method == "exact"


def test_native_refuses_what_it_cannot_compute():
    loss = SoftNCutLoss(method="native")
    probs = torch.softmax(torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="method='native' needs"):
        loss(probs, torch.rand(1, 1, 4, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="method='native' needs"):
        loss(torch.softmax(torch.randn(1, 2, 2, 2, 2, 2), 1), torch.rand(1, 1, 2, 2, 2, 2))


@needs_native
def test_native_checks_its_buffers():
    import numpy as np

    x = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="probs: expected"):
        ncut_module.NATIVE.ncut_terms(
            x, np.zeros(20, np.float32), np.zeros(16, np.float32), x.copy(),
            np.zeros(4), (2, 2, 2), b"", b"", 1.0, 1, 1e-6,
        )  # fmt: skip
    offsets = np.array([[0, 0, -1]], np.int32).tobytes()
    with pytest.raises(ValueError, match="lexicographically positive"):
        ncut_module.NATIVE.ncut_terms(
            x, np.zeros(16, np.float32), np.zeros(16, np.float32), x.copy(),
            np.zeros(4), (2, 2, 2), offsets, np.ones(1, np.float32).tobytes(), 1.0, 1, 1e-6,
        )  # fmt: skip


def test_buffer_pool_reuses_memory_only_after_every_user_is_gone():
    import gc

    pool = ncut_module._BufferPool(max_bytes=2**22, min_bytes=1024)
    first = pool.empty((64, 64), torch.float32)
    address = first.data_ptr()
    second = pool.empty((64, 64), torch.float32)
    assert second.data_ptr() != address  # first is alive: never handed out twice
    view = first[10:20]
    del first
    gc.collect()
    third = pool.empty((64, 64), torch.float32)
    assert third.data_ptr() != address  # a view still uses the block
    del view
    gc.collect()
    assert pool.empty((64, 64), torch.float32).data_ptr() == address  # now it comes back
    small = pool.empty((4,), torch.float32)
    assert small.shape == (4,) and small.dtype == torch.float32  # below min_bytes: plain


def test_buffer_pool_keeps_at_most_max_bytes():
    import gc

    pool = ncut_module._BufferPool(max_bytes=3 * 4096, min_bytes=1024)
    tensors = [pool.empty((1024,), torch.float32) for _ in range(5)]
    del tensors
    gc.collect()
    assert pool._held == 3 * 4096
    pool.clear()
    assert pool._held == 0


@needs_native
def test_gradient_kept_by_the_caller_survives_later_calls():
    g = torch.Generator().manual_seed(9)
    image = torch.rand(1, 1, 40, 40, 40, generator=g) * 100
    loss = SoftNCutLoss(5.0, 2.0, radius=2.0, method="native")
    p1 = torch.softmax(torch.randn(1, 2, 40, 40, 40, generator=g), 1).requires_grad_()
    loss(p1, image).backward()
    kept = p1.grad
    expected = kept.clone()
    for _ in range(3):
        p2 = torch.softmax(torch.randn(1, 2, 40, 40, 40, generator=g), 1).requires_grad_()
        loss(p2, image).backward()
        assert p2.grad.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
    # and a graph kept for a second backward gives the same gradient twice
    p3 = p1.detach().clone().requires_grad_()
    value = loss(p3, image)
    value.backward(retain_graph=True)
    once = p3.grad.clone()
    p3.grad = None
    value.backward()
    torch.testing.assert_close(p3.grad, once, rtol=0, atol=0)
    torch.testing.assert_close(once, expected, rtol=1e-6, atol=0)


def test_without_the_compiled_loop_fast_falls_back_and_says_so(monkeypatch):
    monkeypatch.setattr(ncut_module, "NATIVE", None)
    monkeypatch.setattr(ncut_module, "_NATIVE_ERROR", "No module named '_affinity'")
    probs = torch.softmax(torch.randn(1, 2, 10, 10, 10), 1)
    image = torch.rand(1, 1, 10, 10, 10) * 100
    loss = SoftNCutLoss(1.0, 4.0, radius=2.0)
    value = loss(probs, image)
    assert loss.last_method == "exact" and 0 < value.item() < 1
    with pytest.raises(ValueError, match=r"method='native' needs the compiled loop \(built: False"):
        SoftNCutLoss(method="native")(probs, image)
    status = ncut_module.native_status()
    assert "PyTorch loop only" in status and "No module named" in status


@needs_native
def test_tiny_intensity_sigma_uses_the_pytorch_loop():
    probs = torch.softmax(torch.randn(1, 2, 6, 6, 6), 1)
    image = torch.rand(1, 1, 6, 6, 6)
    loss = SoftNCutLoss(1e-20, 2.0)
    value = loss(probs, image)
    assert loss.last_method == "exact" and torch.isfinite(value)
