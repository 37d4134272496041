"""ReconstructionLoss and WNetLoss."""

from __future__ import annotations

import math

import pytest
import torch

from cellcut.losses import ReconstructionLoss, SoftNCutLoss, WNetLoss


def test_mse_hand_computed():
    out = torch.tensor([[[1.0, 2.0, 3.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0]]])
    assert ReconstructionLoss("mse")(out, target).item() == pytest.approx((0 + 4 + 9) / 3)


def test_bce_hand_computed_on_rescaled_target():
    out = torch.tensor([[[0.0, 0.0]]])  # sigmoid 0.5
    target = torch.tensor([[[10.0, 30.0]]])  # rescaled to [0, 1]
    assert ReconstructionLoss("bce")(out, target).item() == pytest.approx(math.log(2))
    out = torch.tensor([[[-20.0, 20.0]]])
    assert ReconstructionLoss("bce")(out, target).item() < 1e-6


def test_reconstruction_per_sample_and_errors():
    out = torch.zeros(2, 1, 3, 3, 3)
    target = torch.stack([torch.zeros(1, 3, 3, 3), torch.ones(1, 3, 3, 3)])
    per = ReconstructionLoss("mse", reduction="none")(out, target)
    torch.testing.assert_close(per, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="does not match"):
        ReconstructionLoss()(out, target[:, :, :2])
    with pytest.raises(ValueError, match="kind"):
        ReconstructionLoss("l1")


def test_wnet_loss_is_weighted_sum_and_one_backward_reaches_both():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 6, 6, 6, generator=g, requires_grad=True)
    recon = torch.randn(1, 1, 6, 6, 6, generator=g, requires_grad=True)
    image = torch.rand(1, 1, 6, 6, 6, generator=g) * 10
    ncut = SoftNCutLoss(2.0, 1.5)
    rec = ReconstructionLoss("mse")
    loss = WNetLoss(ncut, rec, ncut_weight=0.3, rec_weight=2.0)
    probs = torch.softmax(logits, 1)
    out = loss(probs, recon, image)
    expected = 0.3 * ncut(probs, image) + 2.0 * rec(recon, image)
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.ncut, ncut(probs, image).detach())
    assert not out.ncut.requires_grad and not out.reconstruction.requires_grad
    out.total.backward()
    assert logits.grad.abs().sum() > 0 and recon.grad.abs().sum() > 0


def test_wnet_loss_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        WNetLoss(ncut_weight=0, rec_weight=0)
    with pytest.raises(ValueError, match="weights"):
        WNetLoss(ncut_weight=-1)
