"""Segmentation with a trained W-Net, for volumes of any size.

``pipeline`` (:func:`segment`, the orchestrator), ``batch`` (:func:`segment_batch`, many
volumes into one folder), ``predict`` (block-wise foreground
probability), ``labelling`` (block-wise instances with the ownership rule of
:mod:`cellcut.blocks`), ``statistics`` (per-cell table and summary). Segmentation never imports
training; both stand on the model, losses, io and normalization.
"""

from cellcut.segmentation.batch import BatchResult, segment_batch
from cellcut.segmentation.labelling import Labelling, estimate_spot_sigma, label_blocks
from cellcut.segmentation.pipeline import SegmentResult, segment
from cellcut.segmentation.predict import predict_probability, resolve_model
from cellcut.segmentation.statistics import CellTable, cell_statistics, write_stats_csv

__all__ = [
    "BatchResult",
    "CellTable",
    "Labelling",
    "SegmentResult",
    "cell_statistics",
    "estimate_spot_sigma",
    "label_blocks",
    "predict_probability",
    "resolve_model",
    "segment",
    "segment_batch",
    "write_stats_csv",
]
