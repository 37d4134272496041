"""napari plugin tests: skipped where napari is not installed; Qt offscreen unless a display
is set (scripts/test runs them under Xvfb when it can)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("napari", reason="napari not installed (pip install 'cellcut[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt not installed")
