"""Training the W-Net without labels.

``loop`` (:func:`train`, the loop and its steps), ``session`` (setting a run up: fresh,
fine-tuning or resumed), ``data`` (volumes and patches), ``validation`` (held-back patches and
labelled volumes), ``diagnostics`` (reading the loss curves), ``run`` (callbacks, the result,
the run folder's files). Training never imports segmentation.
"""

from cellcut.training.loop import Trainer, learning_rate, train
from cellcut.training.run import METRIC_FIELDS, TrainCallback, TrainingRun

__all__ = ["METRIC_FIELDS", "TrainCallback", "Trainer", "TrainingRun", "learning_rate", "train"]
