"""The supervised second stage: a network trained on a W-Net's instances (``cellcut refine``).

``targets`` (instances -> background / boundary / interior, with the uncertain voxels
ignored), ``data`` (images prepared as segmentation prepares them, augmented patch pairs with
imaging artifacts), ``sources`` (images, and the W-Net's instances or labels given), ``loop``
(:func:`refine`, top to bottom). The result is a model like any other: ``cellcut segment
--model RUN`` predicts each nucleus' interior and boundary and grows the interiors into
instances (:func:`cellcut.postprocess.seeded_watershed`).

Stands on segmentation (the W-Net's instances) and training (run folders, data helpers).
"""

from cellcut.refinement.loop import METRIC_FIELDS, RefineRun, refine
from cellcut.refinement.targets import IGNORE, doubtful_objects, refine_targets

__all__ = ["IGNORE", "METRIC_FIELDS", "RefineRun", "doubtful_objects", "refine", "refine_targets"]
