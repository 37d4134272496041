"""OME-Zarr as the field writes it: pyramids written chunk by chunk, label images inside their
image (NGFF 0.4 and 0.5), listed and coloured."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellcut.io import import_zarr, read_volume, write_volume
from cellcut.ngff import _level_shapes, colours


class Recording:
    """A chunked array that records the largest block read from it."""

    def __init__(self, data: np.ndarray, chunks) -> None:
        self.data, self.chunks = data, tuple(chunks)
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.largest = 0

    def __getitem__(self, index):
        out = self.data[index]
        self.largest = max(self.largest, out.size)
        return out


def test_levels_halve_the_long_axes_only():
    shapes = [s for s, _ in _level_shapes((16, 1024, 700))]
    assert shapes == [(16, 1024, 700), (16, 512, 350), (16, 256, 175)]
    assert _level_shapes((32, 64, 64)) == [((32, 64, 64), (1, 1, 1))]


def test_standalone_pyramid_written_chunk_by_chunk(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, (40, 600, 520)).astype(np.uint16)
    source = Recording(labels, (20, 128, 128))
    write_volume(tmp_path / "l.ome.zarr", source, voxel_size=(2, 0.5, 0.5))
    assert source.largest <= 20 * 128 * 128  # never the whole volume
    root = import_zarr().open_group(str(tmp_path / "l.ome.zarr"), mode="r")
    ms = root.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 1.0, 1.0]
    assert np.array_equal(root["1"][...], labels[:, ::2, ::2])
    assert np.array_equal(root["2"][...], labels[:, ::4, ::4])
    assert np.array_equal(read_volume(tmp_path / "l.ome.zarr").numpy(), labels)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_labels_land_inside_their_image(tmp_path, zarr_format):
    zarr = import_zarr()
    image = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(image), mode="w", zarr_format=zarr_format)
    root.create_array("0", shape=(8, 32, 32), dtype="uint16", chunks=(8, 32, 32))
    ms = {"axes": [{"name": a, "type": "space"} for a in "zyx"],
          "datasets": [{"path": "0", "coordinateTransformations": [
              {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}  # fmt: skip
    if zarr_format == 3:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        root.attrs["multiscales"] = [{"version": "0.4", **ms}]
    labels = np.zeros((8, 32, 32), np.int32)
    labels[2:5, 4:9, 4:9], labels[5:7, 20:30, 20:30] = 1, 2
    for name in ("cells", "nuclei"):
        write_volume(image / "labels" / name, labels, voxel_size=(1, 1, 1))
    group = zarr.open_group(str(image / "labels"), mode="r")
    cells = zarr.open_group(str(image / "labels" / "cells"), mode="r")
    if zarr_format == 3:
        assert group.attrs["ome"]["labels"] == ["cells", "nuclei"]
        meta = cells.attrs["ome"]["image-label"]
        assert cells.attrs["ome"]["version"] == "0.5"
    else:
        assert group.attrs["labels"] == ["cells", "nuclei"]
        meta = cells.attrs["image-label"]
    assert meta["source"] == {"image": "../../"}
    assert [c["label-value"] for c in meta["colors"]] == [1, 2]
    assert np.array_equal(read_volume(image / "labels" / "cells").numpy(), labels)
    assert not [p for p in (image / "labels").iterdir() if ".tmp-" in p.name]


def test_segment_writes_its_labels_into_the_input_image(tmp_path, small_synthetic):
    from cellcut.segmentation import segment

    image = tmp_path / "img.ome.zarr"
    write_volume(image, small_synthetic.image, voxel_size=small_synthetic.voxel_size)
    result = segment(image, image / "labels" / "cellcut", stats=tmp_path / "c.csv")
    attrs = json.loads((image / "labels" / ".zattrs").read_text())
    assert attrs["labels"] == ["cellcut"]
    assert np.array_equal(read_volume(image / "labels" / "cellcut").numpy(), result.labels)


def test_colours_are_distinct_and_repeatable():
    c = colours(300)
    assert len({tuple(x["rgba"]) for x in c}) == 300 and c == colours(300)


@pytest.fixture
def memory_store(small_synthetic):
    pytest.importorskip("fsspec")  # zarr opens URLs through it (an optional dependency)
    zarr = import_zarr()
    url = "memory://cellcut-test/vol.zarr"
    shape = small_synthetic.image.shape
    arr = zarr.create_array(url, shape=shape, dtype="float32", chunks=(12, 20, 20), overwrite=True)
    arr[...] = small_synthetic.image
    return url, arr


def test_a_zarr_url_is_a_volume(small_synthetic, memory_store):
    from cellcut.segmentation import segment

    url, _ = memory_store
    assert np.array_equal(read_volume(url).numpy(), small_synthetic.image)
    reference = segment(small_synthetic.image, None, voxel_size=(1.5, 1, 1))
    assert np.array_equal(segment(url, None, voxel_size=(1.5, 1, 1)).labels, reference.labels)


def test_lazy_arrays_and_pyramids_are_volumes(small_synthetic, tmp_path):
    from cellcut.segmentation import segment

    arr = import_zarr().create_array(
        str(tmp_path / "v.zarr"), shape=small_synthetic.image.shape, dtype="float32",
        chunks=(12, 20, 20),
    )  # fmt: skip
    arr[...] = small_synthetic.image
    reference = segment(small_synthetic.image, None, voxel_size=(1.5, 1, 1))
    images: list = [arr, [arr, arr]]
    try:
        import dask.array as da

        images.append(da.from_array(small_synthetic.image, chunks=(12, 20, 20)))
    except ImportError:  # dask is optional (napari brings it)
        pass
    for image in images:
        result = segment(image, None, voxel_size=(1.5, 1, 1))
        assert np.array_equal(result.labels, reference.labels), type(image)


def test_napari_reader_gives_pyramids_as_multiscale_layers(tmp_path):
    from cellcut.napari_plugin.io import get_reader

    labels = np.zeros((40, 600, 520), np.uint16)
    labels[5:20, 100:300, 100:300] = 3
    write_volume(tmp_path / "big.ome.zarr", labels, voxel_size=(2, 0.5, 0.5))
    [(data, meta, _)] = get_reader(str(tmp_path / "big.ome.zarr"))(str(tmp_path / "big.ome.zarr"))
    assert meta["multiscale"] is True and [d.shape for d in data][:2] == [
        (40, 600, 520),
        (40, 300, 260),
    ]
    assert meta["scale"] == (2.0, 0.5, 0.5)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_labels_of_an_ome_zarr_input_validate_against_the_ngff_schemas(
    tmp_path, small_synthetic, zarr_format
):
    """An independent reader's check: ngff-zarr's bundled JSON schemas (image and label,
    strict variants), and it opens image and labels as multiscales."""
    ngff_zarr = pytest.importorskip("ngff_zarr")
    pytest.importorskip("jsonschema")
    from cellcut.segmentation import segment

    zarr = import_zarr()
    image = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(image), mode="w", zarr_format=zarr_format)
    root.create_array("0", shape=small_synthetic.image.shape, dtype="float32", chunks=(16, 32, 32))
    root["0"][...] = small_synthetic.image
    ms = {"axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
          "datasets": [{"path": "0", "coordinateTransformations": [
              {"type": "scale", "scale": list(small_synthetic.voxel_size)}]}]}  # fmt: skip
    version = "0.5" if zarr_format == 3 else "0.4"
    if zarr_format == 3:
        root.attrs["ome"] = {"version": version, "multiscales": [ms]}
    else:
        root.attrs["multiscales"] = [{"version": version, **ms}]
    segment(image, image / "labels" / "cells", block=16)

    def attrs(path):
        group = zarr.open_group(str(path), mode="r")
        return dict(group.attrs)

    ngff_zarr.validate(attrs(image / "labels" / "cells"), version=version, model="label",
                       strict=True)  # fmt: skip
    ngff_zarr.validate(attrs(image), version=version, model="image")
    labels = ngff_zarr.from_ngff_zarr(str(image / "labels" / "cells"), validate=True)
    assert len(labels.images) >= 1
    level0 = np.asarray(labels.images[0].data)
    assert level0.shape == small_synthetic.image.shape and level0.max() > 0
    assert list(labels.images[0].scale.values()) == pytest.approx(small_synthetic.voxel_size)
