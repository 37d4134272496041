"""WNet3D: shapes, softmax, presets, the oneDNN convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellcut.model import Conv3d, WNet3D, WNetArchitecture, count_parameters


@pytest.mark.parametrize("shape", [(8, 8, 8), (7, 13, 9), (17, 5, 30)])
def test_output_shapes_for_odd_sizes(shape):
    model = WNet3D(base_width=4, depth=3).eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = model(x)
    assert out.probs.shape == (2, 2, *shape)
    assert out.reconstruction.shape == (2, 1, *shape)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(2, *shape))
    assert model.encode(x).shape == (2, 2, *shape)


def test_k_classes_and_softmax():
    model = WNet3D(n_classes=4, base_width=4, depth=2)
    probs = model.encode(torch.rand(1, 1, 12, 12, 12))
    assert probs.shape[1] == 4 and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 12, 12, 12))


def test_cellseg3d_preset_matches_reference_size():
    model = WNet3D("cellseg3d")
    assert count_parameters(model) == 50_531_843
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert dropouts and all(d.p == 0.65 for d in dropouts)
    assert norms and all(n.num_groups == 4 for n in norms)
    widths = [m.out_channels for m in model.encoder.upsample]
    assert widths == [256, 128, 64]


def test_compact_default_is_small():
    model = WNet3D()
    assert model.arch == WNetArchitecture()
    assert 300_000 < count_parameters(model) < 1_000_000


def test_from_architecture_round_trip():
    model = WNet3D(n_classes=3, base_width=4, depth=2)
    again = WNet3D.from_architecture(model.arch)
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 8, 8, 8)
    model.eval(), again.eval()
    torch.testing.assert_close(model.encode(x), again.encode(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_classes": 1}, "n_classes"),
        ({"depth": 0}, "depth"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "layer"}, "norm"),
        ({"activation": "tanh"}, "activation"),
        ({"widht": 3}, "unknown WNet3D argument"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WNet3D(**kwargs)


def test_bad_input_rank_and_channels():
    model = WNet3D(base_width=4, depth=1)
    with pytest.raises(ValueError, match=r"\(N, C, Z, Y, X\)"):
        model(torch.rand(1, 8, 8, 8))
    with pytest.raises(ValueError, match="input channel"):
        model(torch.rand(1, 2, 8, 8, 8))


@pytest.mark.parametrize("shape", [(1, 3, 16, 16, 16), (1, 16, 8, 8, 8), (2, 4, 6, 6, 6)])
@pytest.mark.parametrize("kernel", [1, 3])
def test_onednn_conv_equals_standard_conv(shape, kernel):
    torch.manual_seed(0)
    ours = Conv3d(shape[1], 5, kernel, padding=kernel // 2)
    ref = nn.Conv3d(shape[1], 5, kernel, padding=kernel // 2)
    ref.load_state_dict(ours.state_dict())
    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-3, rtol=1e-4)


def test_training_step_changes_weights_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = WNet3D(base_width=4, depth=2)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.rand(1, 1, 16, 16, 16)
        out = model(x)
        loss = ((out.reconstruction - x) ** 2).mean() + out.probs[:, 0].mean()
        loss.backward()
        opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b = run(), run()
    torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    fresh = torch.cat([p.detach().flatten() for p in WNet3D(base_width=4, depth=2).parameters()])
    assert not torch.equal(a, fresh)


def test_bfloat16_autocast_reaches_the_convolutions():
    """Under CPU autocast the oneDNN convolution steps aside, so that --precision bfloat16
    computes in bfloat16 (it once ran float32 there, silently)."""
    torch.manual_seed(0)
    conv = Conv3d(2, 4, 3, padding=1)
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.inference_mode():
        plain = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = conv(x)
    assert plain.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), plain, atol=0.05, rtol=0.05)
    assert not torch.equal(low.float(), plain)
