"""The 3D W-Net: an encoder U-Net giving K soft classes and a decoder U-Net reconstructing the
image from them (Xia & Kulis 2017, in 3D).

``WNet3D(**cfg)`` builds any variant from plain arguments. Two presets:

``compact`` (the default)
    Two U-Nets of base width 8 and depth 3 (widths 8-16-32-64), double 3×3×3 convolutions with
    GroupNorm and ReLU, no dropout: 0.70M parameters, chosen to train in about 0.35 s per 64³
    step on two CPU cores (see ``benchmarks/``).
``cellseg3d``
    The layout of napari-cellseg3d 0.2.4's WNet3D, layer for layer: widths 64-128-256-512,
    deeper blocks made of a 3×3×3 then a 1×1×1 convolution, ReLU → Dropout(0.65) →
    GroupNorm(4) after each pair, transposed-convolution upsampling, a 64-channel output block:
    ~50.5M parameters. Kept so that its checkpoints can be loaded and compared.

The model knows nothing about training. Inputs of any spatial size work: they are padded to a
multiple of 2^depth (by reflection) and the outputs cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("group", "batch", "instance", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu")


@dataclass(frozen=True)
class WNetArchitecture:
    """Everything needed to rebuild a :class:`WNet3D` (stored in checkpoints)."""

    in_channels: int = 1
    n_classes: int = 2
    out_channels: int = 1
    base_width: int = 8
    depth: int = 3
    dropout: float = 0.0
    norm: str = "group"
    norm_groups: int = 4
    activation: str = "relu"
    block: str = "double"  # "double" or "cellseg3d"
    max_width: int | None = None

    def widths(self) -> list[int]:
        widths = [self.base_width * 2**i for i in range(self.depth + 1)]
        if self.max_width is not None:
            widths = [min(w, self.max_width) for w in widths]
        return widths


PRESETS: dict[str, WNetArchitecture] = {
    "compact": WNetArchitecture(),
    "cellseg3d": WNetArchitecture(
        base_width=64,
        depth=3,
        dropout=0.65,
        norm="group",
        norm_groups=4,
        activation="relu",
        block="cellseg3d",
    ),
}


class _CPUConv3dFunction(torch.autograd.Function):
    """A stride-1 3D convolution that always takes oneDNN's (mkldnn) kernels on the CPU.

    PyTorch falls back to a slow reference kernel when batch × channels × depth × height
    ≤ 20480, which in a U-Net at batch 1 hits every level below the first (measured 10-20×
    slower forward and backward on two CPU cores; the training-step benchmark,
    ``benchmarks/bench_train_step.py``, shows the whole effect). Here the forward calls oneDNN
    directly, and the backward gives the same computation a second, all-zero sample, which
    turns oneDNN on and changes no gradient (a zero input contributes nothing to the weight
    gradient, a zero output gradient nothing to anything).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, [1] * 3, [1] * 3, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n = x.shape[0]
        pad_batch = n == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= 20480
        if pad_batch:
            fmt = (
                torch.channels_last_3d
                if x.is_contiguous(memory_format=torch.channels_last_3d)
                else torch.contiguous_format
            )
            x = torch.cat([x, torch.zeros_like(x)]).contiguous(memory_format=fmt)
            grad = torch.cat([grad, torch.zeros_like(grad)]).contiguous(memory_format=fmt)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            [1] * 3,
            ctx.padding,
            [1] * 3,
            False,
            [0] * 3,
            1,
            [need_x, need_w, need_b and ctx.has_bias],
        )
        if gx is not None and pad_batch:
            gx = gx[:n]
        return gx, gw, gb, None


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that uses oneDNN kernels on the CPU for any batch size (same parameters,
    same results; other devices and dtypes, and autocast, take the standard path)."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.groups == 1
            and self.padding_mode == "zeros"
            and tuple(self.stride) == (1, 1, 1)
            and tuple(self.dilation) == (1, 1, 1)
            and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu")  # bfloat16 autocast: the standard path
        ):
            return _CPUConv3dFunction.apply(x, self.weight, self.bias, list(self.padding))
        return super().forward(x)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        g = groups
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


NORM_LAYERS = (nn.GroupNorm, nn.BatchNorm3d, nn.InstanceNorm3d)
"""The normalization layers :func:`_norm` builds (``norm="none"`` builds none)."""


def feature_weights(model: WNet3D) -> list[nn.Parameter]:
    """The classifier's (the U-Net from the image to the classes) weights that detect
    features: all of them except its normalization layers' scale and shift and its last 1x1
    layer. ``optimizer.trainable=norms`` keeps these fixed; the decoder is not among them."""
    classifier = model.classifier()
    norms = [m for m in classifier.modules() if isinstance(m, NORM_LAYERS)]
    kept = {id(p) for m in [*norms, classifier.head] for p in m.parameters()}
    return [p for p in classifier.parameters() if id(p) not in kept]


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}[kind]()


def _stage(arch: WNetArchitecture, c_in: int, c_out: int, pointwise: bool) -> nn.Sequential:
    """Two convolution units.

    ``double``: conv3 → norm → act (→ dropout), twice. ``cellseg3d``: [conv3 (→ conv1 where
    ``pointwise``)] → act → dropout → norm, twice, the reference's order.
    """
    layers: list[nn.Module] = []
    for i in range(2):
        a = c_in if i == 0 else c_out
        if arch.block == "cellseg3d":
            if pointwise:
                layers += [Conv3d(a, a, 3, padding=1), Conv3d(a, c_out, 1)]
            else:
                layers.append(Conv3d(a, c_out, 3, padding=1))
            layers += [_act(arch.activation), nn.Dropout(arch.dropout)]
            layers.append(_norm(arch.norm, c_out, arch.norm_groups))
        else:
            layers += [
                Conv3d(a, c_out, 3, padding=1, bias=arch.norm == "none"),
                _norm(arch.norm, c_out, arch.norm_groups),
                _act(arch.activation),
            ]
            if arch.dropout > 0:
                layers.append(nn.Dropout3d(arch.dropout))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """A 3D U-Net: ``depth`` poolings, skip connections, transposed-convolution upsampling."""

    def __init__(self, arch: WNetArchitecture, in_channels: int, out_channels: int) -> None:
        super().__init__()
        w = arch.widths()
        self.depth = arch.depth
        self.down = nn.ModuleList(
            [_stage(arch, in_channels, w[0], pointwise=False)]
            + [_stage(arch, w[i - 1], w[i], pointwise=True) for i in range(1, arch.depth + 1)]
        )
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose3d(w[i], w[i - 1], 2, stride=2) for i in range(arch.depth, 0, -1)]
        )
        self.up = nn.ModuleList(
            [
                _stage(arch, 2 * w[i - 1], w[i - 1], pointwise=i > 1)
                for i in range(arch.depth, 0, -1)
            ]
        )
        self.head = Conv3d(w[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        skips.pop()
        for upsample, stage in zip(self.upsample, self.up, strict=True):
            x = stage(torch.cat([skips.pop(), upsample(x)], dim=1))
        return self.head(x)


class WNetOutput(NamedTuple):
    """Soft classes (N, K, *S) summing to 1 over K, and the reconstruction (N, 1, *S)."""

    probs: Tensor
    reconstruction: Tensor


class _PaddedNet(nn.Module):
    """What both networks share: an architecture from a preset and overrides, inputs padded to a
    multiple of 2^depth (by reflection) and outputs cropped back, and a classifying U-Net
    (:meth:`classifier`) whose softmax is :meth:`encode`."""

    arch: WNetArchitecture

    @staticmethod
    def _architecture(
        preset: str, overrides: dict[str, Any], name: str, **fixed: Any
    ) -> WNetArchitecture:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        unknown = set(overrides) - set(asdict(PRESETS[preset]))
        if unknown:
            raise ValueError(f"unknown {name} argument(s): {sorted(unknown)}")
        arch = WNetArchitecture(**{**asdict(PRESETS[preset]), **overrides, **fixed})
        _validate(arch)
        return arch

    @classmethod
    def from_architecture(cls, arch: WNetArchitecture | dict) -> Any:
        fields = asdict(arch) if isinstance(arch, WNetArchitecture) else dict(arch)
        return cls("compact", **fields)

    @property
    def n_classes(self) -> int:
        return self.arch.n_classes

    def classifier(self) -> nn.Module:
        """The U-Net from the image to class scores."""
        raise NotImplementedError

    def encode_logits(self, x: Tensor) -> Tensor:
        """Class scores before the softmax, (N, K, *S)."""
        xp, pads = self._pad(x)
        return self._crop(self.classifier()(xp), pads)

    def encode(self, x: Tensor) -> Tensor:
        """Class probabilities (N, K, *S) of an image (N, 1, *S): what inference needs."""
        return torch.softmax(self.encode_logits(x), dim=1)

    def _pad(self, x: Tensor) -> tuple[Tensor, Sequence[int]]:
        if x.ndim != 5:
            raise ValueError(f"expected input of shape (N, C, Z, Y, X), got {tuple(x.shape)}")
        if x.shape[1] != self.arch.in_channels:
            raise ValueError(f"expected {self.arch.in_channels} input channel(s), got {x.shape[1]}")
        xp, pads = pad_to_multiple(x, 2**self.arch.depth)
        return xp.contiguous(memory_format=torch.channels_last_3d), pads

    @staticmethod
    def _crop(y: Tensor, pads: Sequence[int]) -> Tensor:
        return crop_padding(y, pads)


def pad_to_multiple(x: Tensor, m: int) -> tuple[Tensor, list[int]]:
    """``x`` (N, C, Z, Y, X) padded so each spatial size is a multiple of ``m`` (by reflection
    where the padding is shorter than the axis, else by replication), and the pads
    (``F.pad`` order) that :func:`crop_padding` undoes."""
    size = x.shape[2:]
    pads: list[int] = []
    for s in reversed(size):
        extra = (-s) % m
        pads += [extra // 2, extra - extra // 2]
    if any(pads):
        sizes = [s for s in reversed(size) for _ in range(2)]
        fits = all(p < s for p, s in zip(pads, sizes, strict=True))
        x = F.pad(x, pads, mode="reflect" if fits else "replicate")
    return x, pads


def crop_padding(y: Tensor, pads: Sequence[int]) -> Tensor:
    """An output of a padded input cropped back to the input's size."""
    if not any(pads):
        return y
    index = [slice(None), slice(None)]
    for axis in range(3):
        lo, hi = pads[2 * (2 - axis)], pads[2 * (2 - axis) + 1]
        index.append(slice(lo, y.shape[2 + axis] - hi))
    return y[tuple(index)]


class WNet3D(_PaddedNet):
    """Encoder U-Net (image → K soft classes) followed by a decoder U-Net (classes → image).

    Parameters
    ----------
    preset
        ``"compact"`` (default) or ``"cellseg3d"``; keyword arguments override its fields.
    **overrides
        Any field of :class:`WNetArchitecture`: ``n_classes`` (K ≥ 2), ``base_width``,
        ``depth``, ``dropout``, ``norm`` (``group``/``batch``/``instance``/``none``),
        ``norm_groups``, ``activation``, ``block``, ``max_width``.
    """

    def __init__(self, preset: str = "compact", **overrides: Any) -> None:
        super().__init__()
        self.arch = arch = self._architecture(preset, overrides, "WNet3D")
        self.encoder = UNet3D(arch, arch.in_channels, arch.n_classes)
        self.decoder = UNet3D(arch, arch.n_classes, arch.out_channels)
        # channels-last 3D: oneDNN's CPU convolutions ran 1.3x faster this way (measured once)
        self.to(memory_format=torch.channels_last_3d)

    def classifier(self) -> nn.Module:
        return self.encoder

    def forward(self, x: Tensor) -> WNetOutput:
        xp, pads = self._pad(x)
        probs = torch.softmax(self.encoder(xp), dim=1)
        recon = self.decoder(probs)
        return WNetOutput(self._crop(probs, pads), self._crop(recon, pads))


REFINED_CLASSES = ("background", "boundary", "interior")
"""The classes of :class:`RefinedNet3D`, in channel order."""


class RefinedNet3D(_PaddedNet):
    """The supervised second stage (``cellcut refine``): one U-Net from the image to three
    classes, :data:`REFINED_CLASSES`, learned from a W-Net's instances. The foreground is
    boundary + interior; the interior separates touching nuclei (seeds of a watershed).

    Same presets and arguments as :class:`WNet3D` (``n_classes`` is always 3).
    """

    def __init__(self, preset: str = "compact", **overrides: Any) -> None:
        super().__init__()
        fixed = {"n_classes": len(REFINED_CLASSES)}
        self.arch = arch = self._architecture(preset, overrides, "RefinedNet3D", **fixed)
        self.net = UNet3D(arch, arch.in_channels, arch.n_classes)
        self.to(memory_format=torch.channels_last_3d)

    def classifier(self) -> nn.Module:
        return self.net

    def forward(self, x: Tensor) -> Tensor:
        return self.encode_logits(x)


def _validate(arch: WNetArchitecture) -> None:
    if arch.n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {arch.n_classes}")
    if arch.depth < 1 or arch.base_width < 1:
        raise ValueError(f"depth and base_width must be >= 1, got {arch.depth}, {arch.base_width}")
    if not 0 <= arch.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {arch.dropout}")
    if arch.norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {arch.norm!r}")
    if arch.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {arch.activation!r}")
    if arch.block not in ("double", "cellseg3d"):
        raise ValueError(f"block must be 'double' or 'cellseg3d', got {arch.block!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


KINDS: dict[str, type[_PaddedNet]] = {"wnet": WNet3D, "refined": RefinedNet3D}
"""What a checkpoint's network is: a W-Net (``cellcut train``) or the supervised second stage
(``cellcut refine``); checkpoints written before refinement existed are W-Nets."""
