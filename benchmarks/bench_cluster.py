#!/usr/bin/env python
"""Segmentation on dask.distributed workers against one process, and a whole-brain estimate.

A synthetic nuclei volume (default 256³, voxel 1 µm, written as zarr) is segmented with the
shipped model, block 128, the default settings, three ways in one run, each in a fresh
process: one process (2 torch threads), ``LocalCluster`` of 1 worker (2 threads) and of 2
workers (1 thread each). Reports wall time per stage, voxels per second, whether the labels
equal the one-process labels, the workers' peak RSS, and the median time of one block per
stage on a worker (from dask's task stream). From the 2-worker per-block times it
estimates a whole mouse brain (``--brain-voxels``, default 2×10¹⁰) on N such workers.

Usage::

    .venv/bin/python benchmarks/bench_cluster.py [--size 256] [--block 128]

Writes ``benchmarks/results/cluster.json``.
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
    image, out, block, workers = argv[0], argv[1], int(argv[2]), int(argv[3])
    import numpy as np
    import torch

    from cellcut.segmentation import segment

    torch.set_num_threads(harness.THREADS)
    clock = harness.StageClock()
    t0 = time.perf_counter()
    settings = dict(block=block, voxel_size=(1.0, 1.0, 1.0), progress=clock)
    extra: dict = {}
    if not workers:
        result = segment(image, Path(out) / "labels.zarr", **settings)
    else:
        import distributed

        from cellcut.segmentation.cluster import connect

        with connect(f"local:{workers}") as client:  # cores / workers threads each
            started = time.perf_counter()
            with distributed.get_task_stream(client) as stream:
                result = segment(image, Path(out) / "labels.zarr", cluster=client, **settings)
            extra["segment_s"] = time.perf_counter() - started

            def peak() -> int:
                import resource

                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

            extra["worker_peak_rss_mb"] = [v / 2**20 for v in client.run(peak).values()]
            per_stage: dict[str, list[float]] = {}
            for task in stream.data:
                stage = str(task["key"]).split("-")[1] if "cellcut-" in str(task["key"]) else None
                spans = [s for s in task.get("startstops", []) if s["action"] == "compute"]
                if stage and spans:
                    per_stage.setdefault(stage, []).append(spans[0]["stop"] - spans[0]["start"])
            extra["block_s"] = {k: float(np.median(v)) for k, v in per_stage.items()}
            extra["blocks"] = {k: len(v) for k, v in per_stage.items()}
    harness.emit(
        {
            "total_s": time.perf_counter() - t0,
            "stages_s": clock.seconds,
            "cells": result.n_cells,
            "peak_rss_mb": harness.peak_rss_bytes() / 2**20,
            **extra,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--brain-voxels", type=float, default=2e10)
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)
    import numpy as np
    import zarr

    folder = Path(tempfile.mkdtemp(prefix="cellcut-cluster-"))
    harness.tiled_nuclei(folder, args.size)
    results = {}
    for name, workers in (("one process", 0), ("1 worker", 1), ("2 workers", 2)):
        out = folder / name.replace(" ", "-")
        out.mkdir()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", str(folder / "image.zarr"),
               str(out), str(args.block), str(workers)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.case_env())
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise SystemExit(proc.stderr[-3000:])
        results[name] = json.loads(line[-1][7:])
        print(f"{name}: {results[name]['total_s']:.1f} s", file=sys.stderr)
    reference = np.asarray(zarr.open_array(str(folder / "one-process" / "labels.zarr"))[...])
    voxels = args.size**3
    rows = []
    for name, r in results.items():
        labels = np.asarray(
            zarr.open_array(str(folder / name.replace(" ", "-") / "labels.zarr"))[...]
        )
        r["identical"] = bool(np.array_equal(labels, reference))
        r["voxels_differing"] = int(np.count_nonzero(labels != reference))
        pairs = np.unique(np.stack([labels.ravel(), reference.ravel()]), axis=1)
        r["same_partition"] = len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
        waves = sum(r["stages_s"].get(k, 0.0) for k in ("probability", "instances", "merge"))
        r["client_s"] = r.get("segment_s", r["total_s"]) - waves
        r["voxels_per_s"] = voxels / r["total_s"]
        rows.append([
            name, r["total_s"], r["stages_s"].get("probability"), r["stages_s"].get("instances"),
            r["stages_s"].get("merge"), r["client_s"], r["voxels_per_s"], r["cells"],
            r["identical"], r["voxels_differing"],
            r["peak_rss_mb"], max(r.get("worker_peak_rss_mb", [0])) or None,
        ])  # fmt: skip
    two = results["2 workers"]
    per_block = sum(two["block_s"].values())  # one block through every stage, one worker
    block_voxels = args.block**3
    estimate = {
        "brain_voxels": args.brain_voxels,
        "block_voxels": block_voxels,
        "worker_s_per_block": per_block,
        "worker_threads": 1,
        "worker_peak_rss_mb": max(two["worker_peak_rss_mb"]),
        "hours_on": {
            n: args.brain_voxels / block_voxels * per_block / n / 3600 for n in (1, 16, 64, 256)
        },
        # what the client does alone (fingerprint, normalization, statistics, writing) grows
        # with the volume too: scaled from this run
        "client_hours": two["client_s"] * args.brain_voxels / voxels / 3600,
    }
    print(harness.table(rows, ["run", "total s", "probability s", "instances s", "merge s",
                               "rest s", "voxels/s", "cells", "identical", "voxels differing",
                               "peak RSS MB (client)", "worker peak RSS MB"]))  # fmt: skip
    print(
        f"per block of {args.block}³ on one 1-thread worker: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in two["block_s"].items())
        + f"; a {args.brain_voxels:.0e}-voxel brain: "
        + ", ".join(f"{v:.1f} h on {n}" for n, v in estimate["hours_on"].items())
        + f", plus {estimate['client_hours']:.1f} h of the client's own work"
    )
    payload = {
        "size": args.size,
        "block": args.block,
        "runs": results,
        "estimate": estimate,
        "machine": harness.machine(),
    }
    print(f"written: {harness.write_json('cluster', payload)}")


if __name__ == "__main__":
    main()
