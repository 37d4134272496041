"""cellcut: fully unsupervised 3D cell segmentation with a W-Net and a soft normalized cut.

The core library imports no GUI toolkit. Its layers, each standing only on those below it:

- ``errors``, ``_version``, ``samples``, ``artifacts`` (imaging artifacts that are not cells);
- ``io`` (volumes on disk), ``runtime`` (device, memory), ``normalize``, ``synthetic``
  (generated volumes with ground truth), ``metrics``, ``postprocess`` (instances), ``infer``
  (sliding windows), ``blocks`` (block geometry and ownership);
- ``crf`` (the dense CRF on a probability);
- ``config`` (every setting and default: training and segmentation), ``figures``;
- ``model`` (the 3D W-Net, its checkpoint format, named models, cell classes), ``losses``;
- ``scoring`` (probabilities -> instances -> scores);
- ``training`` and ``segmentation``, which never import each other;
- ``refinement`` (the supervised second stage, standing on both);
- ``cli`` and ``napari_plugin``, thin layers over this API.

The Python API in one place::

    import cellcut
    run = cellcut.train(["brain.tif"], "runs/brain", overrides=["stop.minutes=5"])
    result = cellcut.segment("brain.tif", "labels.tif", model=run.checkpoint)
    refined = cellcut.refine(["brain.tif"], "runs/refined", model=run.checkpoint, minutes=5)
    result = cellcut.segment("brain.tif", "labels.tif", model=refined.run_dir)
"""

from cellcut._version import __version__
from cellcut.errors import CellcutError
from cellcut.refinement import refine
from cellcut.segmentation import segment, segment_batch
from cellcut.training import train

__all__ = ["CellcutError", "__version__", "refine", "segment", "segment_batch", "train"]
