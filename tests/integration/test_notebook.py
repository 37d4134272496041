"""The training notebook runs top to bottom (a few steps) on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "train_wnet.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from cellcut.model.registry import model_dirs

    if not any((d / "default.pt").exists() for d in model_dirs()):
        pytest.skip("no default model shipped in this checkout")
    monkeypatch.setenv("CELLCUT_NOTEBOOK_STEPS", "4")
    monkeypatch.setenv("CELLCUT_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "cells;" in outputs
    assert (tmp_path / "labels.tif").exists() and (tmp_path / "overview.png").exists()
