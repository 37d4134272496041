"""Segmentation on a dask.distributed cluster: the same labels as one process, retries and
block errors, one model per worker, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cellcut.cli import main
from cellcut.errors import ClusterError, ConfigError
from cellcut.refinement import refine
from cellcut.segmentation import segment
from cellcut.synthetic import make_nuclei_volume
from tests.helpers import untrained_model

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):  # fmt: skip
        yield c


@pytest.fixture(autouse=True)
def one_thread():
    """This process computes with one torch thread, as the fixture's workers do (dask starts
    them with one), so that one-process results are comparable to the bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """One-to-one correspondence of ids (background to background)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.slow
def test_local_cluster_of_two_workers_equals_one_process_on_256_cubed(tmp_path):
    v = make_nuclei_volume(
        (256, 256, 256), seed=11, voxel_size=(1.0, 1.0, 1.0), radius_um=(5, 9), n_nuclei=180
    )
    seams = [v.labels[127:129], v.labels[:, 127:129], v.labels[:, :, 127:129]]
    crossing = set().union(*(set(np.unique(s[0])) & set(np.unique(s[1])) for s in seams))
    assert len(crossing - {0}) >= 10  # nuclei straddle the block seams
    tifffile.imwrite(tmp_path / "img.tif", v.image)
    settings = dict(block=128, voxel_size=(1.0, 1.0, 1.0))
    # the same torch threads as each of local:2's workers: float sums are then the same to the
    # bit (with other thread counts a voxel at the threshold can flip: 1 of 256³ was seen)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        one = segment(tmp_path / "img.tif", tmp_path / "one.tif", **settings)
    finally:
        torch.set_num_threads(threads)
    two = segment(tmp_path / "img.tif", tmp_path / "two.tif", cluster="local:2", **settings)
    a, b = tifffile.imread(tmp_path / "one.tif"), tifffile.imread(tmp_path / "two.tif")
    assert one.n_cells == two.n_cells > 50
    assert _same_partition(a, b)
    assert np.array_equal(a, b)  # ids too: pieces are numbered in block order
    assert one.summary["instances_chosen"] == two.summary["instances_chosen"]
    labels_on_seams = {int(i) for s in (a[127:129], a[:, 127:129]) for i in np.unique(s)}
    assert len(labels_on_seams - {0}) >= 10  # and the result has cells across them


def test_cluster_result_equals_one_process_with_crf_trimming_and_an_array_input(tmp_path, client):
    v = make_nuclei_volume((40, 64, 64), seed=3, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    model = untrained_model(tmp_path / "m.pt")
    settings = dict(
        model=model, block=24, window=16, voxel_size=v.voxel_size, crf=True, trim_halo="on"
    )
    one = segment(v.image, None, **settings)
    two = segment(v.image, None, cluster=client, scratch=tmp_path / "scratch", **settings)
    assert np.array_equal(one.probability, two.probability)
    assert np.array_equal(one.labels, two.labels)
    assert one.summary["trim_halo"] is two.summary["trim_halo"] is True
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch arrays are removed


def test_refined_model_on_a_cluster_equals_one_process(tmp_path, client):
    v = make_nuclei_volume((16, 40, 40), seed=4, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(tmp_path / "img.tif", v.image)
    tifffile.imwrite(tmp_path / "lab.tif", v.labels)
    run = refine(
        [tmp_path / "img.tif"], tmp_path / "run", labels=[tmp_path / "lab.tif"], steps=2,
        voxel_size=v.voxel_size, patch_size=(16, 24, 24), batch_size=1, base_width=2, depth=1,
        progress=False, plots=False, minutes=None,
    )  # fmt: skip
    settings = dict(model=run.run_dir, block=16, window=16, voxel_size=v.voxel_size)
    one = segment(tmp_path / "img.tif", None, **settings)
    two = segment(tmp_path / "img.tif", None, cluster=client, **settings)
    assert np.array_equal(one.labels, two.labels)
    assert two.summary["instances_chosen"] == one.summary["instances_chosen"]


def test_each_worker_loads_the_model_once(tmp_path, client):
    v = make_nuclei_volume((32, 48, 48), seed=5, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(tmp_path / "img.tif", v.image)
    model = untrained_model(tmp_path / "m.pt")
    for _ in range(2):
        segment(tmp_path / "img.tif", None, model=model, block=16, window=16, cluster=client)

    def models_loaded():
        from cellcut.segmentation import cluster

        return sum(1 for key in cluster._OPENED if key[:2] == ("model", str(model)))

    assert set(client.run(models_loaded).values()) == {1}


def test_a_block_that_keeps_failing_is_retried_then_named_with_its_coordinates(tmp_path, client):
    from cellcut.blocks import blocks
    from cellcut.segmentation.predict import prediction_halo

    v = make_nuclei_volume((32, 32, 32), seed=6, voxel_size=(1, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(tmp_path / "img.tif", v.image)
    model = untrained_model(tmp_path / "m.pt")
    bad, log = (4, 30, 4), str(tmp_path / "failures.log")

    def break_reads():  # on each worker: reads that reach one voxel fail (a bad disk sector)
        from cellcut.segmentation import cluster

        opened = cluster._input

        class Failing:
            def __init__(self, data):
                self.data, self.shape, self.dtype = data, data.shape, data.dtype

            def __getitem__(self, region):
                if all(r.start <= b < r.stop for r, b in zip(region, bad, strict=True)):
                    with open(log, "a") as f:
                        f.write("failed\n")
                    raise OSError("read error")
                return self.data[region]

        cluster._original_input = opened
        cluster._input = lambda source: Failing(opened(source))

    def mend_reads():
        from cellcut.segmentation import cluster

        cluster._input = cluster._original_input

    client.run(break_reads)
    try:
        with pytest.raises(ClusterError) as info:
            segment(tmp_path / "img.tif", None, model=model, block=16, window=16, denoise=0,
                    cluster=client)  # fmt: skip
    finally:
        client.run(mend_reads)
    message = str(info.value)
    assert "failed in probability" in message and "OSError: read error (tried 3 times)" in message
    assert "\n" not in message
    grid = blocks((32, 32, 32), (16, 16, 16), prediction_halo((16, 16, 16), (32, 32, 32)))
    reaching = [
        ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", blk.core, strict=True))
        for blk in grid
        if all(o.start <= b < o.stop for o, b in zip(blk.outer, bad, strict=True))
    ]
    assert any(f"({where})" in message for where in reaching)
    assert len(Path(log).read_text().splitlines()) >= 3  # tried again before giving up


@pytest.mark.parametrize("value", ["local:0", "local:x", "somewhere"])
def test_bad_cluster_setting_is_one_line_before_any_work(tmp_path, capsys, value):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8, 8), np.uint8))
    assert main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "l.tif"),
                 "--cluster", value]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "cluster" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif"]
    with pytest.raises(ConfigError):
        segment(tmp_path / "img.tif", None, cluster=value)


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cellcut.segmentation.cluster.CONNECT_TIMEOUT_S", 2)
    tifffile.imwrite(tmp_path / "img.tif", np.arange(512, dtype=np.uint16).reshape(8, 8, 8))
    code = main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "l.tif"),
                 "--cluster", "tcp://127.0.0.1:9"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the cluster" in err[0]
    assert not Path(tmp_path / "l.tif").exists()


def test_workers_reopen_a_replaced_file_and_keep_few_open(tmp_path, client):
    model = untrained_model(tmp_path / "m.pt")
    settings = dict(model=model, block=16, window=16, denoise=0)
    results = []
    for seed in range(6):  # the same path rewritten, then other files
        v = make_nuclei_volume((16, 32, 32 + seed), seed=seed, voxel_size=(1, 1, 1),
                               radius_um=(3, 5))  # fmt: skip
        path = tmp_path / ("img.tif" if seed < 2 else f"img{seed}.tif")
        tifffile.imwrite(path, v.image)
        two = segment(path, None, cluster=client, **settings)
        one = segment(path, None, **settings)
        results.append(np.array_equal(one.labels, two.labels))
    assert all(results)  # the rewritten img.tif was read again, not served from the cache

    def inputs_open():
        from cellcut.segmentation import cluster

        return sum(1 for key in cluster._OPENED if key[0] == "input")

    assert max(client.run(inputs_open).values()) <= 4
