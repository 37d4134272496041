"""Where trained models come from: the shipped default, CELLCUT_MODELS, or a path.

Named models are ``NAME.pt`` checkpoints with a ``NAME.sha256`` beside them (checked on every
load) and an optional model card ``NAME.md``.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from cellcut.errors import CheckpointError
from cellcut.model.checkpoint import Checkpoint
from cellcut.outputs import atomic_output

DEFAULT_NAME = "default"


def _package_models() -> Path:
    return Path(str(resources.files("cellcut") / "weights"))


FOREIGN_SUFFIXES = (".zip", ".pth", ".onnx")
"""Models of other tools a model folder may hold (bioimage.io packages, napari-cellseg3d
state dicts and ONNX files; :mod:`cellcut.model.foreign`)."""


def model_dirs() -> list[Path]:
    """Folders searched for named models: $CELLCUT_MODELS (os.pathsep-separated), the package."""
    dirs = [Path(p) for p in os.environ.get("CELLCUT_MODELS", "").split(os.pathsep) if p]
    return [*dirs, _package_models()]


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model name (e.g. ``default``) or a path -> the checkpoint file, verified.

    Named models are ``NAME.pt`` files with a ``NAME.sha256`` beside them; the checksum is
    checked on every load, so an altered or truncated file is refused.
    """
    text = os.fspath(name_or_path)
    p = Path(text)
    if p.exists():
        return p / "checkpoint.pt" if p.is_dir() else p
    if os.sep in text or text.lower().endswith((".pt", ".pth", ".onnx", ".zip", ".yaml")):
        raise CheckpointError(
            "cannot load model",
            "the file does not exist",
            "check the path, or use --model default",
            file=text,
        )
    for folder in model_dirs():
        candidate = folder / f"{text}.pt"
        if candidate.exists():
            _verify(candidate)
            return candidate
        for suffix in FOREIGN_SUFFIXES:  # other tools' models put in a model folder
            candidate = folder / f"{text}{suffix}"
            if candidate.exists():
                if candidate.with_suffix(".sha256").exists():
                    _verify(candidate)
                return candidate
    searched = ", ".join(str(d) for d in model_dirs())
    raise CheckpointError(
        "cannot load model",
        f"no model named '{text}' (searched {searched})",
        "reinstall cellcut to restore the shipped model, or give a path",
    )


def _verify(path: Path) -> None:
    expected_file = path.with_suffix(".sha256")
    if not expected_file.exists():
        raise CheckpointError(
            "cannot load model",
            "its checksum file is missing",
            "reinstall cellcut or restore the .sha256 file",
            file=path,
        )
    expected = expected_file.read_text().split()[0].strip()
    actual = sha256(path)
    if actual != expected:
        raise CheckpointError(
            "cannot load model",
            f"its checksum {actual[:12]}… differs from {expected[:12]}…: the "
            "file was altered or damaged",
            "reinstall cellcut or restore the file",
            file=path,
        )


def list_models() -> list[dict]:
    """Named models found in :func:`model_dirs`, with their cards (NAME.md) where present."""
    seen: set[str] = set()
    out = []
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        files = [p for s in (".pt", *FOREIGN_SUFFIXES) for p in sorted(folder.glob(f"*{s}"))]
        for path in files:
            name = path.stem
            if name in seen:
                continue
            seen.add(name)
            card = path.with_suffix(".md")
            kind, origin = _kind(path)
            out.append(
                {
                    "name": name,
                    "kind": kind,
                    "origin": origin,
                    "path": str(path),
                    "size_mb": path.stat().st_size / 2**20,
                    "sha256": sha256(path),
                    "card": card.read_text() if card.exists() else "",
                }
            )
    return out


def _kind(path: Path) -> tuple[str, str]:
    """The network a model file holds (:data:`cellcut.model.checkpoint.KINDS`, or
    "unreadable") and the tool it came from ("cellcut", "napari-cellseg3d", "bioimage.io")."""
    from cellcut.model.foreign import scripted_model

    try:
        if scripted_model(path) is not None:
            return "wnet", "bioimage.io (TorchScript, another tool's)"
        ckpt = Checkpoint.load(path)
    except CheckpointError:
        return "unreadable", ""
    return ckpt.kind, (ckpt.config.get("imported_from") or {}).get("tool", "cellcut")


def export_model(checkpoint: str | os.PathLike, dest: str | os.PathLike, card: str = "") -> Path:
    """Write a slim, named copy of a trained model: weights and what inference needs.

    Drops the optimizer and random states (a shipped model is for inference and fine-tuning),
    writes ``NAME.pt``, its ``NAME.sha256`` and, if given, the model card ``NAME.md``.
    """
    target = Path(dest)
    Checkpoint.load(checkpoint).for_inference().save(target)
    texts = {".sha256": f"{sha256(target)}  {target.name}\n", ".md": card}
    for suffix, text in texts.items():
        if text:
            with atomic_output(target.with_suffix(suffix)) as tmp:
                tmp.write_text(text)
    return target
