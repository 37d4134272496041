"""cellcut: fully unsupervised 3D cell segmentation with a W-Net and a soft normalized cut.

The core library imports no GUI toolkit. Modules, one concept each: ``io`` (volumes on disk),
``synthetic`` (generated volumes with ground truth), ``normalize``, ``model`` (the 3D W-Net),
``losses`` (soft N-cut, reconstruction), and the ``cellcut`` command line in ``cli``.
"""

from cellcut._version import __version__
from cellcut.errors import CellcutError

__all__ = ["CellcutError", "__version__"]
