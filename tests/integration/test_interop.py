"""Models shared with other tools: ONNX and TorchScript exports equal PyTorch, a bioimage.io
package passes ``bioimageio test`` and segments like the original, napari-cellseg3d's WNet3D
(made by its own code in the reference's venv) loads and gives its outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from cellcut.cli import main
from cellcut.errors import CheckpointError
from cellcut.metrics import evaluate
from cellcut.model import Checkpoint, load_model, resolve_model_path
from cellcut.samples import sample_path
from cellcut.segmentation import segment

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.core")


@pytest.fixture(scope="module")
def sample_input():
    """A central 64³ crop of the bundled sample, normalized as the exports expect."""
    from cellcut.model.export import bioimageio_preprocess

    image = tifffile.imread(sample_path("mesospim"))
    start = [(s - 64) // 2 for s in image.shape]
    crop = image[tuple(slice(a, a + 64) for a in start)].astype(np.float32)
    return torch.from_numpy(bioimageio_preprocess(crop[None, None]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    argv = [
        "export", "default", "--bioimageio", str(folder / "m.zip"),
        "--onnx", str(folder / "m.onnx"), "--torchscript", str(folder / "m.ts"),
    ]  # fmt: skip
    assert main(argv) == 0
    return folder


def test_onnx_and_torchscript_equal_pytorch_on_the_sample(exported, sample_input):
    model = load_model(resolve_model_path("default")).model
    with torch.no_grad():
        reference = model.encode(sample_input).numpy()
        scripted = torch.jit.load(str(exported / "m.ts"))(sample_input).numpy()
    session = onnxruntime.InferenceSession(str(exported / "m.onnx"))
    onnx_out = session.run(None, {"raw": sample_input.numpy()})[0]
    assert np.abs(scripted - reference).max() < 1e-4
    assert np.abs(onnx_out - reference).max() < 1e-4
    other = torch.rand(2, 1, 24, 40, 32)  # another batch and size: the graphs are not fixed
    with torch.no_grad():
        assert (
            np.abs(session.run(None, {"raw": other.numpy()})[0] - model.encode(other).numpy()).max()
            < 1e-4
        )
        assert (
            torch.jit.load(str(exported / "m.ts"))(other) - model.encode(other)
        ).abs().max() < 1e-4


def test_bioimageio_package_passes_bioimageio_test(exported):
    from bioimageio.core import test_model

    summary = test_model(str(exported / "m.zip"))
    assert summary.status == "passed", summary.display() if hasattr(summary, "display") else summary
    with zipfile.ZipFile(exported / "m.zip") as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    steps = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert [s for s in steps if s != "ensure_dtype"] == ["scale_range", "clip"]
    assert rdf["config"]["cellcut"]["foreground_classes"] == [1]


def test_bioimageio_package_segments_the_sample_like_the_model(exported):
    original = segment(sample_path("mesospim"), None)
    packaged = segment(sample_path("mesospim"), None, model=exported / "m.zip")
    assert packaged.n_cells == original.n_cells > 0
    assert np.array_equal(packaged.labels, original.labels)


def _repackaged(exported, tmp_path, name, edit):
    """The exported package as another tool would write it: no config.cellcut, no state
    dict; ``edit`` changes its rdf further."""
    with zipfile.ZipFile(exported / "m.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    rdf.pop("config")
    rdf["weights"].pop("pytorch_state_dict")
    rdf["weights"]["torchscript"].pop("parent", None)
    rdf["weights"]["onnx"].pop("parent", None)
    edit(rdf)
    files["rdf.yaml"] = yaml.safe_dump(rdf).encode()
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return path


def test_a_package_of_another_tool_with_the_same_contract_segments(exported, tmp_path):
    other = _repackaged(exported, tmp_path, "other.zip", lambda rdf: None)
    loaded = load_model(other)
    assert loaded.foreground_classes == [] and loaded.percentiles == (1.0, 99.9)
    original = segment(sample_path("mesospim"), None)
    result = segment(sample_path("mesospim"), None, model=other)
    # the same network through TorchScript (plain convolutions instead of oneDNN's): measured
    # 7e-4 at most on the sample
    assert np.abs(result.probability - original.probability).max() < 2e-3
    scores = evaluate(original.labels, result.labels, thresholds=[0.5])
    assert result.n_cells == original.n_cells and scores.f1_50 > 0.99 and scores.dice > 0.999
    with pytest.raises(CheckpointError, match="cannot be rebuilt for training"):
        Checkpoint.load(other)


def test_a_package_of_another_contract_is_refused_in_one_line(exported, tmp_path, capsys):
    def standardize(rdf):
        rdf["inputs"][0]["preprocessing"] = [
            {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["z", "y", "x"]}}
        ]

    other = _repackaged(exported, tmp_path, "zmuv.zip", standardize)
    tifffile.imwrite(tmp_path / "img.tif", tifffile.imread(sample_path("mesospim")))
    code = main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "s.tif"),
                 "--model", str(other)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "its preprocessing is ['zero_mean_unit_variance']" in err
    assert not (tmp_path / "s.tif").exists()
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="not a readable ONNX file"):
        Checkpoint.load(tmp_path / "x.onnx")


# --- napari-cellseg3d -----------------------------------------------------------------------

ANCHOR_SCRIPT = """
import sys
from pathlib import Path
import numpy as np, torch
import anchor_import as a
out = Path(sys.argv[1])
torch.manual_seed(0)
wnet = a.WNet(in_channels=1, out_channels=1, num_classes=3).eval()
for m in wnet.modules():  # norms that differ from each other, as after training
    if isinstance(m, torch.nn.GroupNorm):
        torch.nn.init.uniform_(m.weight, 0.5, 1.5)
        torch.nn.init.uniform_(m.bias, -0.2, 0.2)
torch.save(wnet.state_dict(), out / "wnet.pth")
encoder = a.WNet_encoder(in_channels=1, out_channels=3).eval()
encoder.load_state_dict({k: v for k, v in wnet.state_dict().items() if k.startswith("encoder.")})
torch.save(encoder.state_dict(), out / "encoder_only.pth")
x = torch.rand(1, 1, 32, 40, 48) * 100
with torch.no_grad():
    np.save(out / "input.npy", x.numpy())
    np.save(out / "encoder.npy", wnet.forward_encoder(x).numpy())
    np.save(out / "decoder.npy", wnet.forward_decoder(wnet.forward_encoder(x)).numpy())
try:
    import onnx  # noqa: F401
    torch.onnx.export(encoder, (x,), str(out / "wnet.onnx"), dynamo=False, opset_version=17)
except ImportError:
    pass
"""


def anchor_python() -> Path | None:
    venv = (
        os.environ.get("ANCHOR_VENV")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "cellcut"
        / "cellseg3d-anchor-venv"
    )
    python = Path(venv) / "bin" / "python"
    return python if python.exists() else None


@pytest.fixture(scope="module")
def cellseg3d(tmp_path_factory):
    python = anchor_python()
    anchor = Path(__file__).resolve().parents[3] / "shared" / "anchor"
    if python is None or not (anchor / "anchor_import.py").exists():
        pytest.skip("the reference's venv is absent (build it with ../shared/anchor/setup.sh)")
    folder = tmp_path_factory.mktemp("cellseg3d")
    proc = subprocess.run(
        [str(python), "-c", ANCHOR_SCRIPT, str(folder)],
        env={**os.environ, "PYTHONPATH": str(anchor)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def test_cellseg3d_state_dict_gives_its_outputs(cellseg3d):
    x = torch.from_numpy(np.load(cellseg3d / "input.npy"))
    ckpt = Checkpoint.load(cellseg3d / "wnet.pth")
    assert ckpt.architecture["block"] == "cellseg3d" and ckpt.architecture["n_classes"] == 3
    loaded = load_model(cellseg3d / "wnet.pth")
    assert loaded.normalization == "remap" and loaded.input_scale == 1.0
    assert loaded.foreground_classes == []  # decided on each image
    with torch.no_grad():
        out = loaded.model(x / loaded.input_scale)
    assert np.abs(out.probs.numpy() - np.load(cellseg3d / "encoder.npy")).max() < 1e-5
    assert np.abs(out.reconstruction.numpy() - np.load(cellseg3d / "decoder.npy")).max() < 1e-3
    only = load_model(cellseg3d / "encoder_only.pth")
    with torch.no_grad():
        enc = only.model.encode(x)
    assert np.abs(enc.numpy() - np.load(cellseg3d / "encoder.npy")).max() < 1e-5


def test_cellseg3d_onnx_loads(cellseg3d):
    if not (cellseg3d / "wnet.onnx").exists():
        pytest.skip("the reference's venv has no onnx package to export with")
    x = torch.from_numpy(np.load(cellseg3d / "input.npy"))
    loaded = load_model(cellseg3d / "wnet.onnx")
    with torch.no_grad():
        enc = loaded.model.encode(x)
    assert np.abs(enc.numpy() - np.load(cellseg3d / "encoder.npy")).max() < 1e-5


def test_cellseg3d_model_segments_and_fine_tunes(cellseg3d, tmp_path):
    from cellcut.synthetic import make_nuclei_volume
    from cellcut.training import train

    vol = make_nuclei_volume((32, 48, 48), seed=3, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(tmp_path / "img.tif", vol.image)
    result = segment(tmp_path / "img.tif", None, model=cellseg3d / "wnet.pth")
    assert result.labels is not None and result.labels.shape == vol.image.shape
    run = train(
        [tmp_path / "img.tif"],
        tmp_path / "tuned",
        from_pretrained=cellseg3d / "wnet.pth",
        overrides=[
            "stop.steps=1",
            "data.patch_size=[16,32,32]",
            "log.plots=false",
            "log.progress=false",
            "data.val_patches=0",
        ],
    )
    assert run.model.arch.block == "cellseg3d" and run.model.n_classes == 3
    assert Checkpoint.load(run.checkpoint).config["model"]["preset"] == "cellseg3d"


def test_cli_lists_and_refuses_models(capsys, tmp_path):
    assert main(["export", "default"]) == 2
    assert "nothing to export" in capsys.readouterr().err
    (tmp_path / "w.pth").write_bytes(b"\x00" * 10)
    assert main(["segment", sys.executable, "--out", str(tmp_path / "o.tif"),
                 "--model", str(tmp_path / "w.pth")]) == 2  # fmt: skip


def test_model_folders_hold_other_tools_models(exported, tmp_path, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(exported / "m.zip", folder / "shared.zip")
    monkeypatch.setenv("CELLCUT_MODELS", str(folder))
    assert resolve_model_path("shared") == folder / "shared.zip"
    assert main(["models"]) == 0
    assert "shared: W-Net from bioimage.io" in capsys.readouterr().out


def test_a_refined_model_exports_and_comes_back(tmp_path):
    """The supervised second stage: its network in the package, its seeded instances after."""
    from bioimageio.core import test_model

    from cellcut.refinement import refine
    from cellcut.synthetic import make_nuclei_volume

    v = make_nuclei_volume((16, 40, 40), seed=4, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(tmp_path / "img.tif", v.image)
    tifffile.imwrite(tmp_path / "lab.tif", v.labels)
    run = refine([tmp_path / "img.tif"], tmp_path / "run", labels=[tmp_path / "lab.tif"],
                 steps=2, patch_size=(16, 24, 24), batch_size=1, base_width=2, depth=1,
                 progress=False, plots=False, minutes=None)  # fmt: skip
    package = tmp_path / "refined.zip"
    argv = [
        "export",
        str(run.run_dir),
        "--bioimageio",
        str(package),
        "--onnx",
        str(tmp_path / "r.onnx"),
    ]
    assert main(argv) == 0
    assert test_model(str(package)).status == "passed"
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    names = rdf["outputs"][0]["axes"][1]["channel_names"]
    assert names == ["background", "boundary", "interior"]
    loaded = load_model(package)
    assert loaded.kind == "refined" and loaded.foreground_classes == [1, 2]
    direct = segment(tmp_path / "img.tif", None, model=run.run_dir, voxel_size=v.voxel_size)
    packaged = segment(tmp_path / "img.tif", None, model=package, voxel_size=v.voxel_size)
    assert np.array_equal(direct.labels, packaged.labels)
    assert direct.summary["instances_chosen"] == packaged.summary["instances_chosen"]
