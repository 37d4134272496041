#!/usr/bin/env python
"""The shipped model's encoder under PyTorch and under onnxruntime, side by side in one run.

Both sides take the same batches of 64³ windows (batch 2, as ``segment`` uses), in alternating
rounds so that a busy machine slows both alike; the ratio decides whether onnxruntime would be
worth a backend of ``segment``. Needs the ``interop`` extra. Usage::

    .venv/bin/python benchmarks/bench_onnx.py [--rounds 5] [--window 64] [--batch 2]

Prints a table and writes ``benchmarks/results/onnx.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from cellcut.model import load_model, resolve_model_path
    from cellcut.model.export import export_onnx

    torch.set_num_threads(harness.THREADS)
    loaded = load_model(resolve_model_path("default"))
    folder = Path(tempfile.mkdtemp())
    export_onnx(loaded, folder / "model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = harness.THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    w = args.window
    x = torch.rand(args.batch, 1, w, w, w, generator=torch.Generator().manual_seed(0))

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return loaded.model.encode(x).numpy()

    def run_onnx() -> np.ndarray:
        return session.run(None, {"raw": x.numpy()})[0]

    difference = float(np.abs(run_torch() - run_onnx()).max())
    times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    for _ in range(args.rounds):
        for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    voxels = args.batch * w**3
    rows = {}
    for name, ts in times.items():
        median = float(np.median(ts))
        rows[name] = {"median_s": median, "voxels_per_s": voxels / median, "runs_s": ts}
    ratio = rows["pytorch"]["median_s"] / rows["onnxruntime"]["median_s"]
    print(f"{'backend':<12} {'median s':>9} {'voxels/s':>12}   ({args.batch} × {w}³, "
          f"{harness.THREADS} threads, {args.rounds} rounds)")  # fmt: skip
    for name, row in rows.items():
        print(f"{name:<12} {row['median_s']:>9.3f} {row['voxels_per_s']:>12.3g}")
    print(f"onnxruntime speed / PyTorch speed: {ratio:.2f}; max |difference| {difference:.2e}")
    harness.RESULTS.mkdir(exist_ok=True)
    out = {
        "window": w,
        "batch": args.batch,
        "threads": harness.THREADS,
        "rows": rows,
        "onnx_speed_ratio": ratio,
        "max_abs_difference": difference,
    }
    (harness.RESULTS / "onnx.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
