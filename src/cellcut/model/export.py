"""A cellcut model in the formats other tools read: TorchScript, ONNX, a bioimage.io package.

What is exported is the classifying U-Net and its softmax (:class:`ExportedEncoder`): an image
(N, 1, Z, Y, X), normalized to 0..1, in; class probabilities (N, K, Z, Y, X) out. Z, Y and X
must be multiples of 2^depth (8 for the shipped model): cellcut pads inside its own inference,
the exported graph does not. The network is rebuilt from its architecture with plain PyTorch
modules (cellcut's CPU convolution wrapper is an autograd function that tracing cannot see
through), so the files hold standard operators only.

The bioimage.io package (current spec, 0.5) carries the three weight formats, the
normalization as preprocessing (percentiles 1 and 99.9 to 0..1, clipped: what cellcut's
``percentile`` normalization does), test tensors computed by cellcut, a cover, documentation of
the post-processing, and a ``config.cellcut`` section from which cellcut rebuilds its model
exactly (:mod:`cellcut.model.foreign`).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellcut._version import __version__
from cellcut.errors import CheckpointError, OutputError
from cellcut.model.checkpoint import KINDS, Checkpoint, LoadedModel
from cellcut.model.network import WNetArchitecture
from cellcut.outputs import atomic_output, check_output

ONNX_OPSET = 17
PERCENTILES = (1.0, 99.9)
"""The normalization written as preprocessing (that of cellcut's ``percentile`` method)."""
CITATION = ("W-Net: A Deep Model for Fully Unsupervised Image Segmentation (Xia and Kulis, 2017)",
            "https://arxiv.org/abs/1711.08506")  # fmt: skip


def plain_modules(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose cellcut convolutions are plain ``nn.Conv3d`` (same
    parameters): what tracing and exporting can see through."""
    from cellcut.model.network import Conv3d

    plain = copy.deepcopy(module)
    for m in plain.modules():
        if isinstance(m, Conv3d):
            m.__class__ = nn.Conv3d
    return plain.to(memory_format=torch.contiguous_format).eval()


class ExportedEncoder(nn.Module):
    """The classifying U-Net of a cellcut model and its softmax, with plain modules.

    Built from a checkpoint's ``architecture`` and ``kind``; this is the class the bioimage.io
    package's ``pytorch_state_dict`` weights name.
    """

    def __init__(self, architecture: dict[str, Any], kind: str = "wnet") -> None:
        super().__init__()
        net = KINDS[kind].from_architecture(WNetArchitecture(**architecture))
        self.net = plain_modules(net.classifier())
        self.eval()  # consumers that rebuild it from the state dict may not call eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def exported_encoder(loaded: LoadedModel) -> ExportedEncoder:
    """The model's encoder with its trained weights, ready to trace."""
    from dataclasses import asdict

    enc = ExportedEncoder(asdict(loaded.model.arch), loaded.kind)
    enc.net.load_state_dict(loaded.model.classifier().state_dict())
    return enc.eval()


def example_input(loaded: LoadedModel, size: int = 64) -> torch.Tensor:
    m = 2**loaded.model.arch.depth
    s = max(m, size // m * m)
    return torch.rand(1, 1, s, s, s, generator=torch.Generator().manual_seed(0))


def export_torchscript(loaded: LoadedModel, path: str | os.PathLike) -> Path:
    """TorchScript (traced) of :func:`exported_encoder`."""
    enc = exported_encoder(loaded)
    with torch.no_grad():
        traced = torch.jit.trace(enc, example_input(loaded), check_trace=False)
    target = Path(path)
    with atomic_output(target) as tmp:
        traced.save(str(tmp))
    return target


def export_onnx(loaded: LoadedModel, path: str | os.PathLike) -> Path:
    """ONNX (opset :data:`ONNX_OPSET`, batch and spatial sizes dynamic) of
    :func:`exported_encoder`; needs the ``onnx`` package."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as e:
        raise OutputError(
            "cannot export ONNX",
            "the onnx package is not installed",
            "install it with: pip install 'cellcut[interop]'",
            file=path,
        ) from e
    enc = exported_encoder(loaded)
    dynamic = {0: "batch", 2: "z", 3: "y", 4: "x"}
    target = Path(path)
    with atomic_output(target) as tmp, torch.no_grad():
        torch.onnx.export(
            enc,
            (example_input(loaded),),
            str(tmp),
            dynamo=False,
            input_names=["raw"],
            output_names=["probabilities"],
            dynamic_axes={"raw": dynamic, "probabilities": dynamic},
            opset_version=ONNX_OPSET,
        )
    return target


def bioimageio_preprocess(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The package's preprocessing, as numpy: percentiles to 0..1 over the volume, clipped."""
    lo, hi = np.percentile(image, PERCENTILES)
    return np.clip((image - lo) / (hi - lo + eps), 0.0, 1.0).astype(np.float32)


def cellcut_config(ckpt: Checkpoint) -> dict[str, Any]:
    """What cellcut needs to rebuild the model exactly from the package's state dict."""
    return {
        "version": __version__,
        "kind": ckpt.kind,
        "architecture": dict(ckpt.architecture),
        "foreground_classes": list(ckpt.foreground_classes),
        "normalization": ckpt.config.get("data", {}).get("normalization", "percentile"),
        "input_scale": float(ckpt.input_scale),
        "intensity_sigma": ckpt.intensity_sigma,
    }


def export_bioimageio(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
    test_image: np.ndarray | None = None,
) -> Path:
    """Write a bioimage.io model package (``.zip``) of a cellcut model.

    Parameters
    ----------
    model
        A model name (``default``), run folder or checkpoint.
    out
        The ``.zip`` to write.
    name
        The package's name (default: from the model).
    test_image
        A (z, y, x) volume whose central crop becomes the test input (default: the bundled
        sample).
    """
    from cellcut.model.checkpoint import load_model
    from cellcut.model.registry import resolve_model_path

    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as e:
        raise OutputError(
            "cannot export to bioimage.io",
            "the bioimageio.spec package is not installed",
            "install it with: pip install 'cellcut[interop]'",
            file=out,
        ) from e
    path = resolve_model_path(model)
    ckpt = Checkpoint.load(path)
    loaded = load_model(path)
    normalization = cellcut_config(ckpt)["normalization"]
    if normalization not in ("percentile", "remap"):
        raise CheckpointError(
            "cannot export to bioimage.io",
            f"the model was trained with {normalization!r} normalization, which bioimage.io's "
            "preprocessing cannot express",
            "export a model trained with percentile normalization (the default)",
            file=path,
        )
    target = check_output(out, overwrite)
    if target.suffix.lower() != ".zip":
        raise OutputError(
            "cannot export to bioimage.io", "the package is a .zip file", "name it OUT.zip"
        )
    with tempfile.TemporaryDirectory(prefix="cellcut-bioimageio-") as folder:
        descr = _describe(loaded, ckpt, Path(folder), name or _name(model), test_image)
        from bioimageio.spec import save_bioimageio_package

        with atomic_output(target) as tmp:
            save_bioimageio_package(descr, output_path=tmp)
    return target


def _name(model: str | os.PathLike) -> str:
    stem = Path(os.fspath(model)).stem if os.sep in os.fspath(model) else os.fspath(model)
    text = "".join(c if c.isalnum() or c in "-_ " else "-" for c in f"cellcut {stem}")
    return text[:60] if len(text) >= 5 else "cellcut model"


def _test_tensors(loaded: LoadedModel, folder: Path, image: np.ndarray | None) -> tuple:
    """Test input (a central 64³ crop, raw values) and the output cellcut computes for it."""
    if image is None:
        import tifffile

        from cellcut.samples import sample_path

        image = tifffile.imread(sample_path("mesospim"))
    m = 2**loaded.model.arch.depth
    size = [min(64, s) // m * m for s in image.shape]
    if min(size) < m:
        raise CheckpointError("cannot export to bioimage.io", "the test image is too small")
    start = [(s - c) // 2 for s, c in zip(image.shape, size, strict=True)]
    crop = image[tuple(slice(a, a + c) for a, c in zip(start, size, strict=True))]
    raw = crop.astype(np.float32)[None, None]
    enc = exported_encoder(loaded)
    with torch.no_grad():
        out = enc(torch.from_numpy(bioimageio_preprocess(raw))).numpy()
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", out)
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", raw[0, 0])
    tifffile.imwrite(folder / "sample_output.tif", out[0])
    return raw, out


def _cover(raw: np.ndarray, out: np.ndarray, fg: list[int], path: Path) -> None:
    from cellcut.figures import _plt

    plt = _plt()
    z = raw.shape[2] // 2
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].imshow(raw[0, 0, z], cmap="gray")
    axes[0].set_title("input (middle plane)")
    axes[1].imshow(out[0, fg, z].sum(0), cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("cell probability")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _documentation(loaded: LoadedModel, ckpt: Checkpoint) -> str:
    fg = list(loaded.foreground_classes)
    refined = loaded.kind == "refined"
    post = (
        "Channels are background, boundary, interior. Foreground = boundary + interior; "
        "seeds = connected components of interior > 0.5, grown by a watershed within the "
        "foreground (cellcut's `seeded` instances)."
        if refined
        else f"The cell probability is the sum of channel(s) {fg}. cellcut makes instances "
        "from it by thresholding at 0.5 and a Voronoi-Otsu or distance watershed split "
        "(cellcut's `--instances auto`)."
    )
    return f"""# cellcut {"refined" if refined else "W-Net"} model

Exported by cellcut {__version__} from a model trained {"with" if refined else "without"} labels
({ckpt.step} steps). {
        "The supervised second stage (cellcut refine)."
        if refined
        else "The encoder of a 3D W-Net trained with a soft normalized-cut loss."
    }

## Input
One channel, axes (batch, channel, z, y, x), each spatial size a multiple of
{2**loaded.model.arch.depth}. Preprocessing: percentiles {PERCENTILES[0]} and
{PERCENTILES[1]} of the volume mapped to 0 and 1, clipped. cellcut computes the percentiles once
per volume and predicts in overlapping 64³ windows.

## Output
Class probabilities (softmax), {loaded.model.n_classes} channels. {post}

## Use with cellcut
`cellcut segment IMAGE --model THIS.zip --out labels.tif` rebuilds the model exactly from
this package (its `config.cellcut` section) and runs the whole pipeline.

## Validation
cellcut checks every export: `bioimageio test` on the package (each weight format reproduces
the test output, computed by cellcut on a crop of its bundled mesoSPIM sample), ONNX and
TorchScript against PyTorch (within 1e-4), and the package segmenting the sample to the same
labels as the model. What the model is worth on data is in cellcut's README (its regime suite
and the embryo benchmark); it was trained without labels, so check it on your images.

## Licence and citation
MIT. Cite cellcut (CITATION.cff in its repository) and {CITATION[0]}, {CITATION[1]}.
"""


def _describe(
    loaded: LoadedModel, ckpt: Checkpoint, folder: Path, name: str, image: np.ndarray | None
) -> Any:
    import bioimageio.spec.model.v0_5 as bio

    raw, out = _test_tensors(loaded, folder, image)
    fg = list(loaded.foreground_classes)
    _cover(raw, out, fg, folder / "cover.png")
    (folder / "README.md").write_text(_documentation(loaded, ckpt))
    enc = exported_encoder(loaded)
    torch.save(enc.state_dict(), folder / "weights.pt")
    export_torchscript(loaded, folder / "weights_torchscript.pt")
    export_onnx(loaded, folder / "weights.onnx")
    m = 2**loaded.model.arch.depth
    space = [
        # at least 2 voxels per axis at the bottom of the U-Net (instance norm needs them)
        bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=2 * m, step=m))
        for a in "zyx"
    ]
    inputs = bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        description="fluorescence volume, one channel",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("raw")]), *space],
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            bio.ScaleRangeDescr(
                kwargs=bio.ScaleRangeKwargs(
                    axes=[bio.AxisId(a) for a in "zyx"],
                    min_percentile=PERCENTILES[0],
                    max_percentile=PERCENTILES[1],
                )
            ),
            bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    channels = (
        ["background", "boundary", "interior"]
        if loaded.kind == "refined"
        else [f"class{k}{'_cells' if k in fg else ''}" for k in range(loaded.model.n_classes)]
    )
    outputs = bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description="class probabilities (softmax)",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in channels]),
            *[
                bio.SpaceOutputAxis(
                    id=bio.AxisId(a),
                    size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a)),
                )
                for a in "zyx"
            ],
        ],
        test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    version = torch.__version__.split("+")[0]
    state_dict = bio.PytorchStateDictWeightsDescr(
        source=folder / "weights.pt",
        architecture=bio.ArchitectureFromLibraryDescr(
            import_from="cellcut.model.export",
            callable=bio.Identifier("ExportedEncoder"),
            kwargs={"architecture": dict(ckpt.architecture), "kind": loaded.kind},
        ),
        pytorch_version=bio.Version(version),
    )
    weights = bio.WeightsDescr(
        pytorch_state_dict=state_dict,
        torchscript=bio.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=bio.Version(version),
            parent="pytorch_state_dict",
        ),
        onnx=bio.OnnxWeightsDescr(
            source=folder / "weights.onnx", opset_version=ONNX_OPSET, parent="pytorch_state_dict"
        ),
    )
    return bio.ModelDescr(
        name=name,
        description="Unsupervised 3D nucleus segmentation (cellcut): the class probabilities "
        "of a 3D W-Net encoder trained without labels, or of its supervised second stage.",
        authors=[bio.Author(name="the cellcut developers")],
        cite=[bio.CiteEntry(text=CITATION[0], url=bio.HttpUrl(CITATION[1]))],
        license=bio.LicenseId("MIT"),
        documentation=bio.FileDescr(source=folder / "README.md"),
        covers=[bio.FileDescr(source=folder / "cover.png")],
        tags=["3d", "fluorescence-light-microscopy", "nuclei", "segmentation", "unsupervised"],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config=bio.Config(**{"cellcut": json.loads(json.dumps(cellcut_config(ckpt)))}),
    )
