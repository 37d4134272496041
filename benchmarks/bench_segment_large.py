#!/usr/bin/env python
"""End to end on a large volume: read lazily, probability, instances, statistics, picture.

A synthetic nuclei volume (default 512³, voxel 1 µm) is written to a zarr store, then
``cellcut segment`` runs on it in a fresh process with the shipped default model (random
compact weights where none is shipped: same speed), block 256, window 64, overlap 0.25,
the default instance step (``auto``) and the statistics CSV. Reports wall time per stage,
cells found, F1 at IoU 0.5 against the generator's labels, and peak memory.

Usage::

    .venv/bin/python benchmarks/bench_segment_large.py [--size 512] [--block 256]

Writes ``benchmarks/results/segment_large.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def run_case(argv: list[str]) -> None:
    image, out, block, model, labels_name = argv[0], argv[1], int(argv[2]), argv[3], argv[4]
    cluster = argv[5] if len(argv) > 5 and argv[5] != "-" else None
    import torch

    from cellcut.segmentation import segment

    torch.set_num_threads(harness.THREADS)
    clock = harness.StageClock()
    t0 = time.perf_counter()

    extra = {"cluster": cluster} if cluster else {}
    result = segment(
        image,
        Path(out) / labels_name,
        model=model,
        **extra,
        block=block,
        stats=Path(out) / "cells.csv",
        overview=Path(out) / "overview.png",
        voxel_size=(1.0, 1.0, 1.0),
        progress=clock,
        keep_in_memory=False,
    )
    total = time.perf_counter() - t0
    harness.emit(
        {
            "total_s": total,
            "stages_s": clock.seconds,
            "cells": result.n_cells,
            "peak_rss_mb": harness.peak_rss_bytes() / 2**20,
            "peak_rss_mb_after_stage": clock.peaks,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument(
        "--format",
        default="zarr",
        choices=("zarr", "tif", "ome-zarr"),
        help="the input's format; the labels are written in the same",
    )
    ap.add_argument("--cluster", default="-", help="segment's --cluster (local:N), default none")
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)

    import numpy as np

    from cellcut.metrics import evaluate
    from cellcut.model import WNet3D, resolve_model_path

    folder = Path(tempfile.mkdtemp(prefix="cellcut-large-"))
    t0 = time.perf_counter()
    size = args.size
    img, truth = harness.tiled_nuclei(folder, size)
    print(f"generated {size}³ in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    try:
        model = str(resolve_model_path("default"))
    except Exception:
        from cellcut.model import Checkpoint

        m = WNet3D()
        model = str(folder / "random.pt")
        Checkpoint(
            architecture=m.arch.__dict__,
            model=m.state_dict(),
            config={"data": {"normalization": "percentile"}},
            foreground_classes=[1],
            input_scale=100.0,
        ).save(model)
    image, labels_name = folder / "image.zarr", "labels.zarr"
    if args.format != "zarr":
        from cellcut.io import write_volume

        suffix = {"tif": ".tif", "ome-zarr": ".ome.zarr"}[args.format]
        image = folder / f"image{suffix}"
        write_volume(image, img, voxel_size=(1.0, 1.0, 1.0))  # chunk by chunk / page by page
        labels_name = f"labels{suffix}"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        str(image),
        str(folder),
        str(args.block),
        model,
        labels_name,
        args.cluster,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.case_env())
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(line[-1][7:])
    from cellcut.io import read_volume

    pred = read_volume(folder / labels_name, lazy=True).data
    ev = evaluate(np.asarray(truth[...]), np.asarray(pred[...]), thresholds=(0.5,))
    result.update(
        size=size,
        block=args.block,
        format=args.format,
        cluster=None if args.cluster == "-" else args.cluster,
        f1_50=ev.f1_50,
        dice=ev.dice,
        n_true=ev.n_true,
        voxels_per_s=size**3 / result["total_s"],
        machine=harness.machine(),
    )
    rows = [
        [
            f"{size}^3",
            args.block,
            result["total_s"],
            result["stages_s"].get("probability"),
            result["stages_s"].get("instances"),
            result["cells"],
            ev.n_true,
            ev.f1_50,
            result["peak_rss_mb"],
        ]
    ]
    print(
        harness.table(
            rows,
            [
                "volume",
                "block",
                "total s",
                "probability s",
                "instances s",
                "cells",
                "true cells",
                "F1@0.5",
                "peak RSS MB",
            ],
        )
    )
    name = "segment_large" + ("" if args.format == "zarr" else f"_{args.format}")
    name += "" if args.cluster == "-" else f"_{args.cluster.replace(':', '')}"
    print(f"written: {harness.write_json(name, result)}")


if __name__ == "__main__":
    main()
