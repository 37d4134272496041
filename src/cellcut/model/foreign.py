"""Models made elsewhere, as cellcut checkpoints: napari-cellseg3d's WNet3D (a PyTorch state
dict or its ONNX file) and bioimage.io packages.

:meth:`cellcut.model.Checkpoint.load` comes here for any file that is not a cellcut
checkpoint, so ``--model``, ``--from-pretrained``, ``refine --from`` and ``cellcut models``
take them all.

- **napari-cellseg3d** (0.2.x): its ``WNet`` (encoder and decoder) or ``WNet_`` (encoder only)
  has the layout of cellcut's ``cellseg3d`` preset layer for layer; only the key names differ
  (:data:`CELLSEG3D_KEYS`). Its images are remapped to 0..100 (min..max) and fed as they are,
  so the checkpoint says ``remap`` normalization and input scale 1. Which class holds the cells
  is not in the file: it is decided on each image segmented, by brightness, as after training.
  A decoder missing from the file starts from random weights (fine-tuning trains it).
- **bioimage.io** packages exported by cellcut carry a ``config.cellcut`` section and the
  encoder's state dict: the model comes back exactly. Other packages are refused in one line
  with the reason.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellcut.errors import CheckpointError

CELLSEG3D_KEYS = (
    (r"^(encoder|decoder)\.in_b\.module\.", r"\1.down.0."),
    (r"^(encoder|decoder)\.conv1\.module\.", r"\1.down.1."),
    (r"^(encoder|decoder)\.conv2\.module\.", r"\1.down.2."),
    (r"^(encoder|decoder)\.bot\.module\.", r"\1.down.3."),
    (r"^(encoder|decoder)\.conv_trans2\.", r"\1.upsample.0."),
    (r"^(encoder|decoder)\.conv_trans3\.", r"\1.upsample.1."),
    (r"^(encoder|decoder)\.conv_trans_out\.", r"\1.upsample.2."),
    (r"^(encoder|decoder)\.deconv2\.module\.", r"\1.up.0."),
    (r"^(encoder|decoder)\.deconv3\.module\.", r"\1.up.1."),
    (r"^(encoder|decoder)\.out_b\.module\.8\.", r"\1.head."),
    (r"^(encoder|decoder)\.out_b\.module\.", r"\1.up.2."),
)
"""napari-cellseg3d's WNet3D key names → cellcut's ``cellseg3d`` preset (regex, replacement)."""
IMPORTED = "imported_from"
"""Key of a checkpoint's ``config`` naming where a converted model came from."""


def is_cellseg3d(state: Any) -> bool:
    """Whether ``state`` is a state dict of napari-cellseg3d's WNet3D."""
    return (
        isinstance(state, dict)
        and any(isinstance(k, str) and k.startswith("encoder.in_b.module.") for k in state)
        and all(isinstance(v, torch.Tensor) for v in state.values())
    )


def _rename(key: str) -> str:
    for pattern, replacement in CELLSEG3D_KEYS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def from_cellseg3d(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The fields of a cellcut checkpoint (:class:`~cellcut.model.Checkpoint`) for a
    napari-cellseg3d WNet3D state dict."""
    from dataclasses import asdict

    from cellcut.model.network import WNet3D

    try:
        n_classes = int(state["encoder.out_b.module.8.weight"].shape[0])
        in_channels = int(state["encoder.in_b.module.0.weight"].shape[1])
        decoder_head = state.get("decoder.out_b.module.8.weight")
        out_channels = int(decoder_head.shape[0]) if decoder_head is not None else in_channels
        model = WNet3D(
            "cellseg3d", n_classes=n_classes, in_channels=in_channels, out_channels=out_channels
        )
        renamed = {_rename(k): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(renamed, strict=False)
    except (KeyError, RuntimeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            "cannot load model",
            f"it looks like a napari-cellseg3d WNet3D but does not fit its layout ({str(e)[:120]})",
            "give a WNet3D state dict saved by napari-cellseg3d 0.2",
            file=source,
        ) from e
    if unexpected or any(not k.startswith("decoder.") for k in missing):
        raise CheckpointError(
            "cannot load model",
            "its weights do not match napari-cellseg3d's WNet3D "
            f"({len(unexpected)} unexpected, {len(missing)} missing)",
            "give a WNet3D state dict saved by napari-cellseg3d 0.2",
            file=source,
        )
    note = "decoder initialised at random (the file held the encoder only)" if missing else ""
    return dict(
        architecture=asdict(model.arch),
        model={k: v.detach().clone() for k, v in model.state_dict().items()},
        config={
            "data": {"normalization": "remap"},
            "model": {"preset": "cellseg3d", "n_classes": n_classes},
            IMPORTED: {"tool": "napari-cellseg3d", "file": source, "note": note},
        },
        kind="wnet",
        foreground_classes=[],
        input_scale=1.0,
    )


def from_onnx(path: Path) -> dict[str, Any]:
    """Checkpoint fields from an ONNX file of a WNet3D encoder: napari-cellseg3d's (parameter names
    kept by its exporter) or cellcut's own export."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise CheckpointError(
            "cannot load model",
            "reading ONNX models needs the onnx package",
            "install it with: pip install 'cellcut[interop]'",
            file=path,
        ) from e
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf raises its own types for a damaged file
        raise CheckpointError(
            "cannot load model", f"not a readable ONNX file ({str(e)[:120]})", file=path
        ) from e
    arrays = {i.name: np.array(numpy_helper.to_array(i)) for i in graph.initializer}
    weights = {k: torch.from_numpy(v) for k, v in arrays.items() if not k.startswith("onnx::")}
    if not any(k.startswith("encoder.") for k in weights):
        weights = {f"encoder.{k}": v for k, v in weights.items()}
    weights.update(_group_norms(graph, arrays))
    if is_cellseg3d(weights):
        return from_cellseg3d(weights, os.fspath(path))
    raise CheckpointError(
        "cannot load model",
        "this ONNX graph is not a WNet3D encoder whose weights cellcut can name (its "
        f"{len(weights)} initialisers do not follow napari-cellseg3d's layout)",
        "export the model from PyTorch with its parameter names, or use the tool that made it",
        file=path,
    )


CELLSEG3D_NORMS = [
    f"encoder.{block}.module.{i}"
    for block, first, second in (
        ("in_b", 3, 7), ("conv1", 4, 9), ("conv2", 4, 9), ("bot", 4, 9),
        ("deconv2", 4, 9), ("deconv3", 4, 9), ("out_b", 3, 7),
    )
    for i in (first, second)
]  # fmt: skip
"""The encoder's GroupNorms in the order its forward runs them."""


def _group_norms(graph: Any, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """GroupNorm weights and biases, which PyTorch's ONNX exporter leaves unnamed: each norm
    becomes a Mul by its weight and an Add of its bias, shaped (C, 1, 1, 1), held as
    initialisers or constants. The norm is named by the module path in the node's name
    (``/encoder/in_b/module/module.3/Mul``), else by the order the forward runs them."""
    from onnx import numpy_helper

    values = dict(arrays)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            values[node.output[0]] = np.array(numpy_helper.to_array(node.attribute[0].t))
        elif node.op_type == "Identity" and node.input[0] in values:  # a shared tensor
            values[node.output[0]] = values[node.input[0]]
    found: dict[str, dict[str, np.ndarray]] = {}
    order = iter(CELLSEG3D_NORMS)
    for node in graph.node:
        if node.op_type not in ("Mul", "Add"):
            continue
        for name in node.input:
            value = values.get(name)
            if not name.startswith("onnx::") or value is None or value.ndim != 4:
                continue
            path = re.search(r"/(encoder|decoder)/(\w+)/module/module\.(\d+)/", node.name)
            key = f"{path[1]}.{path[2]}.module.{path[3]}" if path else None
            if key is None:
                key = next(order, None) if node.op_type == "Mul" else list(found)[-1]
            if key is not None:
                part = "weight" if node.op_type == "Mul" else "bias"
                found.setdefault(key, {})[part] = value.reshape(-1).copy()
    return {
        f"{key}.{part}": torch.from_numpy(v)
        for key, parts in found.items()
        for part, v in parts.items()
    }


def from_bioimageio(path: Path) -> dict[str, Any]:
    """Checkpoint fields from a bioimage.io package (``.zip``, or its ``rdf.yaml``) exported by
    cellcut; other packages are refused, saying why."""
    import yaml

    try:
        if path.suffix.lower() == ".zip":
            rdf = yaml.safe_load(_zip_member(path, "rdf.yaml"))

            def read(name: str) -> bytes:  # only what is needed, not the test tensors
                return _zip_member(path, name)

        else:
            rdf = yaml.safe_load(path.read_text())

            def read(name: str) -> bytes:
                return (path.parent / name).read_bytes()

    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError) as e:
        raise CheckpointError(
            "cannot load model", f"not a readable bioimage.io package ({str(e)[:120]})", file=path
        ) from e
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise CheckpointError(
            "cannot load model", "the package describes no model", "give a model package", file=path
        )
    mine = (rdf.get("config") or {}).get("cellcut")
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not mine or not weights:
        raise CheckpointError(
            "cannot train from this model",
            "this bioimage.io package was not exported by cellcut (no config.cellcut section "
            "and pytorch_state_dict weights), so its network cannot be rebuilt for training",
            "segment with it (cellcut segment --model PACKAGE), or fine-tune a cellcut model",
            file=path,
        )
    import io

    try:
        state = torch.load(io.BytesIO(read(weights["source"])), weights_only=True)
        encoder = {k.removeprefix("net."): v for k, v in state.items()}
        return _rebuild(mine, encoder, os.fspath(path))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            "cannot load model", f"its weights cannot be read ({str(e)[:120]})", file=path
        ) from e


def _zip_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(name)


def _rebuild(mine: dict, encoder: dict, source: str) -> dict[str, Any]:
    from cellcut.model.network import KINDS, WNetArchitecture

    kind = mine.get("kind", "wnet")
    model = KINDS[kind].from_architecture(WNetArchitecture(**mine["architecture"]))
    model.classifier().load_state_dict(encoder)
    note = "decoder initialised at random (bioimage.io packages hold the encoder)"
    note = note if kind == "wnet" else ""
    return dict(
        architecture=dict(mine["architecture"]),
        model={k: v.detach().clone() for k, v in model.state_dict().items()},
        config={
            "data": {"normalization": mine.get("normalization", "percentile")},
            IMPORTED: {
                "tool": "bioimage.io",
                "file": source,
                "note": note if kind == "wnet" else "",
            },
        },
        kind=kind,
        foreground_classes=list(mine.get("foreground_classes", [])),
        input_scale=float(mine.get("input_scale", 100.0)),
        intensity_sigma=mine.get("intensity_sigma"),
    )


class ScriptedEncoder(torch.nn.Module):
    """A bioimage.io package's TorchScript network used as a W-Net encoder: the image in,
    class probabilities out. Inputs are padded (by reflection) to the package's size step and
    the output cropped back, as cellcut's own networks do."""

    def __init__(self, module: torch.nn.Module, step: int, n_classes: int) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.module = module
        self.step = int(step)
        self.arch = SimpleNamespace(in_channels=1, n_classes=int(n_classes), depth=0)

    @property
    def n_classes(self) -> int:
        return self.arch.n_classes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        from cellcut.model.network import crop_padding, pad_to_multiple

        xp, pads = pad_to_multiple(x, self.step)
        return crop_padding(self.module(xp), pads)


def _contract(rdf: dict) -> tuple[tuple[float, float], int, int, str]:
    """What a package made by another tool must be for cellcut to run it as a W-Net encoder:
    one single-channel (z, y, x) input scaled by percentiles, one output of K ≥ 2 class
    probabilities of the same size, TorchScript weights. Returns (percentiles, size step, K,
    weights file), or raises a CheckpointError saying what differs."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            "cannot use this bioimage.io package",
            f"{why}; cellcut runs packages whose network maps one percentile-scaled channel "
            "(z, y, x) to class probabilities",
            "run it in a bioimage.io consumer (bioimageio.core, deepImageJ, ilastik)",
        )

    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise refuse(f"it has {len(inputs)} inputs and {len(outputs)} outputs")
    axes = inputs[0].get("axes") or []
    kinds = [a.get("type") for a in axes]
    spatial = [a for a in axes if a.get("type") == "space"]
    if kinds[-3:] != ["space"] * 3 or [a.get("id") for a in spatial] != ["z", "y", "x"]:
        raise refuse(f"its input axes are {[a.get('id', a.get('type')) for a in axes]}")
    steps = {int(a["size"].get("step", 1)) for a in spatial if isinstance(a.get("size"), dict)} or {
        1
    }
    scaling = [p for p in inputs[0].get("preprocessing") or [] if p.get("id") != "ensure_dtype"]
    if not scaling or scaling[0].get("id") != "scale_range":
        raise refuse(f"its preprocessing is {[p.get('id') for p in scaling] or 'none'}")
    kwargs = scaling[0].get("kwargs") or {}
    percentiles = (float(kwargs.get("min_percentile", 0)), float(kwargs.get("max_percentile", 100)))
    channel = next((a for a in outputs[0].get("axes") or [] if a.get("type") == "channel"), None)
    n_classes = len((channel or {}).get("channel_names") or [])
    if n_classes < 2:
        raise refuse("its output has no channel axis of class probabilities")
    weights = (rdf.get("weights") or {}).get("torchscript")
    if not weights:
        raise refuse("it has no TorchScript weights")
    return percentiles, max(steps), n_classes, weights["source"]


def scripted_model(path: Path) -> tuple[ScriptedEncoder, tuple[float, float]] | None:
    """The network of a bioimage.io package made by another tool, when it keeps cellcut's
    contract (:func:`_contract`), and its percentiles; None for cellcut's own packages."""
    import io

    import yaml

    if path.suffix.lower() != ".zip":
        return None
    try:
        with zipfile.ZipFile(path) as z:
            rdf = yaml.safe_load(z.read("rdf.yaml"))
            if not isinstance(rdf, dict) or (rdf.get("config") or {}).get("cellcut"):
                return None
            percentiles, step, n_classes, source = _contract(rdf)
            module = torch.jit.load(io.BytesIO(z.read(source)), map_location="cpu")
    except CheckpointError as e:
        e.file = os.fspath(path)
        raise
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError, RuntimeError) as e:
        raise CheckpointError(
            "cannot load model", f"not a readable bioimage.io package ({str(e)[:120]})", file=path
        ) from e
    return ScriptedEncoder(module.eval(), step, n_classes), percentiles
