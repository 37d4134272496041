"""napari plugin tests: skipped where napari is not installed; viewer tests need a display
with OpenGL (scripts/test runs them under Xvfb, installing it when it can)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("napari", reason="napari not installed (pip install 'cellcut[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt not installed")


@pytest.fixture
def make_napari_viewer(make_napari_viewer):
    if os.environ.get("CELLCUT_NO_DISPLAY"):
        pytest.skip("no display with OpenGL (install xvfb, or run ./scripts/test as root)")
    return make_napari_viewer
