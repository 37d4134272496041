"""Sample data shipped with cellcut (see ATTRIBUTION.md in this folder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLES = {"mesospim": "mesospim_c5.tif"}


def sample_path(name: str = "mesospim") -> Path:
    """Path of a bundled sample volume.

    Parameters
    ----------
    name
        ``"mesospim"``: a 124 x 86 x 94 light-sheet crop of a cleared mouse brain.
    """
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    return Path(str(resources.files(__package__) / SAMPLES[name]))
