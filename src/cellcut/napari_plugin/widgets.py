"""The Train, Refine, Segment and Evaluate widgets (public napari, magicgui and qtpy APIs
only)."""

from __future__ import annotations

import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui import widgets as mw
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from cellcut.config import (
    INSTANCE_CHOICES,
    MANUAL_OUTLINE_SIGMA,
    MANUAL_SPOT_SIGMA,
    REFINE_DEFAULTS,
    SEGMENT_DEFAULTS,
    DataConfig,
    LossConfig,
    SegmentOptions,
    TrainConfig,
)
from cellcut.errors import CellcutError
from cellcut.io import Volume
from cellcut.training import TrainCallback

TRAIN_DEFAULTS = TrainConfig()


def _auto_or_number(
    what: str, label: str, default: Any, manual: float, low: float, high: float
) -> tuple[Any, Any]:
    """A setting that is "auto" or a number: a checkbox "WHAT from the nuclei's size" and the
    spin box it disables (showing ``manual`` while the default is "auto")."""
    auto = default == "auto"
    box = mw.CheckBox(label=f"{what} from the nuclei's size", value=auto)
    spin = mw.FloatSpinBox(label=label, value=manual if auto else default, min=low, max=high)
    spin.enabled = not auto
    box.changed.connect(lambda v: setattr(spin, "enabled", not v))
    return box, spin


def _choices(model: type, name: str) -> list[str]:
    """The allowed values of a Literal setting, from the config that defines it."""
    from typing import get_args

    return list(get_args(model.model_fields[name].annotation))


def _layers(viewer, kind: str) -> list:
    import napari.layers

    cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[kind]
    return [layer for layer in viewer.layers if isinstance(layer, cls)]


def check_layer(layer, what: str = "image") -> str | None:
    """Why a layer cannot be used (None if it can)."""
    if layer is None:
        return f"no {what} layer selected: open or choose a 3D {what} first"
    if np.asarray(layer.data.shape).size != 3 or getattr(layer, "rgb", False):
        return (
            f"layer '{layer.name}' is {len(layer.data.shape)}D: cellcut needs a 3D (z, y, x) stack"
        )
    return None


def check_voxel_size(values) -> str | None:
    if len(values) != 3 or any(not (v > 0 and np.isfinite(v)) for v in values):
        return f"voxel size {tuple(values)} is invalid: give three positive sizes (z, y, x) in µm"
    return None


class _Mailbox:
    """Messages from a worker thread, handed to ``handle`` in the GUI thread: a queue the
    worker fills and a timer that empties it every 200 ms (Qt widgets are not thread-safe)."""

    def __init__(self, parent: QWidget, handle: Any) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.handle = handle
        self.timer = QTimer(parent)
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.drain)

    def start(self) -> None:
        self.timer.start()

    def drain(self) -> None:
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            self.handle(*message)

    def stop(self) -> None:
        """The last messages, then no more polling."""
        self.drain()
        self.timer.stop()


class _QueueCallback(TrainCallback):
    """Fills a queue from the training thread; the widget reads it in the GUI thread."""

    def __init__(self, q: queue.Queue, stop: threading.Event) -> None:
        self.q = q
        self.stop = stop

    def on_start(self, run) -> None:
        self.q.put(("start", run.step))

    def on_log(self, record) -> None:
        self.q.put(("log", dict(record)))

    def on_diagnosis(self, diagnosis) -> None:
        self.q.put(("diagnosis", diagnosis.message))

    def stop_requested(self) -> bool:
        return self.stop.is_set()


class _LossPlot(QWidget):
    """N-cut and reconstruction curves, redrawn as records arrive."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        steps = [r["step"] for r in self.records]
        self.ax.clear()
        self.ax.plot(steps, [r["ncut"] for r in self.records], label="N-cut")
        rec = [r["rec_ratio"] for r in self.records]
        self.ax.plot(steps, rec, label="reconstruction / flat image")
        if any(r.get("val_ncut") not in (None, "") for r in self.records):
            self.ax.plot(
                steps, [r.get("val_ncut") or np.nan for r in self.records], label="validation N-cut"
            )
        self.ax.set_xlabel("step")
        self.ax.legend(fontsize=7)
        self.canvas.draw_idle()


class _RunWidget(QWidget):
    """A long run (training, refinement) in a worker thread: start and stop buttons, a progress
    bar and a status line; the run's callback fills a :class:`_Mailbox` that hands each message
    to :meth:`on_message` in the GUI thread."""

    failure = "run failed"

    def _init_run(self, start_text: str) -> None:
        self.start_button = QPushButton(start_text)
        self.stop_button = QPushButton("Stop (keeps the last checkpoint)")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.request_stop)
        self.mailbox = _Mailbox(self, self.on_message)
        self.stop_event = threading.Event()
        self.worker = None
        self.run = None

    def start(self) -> None:
        raise NotImplementedError

    def callback(self) -> _QueueCallback:
        """A fresh callback for the next run (a stop request cleared)."""
        self.stop_event.clear()
        return _QueueCallback(self.mailbox.queue, self.stop_event)

    def launch(self, job: Any, status: str) -> None:
        self.worker = create_worker(job)
        self.worker.returned.connect(self._finished)
        self.worker.errored.connect(self._failed)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(status)
        self.mailbox.start()
        self.worker.start()

    def request_stop(self) -> None:
        self.stop_event.set()
        self.status.setText("stopping after this step…")

    def on_message(self, kind: str, payload: Any) -> None:
        """One message of the run's callback ("start", "log", "diagnosis")."""

    def done_text(self, run: Any) -> str:
        return f"done: {run.step} steps ({run.stopped_by})"

    def _settle(self) -> None:
        self.mailbox.stop()
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _finished(self, run) -> None:
        self._settle()
        self.run = run
        self.status.setText(self.done_text(run))

    def _failed(self, error: Exception) -> None:
        self._settle()
        self.status.setText("failed")
        show_error(str(error) if isinstance(error, CellcutError) else f"{self.failure}: {error}")


class TrainWidget(_RunWidget):
    """Train or fine-tune a W-Net on image layers, with live losses and diagnostics."""

    failure = "training failed"

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        d = TRAIN_DEFAULTS
        self.images = mw.Select(label="images", choices=self._image_names)
        self.n_classes = mw.SpinBox(label="classes (K)", value=d.model.n_classes, min=2, max=16)
        self.patch = mw.SpinBox(
            label="patch size", value=d.data.patch_size[-1], min=16, max=256, step=16
        )
        self.limit = mw.ComboBox(
            label="stop after", choices=["minutes", "steps", "epochs"], value="minutes"
        )
        self.amount = mw.FloatSpinBox(label="amount", value=d.stop.minutes, min=0.05, max=100000)
        self.lr = mw.FloatSpinBox(
            label="learning rate", value=d.optimizer.lr, min=1e-6, max=1.0, step=1e-4
        )
        self.ncut_weight = mw.FloatSpinBox(
            label="N-cut weight", value=d.loss.ncut_weight, min=0, max=100
        )
        self.rec_weight = mw.FloatSpinBox(
            label="reconstruction weight", value=d.loss.rec_weight, min=0, max=100
        )
        self.rec_kind = mw.ComboBox(
            label="reconstruction",
            choices=_choices(LossConfig, "reconstruction"),
            value=d.loss.reconstruction,
        )
        self.intensity_weight = mw.FloatSpinBox(
            label="class-intensity weight", value=d.loss.intensity_weight, min=0, max=100
        )
        self.normalization = mw.ComboBox(
            label="normalization",
            choices=_choices(DataConfig, "normalization"),
            value=d.data.normalization,
        )
        self.sigma = mw.LineEdit(label="σ_I", value=str(d.loss.intensity_sigma))
        self.suggest = mw.PushButton(text="suggest σ_I from the image")
        self.spatial_sigma = mw.FloatSpinBox(
            label="σ_X (voxels)", value=d.loss.spatial_sigma, min=0.5, max=50
        )
        self.pretrained = mw.ComboBox(
            label="start from", choices=["default model", "scratch", "file"], value="default model"
        )
        self.pretrained_file = mw.FileEdit(label="model file", mode="r", filter="*.pt")
        self.out = mw.FileEdit(
            label="run folder", mode="d", value=str(Path(tempfile.gettempdir()) / "cellcut-run")
        )
        self.form = mw.Container(
            widgets=[
                self.images,
                self.n_classes,
                self.patch,
                self.limit,
                self.amount,
                self.lr,
                self.ncut_weight,
                self.rec_weight,
                self.rec_kind,
                self.intensity_weight,
                self.normalization,
                self.sigma,
                self.suggest,
                self.spatial_sigma,
                self.pretrained,
                self.pretrained_file,
                self.out,
            ]
        )
        self._init_run("Start training")
        self.plot = _LossPlot()
        self.messages = QTextEdit()
        self.messages.setReadOnly(True)
        layout = QVBoxLayout(self)
        for w in (
            self.form.native,
            self.start_button,
            self.stop_button,
            self.progress,
            self.status,
            self.plot,
            self.messages,
        ):
            layout.addWidget(w)
        self.suggest.changed.connect(self.suggest_sigma)
        self.viewer.layers.events.inserted.connect(lambda e: self.images.reset_choices())
        self.viewer.layers.events.removed.connect(lambda e: self.images.reset_choices())
        self.total = 0

    def _image_names(self, *_: Any) -> list[str]:
        return [layer.name for layer in _layers(self.viewer, "image")]

    def selected_layers(self) -> list:
        names = set(self.images.value or [])
        return [layer for layer in _layers(self.viewer, "image") if layer.name in names]

    def suggest_sigma(self, *_: Any) -> None:
        layers = self.selected_layers()
        problem = check_layer(layers[0] if layers else None)
        if problem:
            show_error(problem)
            return
        from cellcut.normalize import suggest_intensity_sigma

        s = suggest_intensity_sigma(np.asarray(layers[0].data), self.normalization.value)
        self.sigma.value = f"{s.intensity_sigma:.3g}"
        show_info(
            f"σ_I {s.intensity_sigma:.3g}: background {s.background_mean:.3g}, "
            f"cells {s.foreground_mean:.3g}, noise {s.noise:.3g}"
        )

    def settings(self) -> dict[str, Any]:
        """The form as overrides of the training defaults (setting name -> value)."""
        sigma = self.sigma.value.strip() or "auto"
        amount = self.amount.value if self.limit.value == "minutes" else int(self.amount.value)
        limits = {f"stop.{name}": None for name in ("minutes", "steps", "epochs")}
        limits[f"stop.{self.limit.value}"] = amount
        return {
            **limits,
            "model.n_classes": self.n_classes.value,
            "data.patch_size": [self.patch.value] * 3,
            "data.normalization": self.normalization.value,
            "optimizer.lr": self.lr.value,
            "loss.ncut_weight": self.ncut_weight.value,
            "loss.rec_weight": self.rec_weight.value,
            "loss.reconstruction": self.rec_kind.value,
            "loss.intensity_weight": self.intensity_weight.value,
            "loss.intensity_sigma": sigma if sigma == "auto" else float(sigma),
            "loss.spatial_sigma": self.spatial_sigma.value,
            "log.progress": False,
            "log.every": 5,
        }

    def start(self) -> None:
        layers = self.selected_layers()
        if not layers:
            show_error("no image layer selected: choose the volumes to train on")
            return
        for layer in layers:
            problem = check_layer(layer) or check_voxel_size(tuple(layer.scale)[-3:])
            if problem:
                show_error(problem)
                return
        if self.pretrained.value == "file" and not Path(self.pretrained_file.value).is_file():
            show_error("no model file chosen: pick a .pt file or start from the default model")
            return
        if self.worker is not None:
            show_error("a training is already running")
            return
        volumes = [
            Volume(layer.data, tuple(float(v) for v in layer.scale[-3:]), layer.name)
            for layer in layers
        ]
        try:
            overrides = self.settings()
        except ValueError:
            show_error(f"σ_I {self.sigma.value!r} is not a number: give a positive number or auto")
            return
        pretrained = {
            "default model": "default",
            "scratch": None,
            "file": str(self.pretrained_file.value),
        }[self.pretrained.value]
        self.plot.records.clear()
        self.total = int(self.amount.value) if self.limit.value == "steps" else 0
        self.progress.setRange(0, self.total)
        self.messages.clear()
        callback = self.callback()

        def job():
            from cellcut.training import train

            return train(
                volumes,
                self.out.value,
                overrides=overrides,
                from_pretrained=pretrained,
                callbacks=[callback],
                overwrite=True,
            )

        self.launch(job, "training…")

    def on_message(self, kind: str, payload: Any) -> None:
        if kind == "log":
            self.plot.add(payload)
            self.progress.setValue(int(payload["step"]) if self.total else 0)
            self.status.setText(
                f"step {payload['step']}: N-cut {payload['ncut']:.4f}, "
                f"reconstruction {payload['reconstruction']:.4g}"
            )
        elif kind == "diagnosis":
            self.messages.append(payload)
            show_info(payload)

    def done_text(self, run: Any) -> str:
        return f"done: {run.step} steps ({run.stopped_by}); model in {run.checkpoint}"


class RefineWidget(_RunWidget):
    """Train the supervised second stage on a W-Net's instances of image layers (or on a
    Labels layer), with progress and stop; the run folder is then a model for Segment."""

    failure = "refine failed"

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        d = REFINE_DEFAULTS
        self.images = mw.Select(label="images", choices=self._image_names)
        self.source = mw.ComboBox(
            label="targets from",
            choices=["default model", "W-Net file or run folder", "labels layer"],
            value="default model",
        )
        self.model_path = mw.FileEdit(label="W-Net path", mode="r")
        self.labels = mw.ComboBox(label="labels layer", choices=self._label_names)
        self.minutes = mw.FloatSpinBox(label="minutes", value=d.minutes or 5.0, min=0.05,
                                       max=100000)  # fmt: skip
        self.artifacts = mw.FloatSpinBox(
            label="patches with artifacts", value=d.artifacts, min=0, max=1, step=0.05
        )
        self.out = mw.FileEdit(
            label="run folder", mode="d", value=str(Path(tempfile.gettempdir()) / "cellcut-refine")
        )
        self.form = mw.Container(widgets=[self.images, self.source, self.model_path, self.labels,
                                          self.minutes, self.artifacts, self.out])  # fmt: skip
        self._init_run("Start refining")
        self.progress.setRange(0, 100)
        layout = QVBoxLayout(self)
        for w in (self.form.native, self.start_button, self.stop_button, self.progress,
                  self.status):  # fmt: skip
            layout.addWidget(w)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda e: (self.images.reset_choices(), self.labels.reset_choices()))

    def _image_names(self, *_: Any) -> list[str]:
        return [layer.name for layer in _layers(self.viewer, "image")]

    def _label_names(self, *_: Any) -> list[str]:
        return [layer.name for layer in _layers(self.viewer, "labels")]

    def selected_layers(self) -> list:
        names = set(self.images.value or [])
        return [layer for layer in _layers(self.viewer, "image") if layer.name in names]

    def _inputs(self) -> tuple[list[Volume], Any, list | None] | str:
        """(volumes, W-Net, labels) from the form, or why they cannot be used."""
        layers = self.selected_layers()
        if not layers:
            return "no image layer selected: choose the volumes to refine on"
        for layer in layers:
            problem = check_layer(layer) or check_voxel_size(tuple(layer.scale)[-3:])
            if problem:
                return problem
        volumes = [Volume(layer.data, tuple(float(v) for v in layer.scale[-3:]), layer.name)
                   for layer in layers]  # fmt: skip
        labels = None
        model: Any = "default"
        if self.source.value == "W-Net file or run folder":
            model = str(self.model_path.value)
            if not Path(model).exists():
                return "no W-Net chosen: pick a .pt file or a run folder"
        elif self.source.value == "labels layer":
            wanted = self.labels.value
            chosen = [lay for lay in _layers(self.viewer, "labels") if lay.name == wanted]
            if not chosen or len(layers) != 1:
                return "labels layer: choose one Labels layer, for one image layer"
            labels = [np.asarray(chosen[0].data)]
        return volumes, model, labels

    def start(self) -> None:
        if self.worker is not None:
            show_error("a refinement is already running")
            return
        inputs = self._inputs()
        if isinstance(inputs, str):
            show_error(inputs)
            return
        volumes, model, labels = inputs
        settings = {"minutes": self.minutes.value, "artifacts": self.artifacts.value,
                    "progress": False, "log_every": 5}  # fmt: skip
        self.progress.setValue(0)
        callback = self.callback()

        def job():
            from cellcut.refinement import refine

            return refine(volumes, self.out.value, model=model, labels=labels,
                          callbacks=[callback], overwrite=True, **settings)  # fmt: skip

        self.launch(job, "segmenting with the W-Net, then refining…")

    def on_message(self, kind: str, payload: Any) -> None:
        if kind == "log":
            done = payload["elapsed_s"] / (60 * self.minutes.value)
            self.progress.setValue(min(100, int(100 * done)))
            self.status.setText(
                f"step {payload['step']}: loss {payload['loss']:.4f}, agreement with the "
                f"targets {payload['accuracy']:.3f}"
            )

    def done_text(self, run: Any) -> str:
        self.progress.setValue(100)
        return f"done: {run.step} steps ({run.stopped_by}); segment with the model {run.run_dir}"


class SegmentWidget(QWidget):
    """Segment an image layer: adds the probability and a Labels layer, shows per-cell stats."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = mw.ComboBox(label="image", choices=self._image_names)
        self.model = mw.ComboBox(
            label="model", choices=["default model", "file or run folder"], value="default model"
        )
        self.model_path = mw.FileEdit(label="model path", mode="r")
        self.use_scale = mw.CheckBox(label="voxel size from the layer's scale", value=True)
        self.voxel = mw.TupleEdit(label="voxel size (z, y, x) µm", value=(1.0, 1.0, 1.0))
        d = SEGMENT_DEFAULTS
        self.method = mw.ComboBox(label="instances", choices=INSTANCE_CHOICES, value=d.instances)
        self.spot_auto, self.spot_sigma = _auto_or_number(
            "spot σ", "spot σ (µm)", d.spot_sigma, MANUAL_SPOT_SIGMA, 0.1, 50
        )
        self.outline_auto, self.outline_sigma = _auto_or_number(
            "outline σ", "outline σ (µm)", d.outline_sigma, MANUAL_OUTLINE_SIGMA, 0.1, 50
        )
        self.volume_auto, self.min_volume = _auto_or_number(
            "min volume", "min volume", d.min_volume, 0.0, 0, 1e9
        )
        self.crf = mw.CheckBox(label="dense CRF before instances", value=d.crf)
        self.trim = mw.ComboBox(
            label="trim blur halo",
            choices=[("auto", "auto"), ("on", True), ("off", False)],
            value=d.trim_halo,
            tooltip=SegmentOptions.model_fields["trim_halo"].description,
        )
        self.form = mw.Container(
            widgets=[
                self.image,
                self.model,
                self.model_path,
                self.use_scale,
                self.voxel,
                self.method,
                self.spot_auto,
                self.spot_sigma,
                self.outline_auto,
                self.outline_sigma,
                self.volume_auto,
                self.min_volume,
                self.crf,
                self.trim,
            ]
        )
        self.run_button = QPushButton("Segment")
        self.status = QLabel("idle")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.stages_seen: list[str] = []
        self.mailbox = _Mailbox(self, self.show_progress)  # segment()'s progress callback
        self.table = QTableWidget()
        self.save_path = mw.FileEdit(
            label="CSV",
            mode="w",
            filter="*.csv",
            value=str(Path(tempfile.gettempdir()) / "cells.csv"),
        )
        self.save_button = QPushButton("Save statistics as CSV")
        layout = QVBoxLayout(self)
        for w in (
            self.form.native,
            self.run_button,
            self.status,
            self.progress,
            self.table,
            self.save_path.native,
            self.save_button,
        ):
            layout.addWidget(w)
        self.run_button.clicked.connect(self.start)
        self.save_button.clicked.connect(self.save_csv)
        self.viewer.layers.events.inserted.connect(lambda e: self.image.reset_choices())
        self.viewer.layers.events.removed.connect(lambda e: self.image.reset_choices())
        self.worker = None
        self.result = None

    def _image_names(self, *_: Any) -> list[str]:
        return [layer.name for layer in _layers(self.viewer, "image")]

    def layer(self):
        for layer in _layers(self.viewer, "image"):
            if layer.name == self.image.value:
                return layer
        return None

    def start(self) -> None:
        layer = self.layer()
        problem = check_layer(layer)
        voxel = tuple(
            float(v)
            for v in (
                layer.scale[-3:] if layer is not None and self.use_scale.value else self.voxel.value
            )
        )
        problem = problem or check_voxel_size(voxel)
        if problem:
            show_error(problem)
            return
        model = "default" if self.model.value == "default model" else str(self.model_path.value)
        # the layer's own array (level 0 of a pyramid; dask and zarr read block by block)
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        kwargs = dict(
            model=model,
            voxel_size=voxel,
            instances=self.method.value,
            spot_sigma="auto" if self.spot_auto.value else self.spot_sigma.value,
            outline_sigma="auto" if self.outline_auto.value else self.outline_sigma.value,
            min_volume="auto" if self.volume_auto.value else self.min_volume.value,
            crf=self.crf.value,
            trim_halo=self.trim.value,
            keep_in_memory=True,
            progress=lambda stage, done, total: self.mailbox.queue.put((stage, done, total)),
        )

        def job():
            from cellcut.segmentation import segment

            return segment(data, None, **kwargs)

        self.stages_seen.clear()
        self.mailbox.start()

        self.worker = create_worker(job)
        self.worker.returned.connect(lambda r: self._finished(r, layer, voxel))
        self.worker.errored.connect(self._failed)
        self.run_button.setEnabled(False)
        self.status.setText("segmenting…")
        self.worker.start()

    def show_progress(self, stage: str, done: int, total: int) -> None:
        """In the GUI thread: the block count of the running stage."""
        if stage not in self.stages_seen:
            self.stages_seen.append(stage)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        self.status.setText(f"segmenting: {stage} {done}/{total} blocks")

    def _finished(self, result, layer, voxel) -> None:
        self.mailbox.stop()
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.worker = None
        self.result = result
        self.run_button.setEnabled(True)
        name = layer.name
        self.viewer.add_image(
            result.probability,
            name=f"{name} cell probability",
            scale=voxel,
            colormap="magma",
            blending="additive",
            opacity=0.6,
        )
        # the per-cell table on the layer, with regionprops' column names (label, centroid-0,
        # area, intensity_mean...), which other napari plugins read
        columns = getattr(result.stats, "columns", None) or {}
        self.viewer.add_labels(
            result.labels, name=f"{name} cells", scale=voxel, features=dict(columns)
        )
        spot = result.summary.get("spot_sigma")
        self.status.setText(
            f"{result.n_cells} cells" + (f" (spot σ {spot:.3g} µm)" if spot is not None else "")
        )
        self.show_table(result.stats)
        for warning in result.warnings:
            show_info(f"check the result: {warning}")

    def _failed(self, error: Exception) -> None:
        self.mailbox.stop()
        self.worker = None
        self.run_button.setEnabled(True)
        self.status.setText("failed")
        show_error(
            str(error) if isinstance(error, CellcutError) else f"segmentation failed: {error}"
        )

    def show_table(self, rows: list[dict]) -> None:
        columns = [
            "label",
            "centroid_z_um",
            "centroid_y_um",
            "centroid_x_um",
            "volume_um3",
            "intensity_mean",
            "intensity_max",
        ]
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(columns)
        for i, row in enumerate(rows):
            for j, key in enumerate(columns):
                value = row[key]
                self.table.setItem(
                    i,
                    j,
                    QTableWidgetItem(f"{value:.4g}" if isinstance(value, float) else str(value)),
                )

    def save_csv(self) -> None:
        if self.result is None:
            show_error("nothing to save yet: segment an image first")
            return
        from cellcut.segmentation import write_stats_csv

        path = write_stats_csv(self.save_path.value, self.result.stats, overwrite=True)
        show_info(f"saved {path}")


class EvaluateWidget(QWidget):
    """Two Labels layers -> Dice, IoU and instance matching at IoU 0.1..0.9."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.truth = mw.ComboBox(label="ground truth", choices=self._label_names)
        self.prediction = mw.ComboBox(label="prediction", choices=self._label_names)
        self.form = mw.Container(widgets=[self.truth, self.prediction])
        self.run_button = QPushButton("Evaluate")
        self.summary = QLabel("")
        self.table = QTableWidget()
        layout = QVBoxLayout(self)
        for w in (self.form.native, self.run_button, self.summary, self.table):
            layout.addWidget(w)
        self.run_button.clicked.connect(self.evaluate)
        self.viewer.layers.events.inserted.connect(lambda e: self._refresh())
        self.viewer.layers.events.removed.connect(lambda e: self._refresh())
        self.result = None

    def _refresh(self) -> None:
        self.truth.reset_choices()
        self.prediction.reset_choices()

    def _label_names(self, *_: Any) -> list[str]:
        return [layer.name for layer in _layers(self.viewer, "labels")]

    def _get(self, name):
        for layer in _layers(self.viewer, "labels"):
            if layer.name == name:
                return layer
        return None

    def evaluate(self) -> None:
        from cellcut.metrics import evaluate

        truth, pred = self._get(self.truth.value), self._get(self.prediction.value)
        problem = check_layer(truth, "labels") or check_layer(pred, "labels")
        if problem:
            show_error(problem)
            return
        if truth.data.shape != pred.data.shape:
            show_error(f"the layers differ in shape: {truth.data.shape} and {pred.data.shape}")
            return
        self.result = evaluate(np.asarray(truth.data), np.asarray(pred.data))
        r = self.result
        self.summary.setText(
            f"Dice {r.dice:.4f}, IoU {r.iou:.4f}, truth {r.n_true} objects, "
            f"prediction {r.n_pred}; mean F1 {r.mean_f1:.4f}"
        )
        columns = ["IoU threshold", "TP", "FP", "FN", "precision", "recall", "accuracy", "F1", "PQ"]
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(r.matches))
        self.table.setHorizontalHeaderLabels(columns)
        for i, m in enumerate(r.matches):
            values = [
                m.threshold,
                m.tp,
                m.fp,
                m.fn,
                m.precision,
                m.recall,
                m.accuracy,
                m.f1,
                m.panoptic_quality,
            ]
            for j, v in enumerate(values):
                self.table.setItem(
                    i, j, QTableWidgetItem(f"{v:.4f}" if isinstance(v, float) else str(v))
                )
