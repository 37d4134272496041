"""``torchrun --nproc-per-node 2 cellcut train`` on CPU (gloo): DistributedDataParallel, each
rank its own patches, rank 0 alone writes, and ``--resume`` continues exactly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import tifffile
import torch

from cellcut.model import Checkpoint
from cellcut.synthetic import make_nuclei_volume

pytestmark = pytest.mark.slow

SETTINGS = [
    "--set", "model.base_width=4", "model.depth=2", "data.patch_size=[16,32,32]",
    "data.batch_size=1", "data.val_patches=1", "log.every=2", "log.checkpoint_every=100",
    "log.plots=false", "optimizer.lr=0.01",
]  # fmt: skip


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "cellcut", "train", *args, "--quiet", "--device", "cpu"]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    v = make_nuclei_volume((32, 48, 48), seed=2, voxel_size=(1.5, 1, 1), radius_um=(3, 5))
    tifffile.imwrite(folder / "img.tif", v.image)
    return folder / "img.tif"


def test_two_ranks_train_one_model_and_rank_0_alone_writes(tmp_path, image):
    done = _torchrun(tmp_path, str(image), "--out", "run", "--steps", "6", *SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stopped after 6 steps") == 1  # rank 0 reports
    ckpt = Checkpoint.load(tmp_path / "run")
    assert ckpt.step == 6 and ckpt.final
    assert len(ckpt.ranks) == 2
    samplers = [r["sampler_rng"] for r in ckpt.ranks]
    assert samplers[0] != samplers[1]  # each rank draws its own patches
    with open(tmp_path / "run" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [2, 4, 6]  # one writer
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt", "config.yaml", "metrics.csv"
    ]  # fmt: skip


def test_two_ranks_resume_exactly(tmp_path, image):
    whole = _torchrun(tmp_path, str(image), "--out", "whole", "--steps", "6", *SETTINGS)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _torchrun(tmp_path, str(image), "--out", "part", "--steps", "3", *SETTINGS)
    assert first.returncode == 0, first.stderr[-3000:]
    assert Checkpoint.load(tmp_path / "part").step == 3
    rest = _torchrun(tmp_path, "--out", "part", "--resume", "--steps", "6")
    assert rest.returncode == 0, rest.stderr[-3000:]
    a, b = Checkpoint.load(tmp_path / "whole"), Checkpoint.load(tmp_path / "part")
    assert b.step == 6
    for name, value in a.model.items():
        assert torch.equal(b.model[name], value), name  # to the bit
    assert [r["ncut"] for r in a.history] == pytest.approx([r["ncut"] for r in b.history])
