"""The model: the 3D W-Net (``network``), its file format (``checkpoint``), where named models
come from (``registry``), which of its classes are the cells (``classes``) and the average of
several runs' weights (``soup``).

Knows nothing about training or segmentation; both stand on it.
"""

from cellcut.model.checkpoint import CHECKPOINT_NAME, Checkpoint, LoadedModel, load_model
from cellcut.model.network import (
    REFINED_CLASSES,
    Conv3d,
    RefinedNet3D,
    UNet3D,
    WNet3D,
    WNetArchitecture,
    WNetOutput,
    count_parameters,
)
from cellcut.model.registry import export_model, list_models, resolve_model_path
from cellcut.model.soup import average_checkpoints

__all__ = [
    "CHECKPOINT_NAME",
    "REFINED_CLASSES",
    "Checkpoint",
    "Conv3d",
    "LoadedModel",
    "RefinedNet3D",
    "UNet3D",
    "WNet3D",
    "WNetArchitecture",
    "WNetOutput",
    "average_checkpoints",
    "count_parameters",
    "export_model",
    "list_models",
    "load_model",
    "resolve_model_path",
]
