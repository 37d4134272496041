"""Reading and writing volumes: formats, axes, voxel sizes, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from cellcut.errors import InputFileError, OutputError, VolumeError
from cellcut.io import read_volume, split_location, write_volume

VS = (2.0, 0.5, 0.25)


@pytest.fixture
def vol(rng):
    return rng.integers(0, 1000, size=(6, 9, 11)).astype(np.uint16)


@pytest.mark.parametrize(
    "name",
    ["a.tif", "a.ome.tif", "a.zarr", "a.ome.zarr", "a.h5", "a.h5:raw/img", "a.nii.gz", "a.npy"],
)
def test_round_trip_keeps_data_and_voxel_size(tmp_path, vol, name):
    write_volume(tmp_path / name if ":" not in name else f"{tmp_path}/{name}", vol, voxel_size=VS)
    back = read_volume(f"{tmp_path}/{name}")
    np.testing.assert_array_equal(back.data, vol)
    assert back.data.dtype == vol.dtype
    if not name.endswith(".npy"):
        np.testing.assert_allclose(back.voxel_size, VS, rtol=1e-6)
    else:
        assert back.voxel_size is None


@pytest.mark.parametrize("name", ["a.tif", "a.zarr", "a.ome.zarr", "a.h5", "a.npy"])
def test_lazy_read_gives_same_values(tmp_path, vol, name):
    write_volume(tmp_path / name, vol)
    lazy = read_volume(tmp_path / name, lazy=True)
    assert not isinstance(lazy.data, np.ndarray) or name.endswith(".npy")
    assert lazy.shape == vol.shape
    np.testing.assert_array_equal(np.asarray(lazy.data[1:3, :, 2:5]), vol[1:3, :, 2:5])


def test_imagej_tiff_voxel_size(tmp_path, vol):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        vol,
        imagej=True,
        resolution=(1 / 0.3, 1 / 0.3),
        metadata={"spacing": 1.7, "unit": "micron", "axes": "ZYX"},
    )
    np.testing.assert_allclose(read_volume(path).voxel_size, (1.7, 0.3, 0.3), rtol=1e-5)


def test_plain_tiff_stack_is_zyx_without_voxel_size(tmp_path, vol):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, vol)
    v = read_volume(path)
    assert v.shape == vol.shape and v.voxel_size is None


def test_multichannel_tiff_needs_a_channel(tmp_path, rng):
    data = rng.integers(0, 100, size=(5, 2, 8, 8)).astype(np.uint16)  # ZCYX
    path = tmp_path / "mc.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(
        VolumeError, match=r"channel axis of length 2.*--channel N \(N from 0 to 1\)"
    ):
        read_volume(path)
    np.testing.assert_array_equal(read_volume(path, channel=1).data, data[:, 1])
    lazy = read_volume(path, channel=1, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data[...]), data[:, 1])
    with pytest.raises(VolumeError, match="channel 2 is out of range"):
        read_volume(path, channel=2)


def test_5d_needs_time_and_channel(tmp_path, rng):
    data = rng.random((3, 2, 4, 6, 6)).astype(np.float32)
    np.save(tmp_path / "t.npy", data)
    with pytest.raises(VolumeError, match="time axis"):
        read_volume(tmp_path / "t.npy", channel=0)
    with pytest.raises(VolumeError, match="channel axis"):
        read_volume(tmp_path / "t.npy", time=2)
    np.testing.assert_array_equal(
        read_volume(tmp_path / "t.npy", time=2, channel=1).data, data[2, 1]
    )


def test_singleton_channel_is_squeezed(tmp_path, rng):
    data = rng.random((1, 4, 6, 6)).astype(np.float32)
    np.save(tmp_path / "s.npy", data)
    assert read_volume(tmp_path / "s.npy").shape == (4, 6, 6)


def test_channel_on_single_channel_image_is_an_error(tmp_path, vol):
    write_volume(tmp_path / "a.tif", vol)
    with pytest.raises(VolumeError, match="no channel axis"):
        read_volume(tmp_path / "a.tif", channel=1)


def test_ome_zarr_reads_full_resolution_level(tmp_path, vol):
    root = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=vol.shape, dtype=vol.dtype)[...] = vol
    small = vol[:, ::2, ::2]
    root.create_array("1", shape=small.shape, dtype=small.dtype)[...] = small
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [3, 1, 1]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [3, 2, 2]}]},
            ],
        }
    ]
    v = read_volume(tmp_path / "p.ome.zarr")
    np.testing.assert_array_equal(v.data, vol)
    assert v.voxel_size == (3.0, 1.0, 1.0)


def test_h5_missing_dataset_lists_the_datasets(tmp_path, vol):
    write_volume(f"{tmp_path}/a.h5:raw", vol)
    with pytest.raises(InputFileError, match=r"no dataset 'labels' \(datasets: raw\)"):
        read_volume(f"{tmp_path}/a.h5:labels")


def test_split_location():
    assert split_location("x/a.h5:raw/img") == (__import__("pathlib").Path("x/a.h5"), "raw/img")
    assert split_location("C:/data/a.tif")[1] is None
    assert split_location("a.zarr")[1] is None


def test_existing_output_is_kept_without_overwrite(tmp_path, vol):
    path = tmp_path / "a.tif"
    write_volume(path, vol)
    with pytest.raises(OutputError, match=r"output exists.*--overwrite"):
        write_volume(path, vol + 1)
    np.testing.assert_array_equal(read_volume(path).data, vol)
    write_volume(path, vol + 1, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).data, vol + 1)


def test_overwrite_of_zarr_folder(tmp_path, vol):
    write_volume(tmp_path / "a.zarr", vol)
    write_volume(tmp_path / "a.zarr", vol * 2, overwrite=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "a.zarr").data, vol * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]


def test_failed_write_leaves_nothing_behind(tmp_path, vol, monkeypatch):
    import cellcut.io as cio

    def broken(path, data, vs, compress):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio, "_write_tiff", broken)
    with pytest.raises(OutputError, match="No space left"):
        write_volume(tmp_path / "a.tif", vol)
    assert list(tmp_path.iterdir()) == []


def test_nifti_axes_are_zyx(tmp_path, vol):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([0.25, 0.5, 2.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "x.nii"))
    v = read_volume(tmp_path / "x.nii")
    np.testing.assert_array_equal(v.data, vol)
    np.testing.assert_allclose(v.voxel_size, (2000.0, 500.0, 250.0))


def test_atomic_output_commits_or_leaves_nothing(tmp_path):
    from cellcut.io import atomic_output

    with atomic_output(tmp_path / "a.txt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.tmp-")
        tmp.write_text("done")
    assert (tmp_path / "a.txt").read_text() == "done"
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "done"  # the finished output is untouched
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "d.zarr") as tmp:
        tmp.mkdir()
        (tmp / "chunk").write_text("x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("suffix", ["tif", "zarr", "h5", "npy"])
def test_chunked_arrays_are_written_like_numpy_ones(tmp_path, vol, suffix):
    import zarr

    src = zarr.create_array(str(tmp_path / "src.zarr"), shape=vol.shape, dtype=vol.dtype,
                            chunks=(3, 7, 5))  # fmt: skip
    src[...] = vol
    write_volume(tmp_path / f"out.{suffix}", src, voxel_size=(2, 1, 1))
    back = read_volume(tmp_path / f"out.{suffix}", validate=False)
    np.testing.assert_array_equal(back.numpy(), vol)
