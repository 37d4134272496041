"""cellcut: fully unsupervised 3D cell segmentation with a W-Net and a soft normalized cut.

The core library imports no GUI toolkit. One concept per module: ``io`` (volumes on disk),
``synthetic`` (generated volumes with ground truth), ``normalize``, ``model`` (the 3D W-Net),
``losses`` (soft N-cut, reconstruction), ``config``, ``data`` (patches), ``train`` (the loop),
``diagnostics`` (reading the loss curves), ``checkpoint``, ``infer`` (sliding windows),
``postprocess`` (instances), ``metrics`` (evaluation), ``figures``; the command line is ``cli``.

The Python API in one place::

    import cellcut
    run = cellcut.train(["brain.tif"], "runs/brain", overrides=["stop.minutes=5"])
"""

from cellcut._version import __version__
from cellcut.errors import CellcutError
from cellcut.train import train

__all__ = ["CellcutError", "__version__", "train"]
