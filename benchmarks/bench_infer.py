#!/usr/bin/env python
"""Inference speed: voxels per second of the encoder over a 128³ volume, side by side.

- ``reference``: napari-cellseg3d 0.2.4's WNet encoder through MONAI's sliding_window_inference
  with its defaults (64³ windows, overlap 0.25, batch 1, gaussian blending), as its worker does;
- ``cellcut 64``: the compact default model, cellcut's sliding window with the same window and
  overlap, 2 windows per batch;
- ``cellcut 96``: the same with 96³ windows (fewer, larger windows);
- ``cellcut cellseg3d``: the reference's architecture under cellcut's inference, for scale.

Random weights give the same speed as trained ones. Usage::

    .venv/bin/python benchmarks/bench_infer.py [--size 128] [--rounds 2]

Prints a table and writes ``benchmarks/results/infer.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def run_case(argv: list[str]) -> None:
    side, size = argv[0], int(argv[1])
    import torch

    torch.set_num_threads(harness.THREADS)
    torch.manual_seed(0)
    vol = torch.rand(1, 1, size, size, size) * 1000.0
    if side == "reference":
        import anchor_import as ref
        from monai.inferers import sliding_window_inference

        model = ref.WNet_(in_channels=1, out_channels=2)
        model.eval()

        def full() -> None:
            with torch.no_grad():
                sliding_window_inference(
                    vol,
                    roi_size=[64, 64, 64],
                    sw_batch_size=1,
                    predictor=lambda x: ref.remap_image(model(x), new_max=1.0, new_min=0.0),
                    sw_device="cpu",
                    device="cpu",
                    overlap=0.25,
                    mode="gaussian",
                    sigma_scale=0.01,
                    progress=False,
                )
    else:
        from cellcut.infer import sliding_window
        from cellcut.model import WNet3D

        preset = "cellseg3d" if side.endswith("cellseg3d") else "compact"
        window = 96 if side.endswith("96") else 64
        model = WNet3D(preset).eval()
        data = vol[0, 0].numpy()

        def full() -> None:
            sliding_window(
                data,
                lambda b: model.encode(b / 1000.0),
                2,
                window=(window,) * 3,
                overlap=0.25,
                batch_size=2,
            )

    result = harness.time_calls(full, warmup=1, runs=2)
    result["voxels_per_s"] = size**3 / result["median_s"]
    harness.emit(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--with-cellseg3d", action="store_true")
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)
    ref_python = None if args.no_reference else harness.anchor_python()
    script = Path(__file__).resolve()
    size = str(args.size)
    sides = ["cellcut 64", "cellcut 96"] + (["cellcut cellseg3d"] if args.with_cellseg3d else [])
    cases = [
        (s, lambda s=s: harness.run_subprocess_case(sys.executable, script, [s, size]))
        for s in sides
    ]
    if ref_python is not None:
        cases.append(
            (
                "reference",
                lambda: harness.run_subprocess_case(ref_python, script, ["reference", size]),
            )
        )
    raw = harness.interleave(cases, args.rounds)
    summary = {name: harness.summarise(runs) for name, runs in raw.items()}
    ref = summary.get("reference", {})
    rows = []
    for name, s in summary.items():
        vps = s.get("voxels_per_s")
        ratio = vps / ref["voxels_per_s"] if vps and ref.get("voxels_per_s") else None
        rows.append([name, s.get("median_s"), vps, ratio, s.get("peak_rss_mb"), s.get("error", "")])
    print(
        harness.table(rows, ["side", "seconds", "voxels/s", "vs reference", "peak RSS MB", "error"])
    )
    path = harness.write_json(
        "infer", {"machine": harness.machine(), "size": args.size, "summary": summary, "raw": raw}
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
