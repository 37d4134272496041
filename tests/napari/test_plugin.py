"""The napari plugin: manifest, widgets, a short training, segmentation, evaluation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cellcut.synthetic import make_nuclei_volume


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def errors(monkeypatch):
    """Collect the messages the widgets show as error notifications."""
    import cellcut.napari_plugin.widgets as w

    seen: list[str] = []
    monkeypatch.setattr(w, "show_error", seen.append)
    return seen


def test_manifest_is_valid_and_contributes_widgets():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("cellcut")
    names = {w.display_name for w in manifest.contributions.widgets}
    assert names == {"Train", "Refine", "Segment", "Evaluate"}
    assert manifest.contributions.sample_data[0].key == "mesospim"


def test_sample_and_reader(tmp_path):
    from cellcut.io import write_volume
    from cellcut.napari_plugin.io import get_reader, mesospim_sample

    [(data, meta, kind)] = mesospim_sample()
    assert data.shape == (124, 86, 94) and kind == "image"
    write_volume(tmp_path / "v.ome.zarr", np.ones((4, 5, 6), np.uint16), voxel_size=(2, 1, 1))
    reader = get_reader(str(tmp_path / "v.ome.zarr"))
    [(arr, meta, kind)] = reader(str(tmp_path / "v.ome.zarr"))
    assert arr.shape == (4, 5, 6) and meta["scale"] == (2.0, 1.0, 1.0)
    assert get_reader(str(tmp_path / "x.png")) is None


def test_train_widget_short_run_and_stop(viewer, qtbot, tmp_path, errors):
    from cellcut.napari_plugin.widgets import TrainWidget

    v = make_nuclei_volume((16, 32, 32), seed=1)
    viewer.add_image(v.image, name="nuclei")
    widget = TrainWidget(viewer)
    widget.images.value = ["nuclei"]
    widget.patch.value = 16
    widget.limit.value = "steps"
    widget.amount.value = 400
    widget.pretrained.value = "scratch"
    widget.out.value = str(tmp_path / "run")
    widget.start()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: len(widget.plot.records) >= 2, timeout=120_000)
    widget.request_stop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert not errors
    assert widget.run is not None and widget.run.stopped_by == "stop requested"
    assert widget.run.step < 400 and (tmp_path / "run" / "checkpoint.pt").exists()


def test_refine_widget_from_a_labels_layer_then_segment_with_it(viewer, qtbot, tmp_path, errors):
    from cellcut.napari_plugin.widgets import RefineWidget, SegmentWidget

    v = make_nuclei_volume((16, 32, 32), seed=1)
    viewer.add_image(v.image, name="nuclei")
    viewer.add_labels(v.labels, name="truth")
    widget = RefineWidget(viewer)
    widget.images.value = ["nuclei"]
    widget.source.value = "labels layer"
    widget.labels.value = "truth"
    widget.out.value = str(tmp_path / "refined")
    widget.start()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.status.text().startswith("step"), timeout=120_000)
    widget.request_stop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert not errors
    assert widget.run is not None and widget.run.stopped_by == "stop requested"
    assert (tmp_path / "refined" / "checkpoint.pt").exists()
    seg = SegmentWidget(viewer)
    seg.image.value = "nuclei"
    seg.model.value = "file or run folder"
    seg.model_path.value = str(tmp_path / "refined")
    seg.start()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=120_000)
    assert not errors and seg.result is not None
    assert seg.result.summary["instances_chosen"] == {"seeded": 1}
    widget.source.value = "labels layer"
    widget.images.value = []
    widget.start()
    assert errors and "no image layer" in errors[-1]


def test_segment_then_evaluate(viewer, qtbot, errors):
    from cellcut.napari_plugin.widgets import EvaluateWidget, SegmentWidget

    v = make_nuclei_volume((24, 48, 48), seed=2, voxel_size=(2, 1, 1))
    viewer.add_image(v.image, name="nuclei", scale=(2, 1, 1))
    viewer.add_labels(v.labels, name="truth", scale=(2, 1, 1))
    seg = SegmentWidget(viewer)
    seg.image.value = "nuclei"
    seg.start()
    qtbot.waitUntil(lambda: seg.result is not None or bool(errors), timeout=120_000)
    assert not errors
    assert "nuclei cells" in viewer.layers and "nuclei cell probability" in viewer.layers
    assert seg.table.rowCount() == seg.result.n_cells > 0
    assert "probability" in seg.stages_seen and seg.progress.value() == seg.progress.maximum()
    features = viewer.layers["nuclei cells"].features
    assert len(features) == seg.result.n_cells
    assert {"label", "centroid-0", "area", "intensity_mean", "volume_um3"} <= set(features.columns)
    ev = EvaluateWidget(viewer)
    ev.truth.value = "truth"
    ev.prediction.value = "nuclei cells"
    ev.evaluate()
    assert ev.result is not None and ev.table.rowCount() == 9
    assert ev.result.dice > 0.5


def test_bad_input_is_a_notification(viewer, errors):
    from cellcut.napari_plugin.widgets import EvaluateWidget, SegmentWidget, TrainWidget

    train = TrainWidget(viewer)
    train.start()
    assert "no image layer selected" in errors[-1]
    viewer.add_image(np.random.default_rng(0).random((32, 32)), name="flat")
    seg = SegmentWidget(viewer)
    seg.image.value = "flat"
    seg.start()
    assert "2D" in errors[-1]
    viewer.add_image(np.random.default_rng(0).random((8, 16, 16)), name="vol")
    seg.image.value = "vol"
    seg.use_scale.value = False
    seg.voxel.value = (1.0, 0.0, 1.0)
    seg.start()
    assert "voxel size" in errors[-1] and "positive" in errors[-1]
    EvaluateWidget(viewer).evaluate()
    assert "no labels layer selected" in errors[-1]


def test_screenshot_after_segmenting_the_sample(viewer, qtbot, errors, tmp_path):
    from cellcut.napari_plugin.io import mesospim_sample
    from cellcut.napari_plugin.widgets import SegmentWidget

    [(data, meta, _)] = mesospim_sample()
    viewer.add_image(data, **meta)
    seg = SegmentWidget(viewer)
    seg.image.value = meta["name"]
    seg.start()
    qtbot.waitUntil(lambda: seg.result is not None or bool(errors), timeout=180_000)
    assert not errors
    viewer.dims.ndisplay = 2
    try:
        shot = viewer.screenshot(canvas_only=True)
    except Exception as e:  # no OpenGL in this environment
        pytest.skip(f"screenshot needs OpenGL: {e}")
    assert shot.ndim == 3 and shot.shape[2] in (3, 4) and shot.std() > 0
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "napari_screenshot.png", shot)


def test_widgets_start_from_the_library_defaults(viewer):
    from cellcut.config import REFINE_DEFAULTS, SEGMENT_DEFAULTS, TrainConfig, apply_overrides
    from cellcut.napari_plugin.widgets import RefineWidget, SegmentWidget, TrainWidget

    refine = RefineWidget(viewer)
    assert refine.minutes.value == REFINE_DEFAULTS.minutes
    assert refine.artifacts.value == REFINE_DEFAULTS.artifacts
    seg = SegmentWidget(viewer)
    assert seg.crf.value == SEGMENT_DEFAULTS.crf
    assert seg.method.value == SEGMENT_DEFAULTS.instances
    assert seg.spot_auto.value == (SEGMENT_DEFAULTS.spot_sigma == "auto")
    assert seg.outline_auto.value == (SEGMENT_DEFAULTS.outline_sigma == "auto")
    assert seg.volume_auto.value == (SEGMENT_DEFAULTS.min_volume == "auto")
    assert seg.trim.value == SEGMENT_DEFAULTS.trim_halo
    form = apply_overrides(TrainConfig(), TrainWidget(viewer).settings())
    default = TrainConfig()
    assert form.model == default.model and form.loss == default.loss
    assert form.optimizer == default.optimizer and form.data == default.data
    assert form.stop == default.stop


def test_labels_writer_keeps_the_scale(viewer, tmp_path):
    import npe2

    from cellcut.io import read_volume

    manifest = npe2.PluginManifest.from_distribution("cellcut")
    assert [w.layer_types for w in manifest.contributions.writers] == [["labels"]]
    labels = np.zeros((6, 8, 8), np.int32)
    labels[1:3, 2:5, 2:5] = 7
    viewer.add_labels(labels, name="cells", scale=(2, 0.5, 0.5))
    for name in ("cells.tif", "cells.ome.zarr"):
        written = viewer.layers["cells"].save(str(tmp_path / name), plugin="cellcut")
        assert written, name
        vol = read_volume(tmp_path / name)
        assert np.array_equal(vol.numpy(), labels) and vol.voxel_size == (2.0, 0.5, 0.5)


def test_segment_widget_takes_a_multiscale_dask_layer(viewer, qtbot, errors):
    import dask.array as da

    from cellcut.napari_plugin.widgets import SegmentWidget

    v = make_nuclei_volume((24, 48, 48), seed=2, voxel_size=(2, 1, 1))
    level0 = da.from_array(v.image, chunks=(12, 24, 24))
    viewer.add_image([level0, level0[:, ::2, ::2]], name="pyramid", multiscale=True)
    seg = SegmentWidget(viewer)
    seg.image.value = "pyramid"
    seg.start()
    qtbot.waitUntil(lambda: seg.result is not None or bool(errors), timeout=120_000)
    assert not errors
    assert viewer.layers["pyramid cells"].data.shape == v.image.shape


def test_ngff_label_images_open_as_labels_layers(tmp_path, small_synthetic):
    """segment's labels written into an OME-Zarr image open as a Labels layer: from their own
    path, and along with the image."""
    from cellcut.io import write_volume
    from cellcut.napari_plugin.io import get_reader
    from cellcut.segmentation import segment

    image = tmp_path / "img.ome.zarr"
    write_volume(image, small_synthetic.image, voxel_size=small_synthetic.voxel_size)
    result = segment(image, image / "labels" / "cells")
    [(data, meta, kind)] = get_reader(str(image / "labels" / "cells"))(
        str(image / "labels" / "cells")
    )
    assert kind == "labels" and meta["name"] == "cells"
    level0 = data[0] if meta.get("multiscale") else data
    assert np.array_equal(np.asarray(level0), result.labels)
    assert meta["scale"] == pytest.approx(small_synthetic.voxel_size)
    layers = get_reader(str(image))(str(image))
    assert [(m["name"], k) for _, m, k in layers] == [
        ("img.ome.zarr", "image"),
        ("cells", "labels"),
    ]


def test_viewer_opens_segment_labels_as_a_labels_layer(viewer, tmp_path, small_synthetic):
    import napari
    from cellcut.io import write_volume
    from cellcut.segmentation import segment

    image = tmp_path / "img.ome.zarr"
    write_volume(image, small_synthetic.image, voxel_size=small_synthetic.voxel_size)
    segment(image, image / "labels" / "cells")
    [layer] = viewer.open(str(image / "labels" / "cells"), plugin="cellcut")
    assert isinstance(layer, napari.layers.Labels) and layer.name == "cells"
