#!/usr/bin/env python
"""One W-Net training step at 64³, batch 1: forward, both losses, backward, optimizer step.

Sides, interleaved round by round in fresh processes:

- ``cellcut compact``: the default model with cellcut's soft N-cut (σ_I 1, σ_X 4, radius 2,
  as the reference's training default), MSE, weights 0.5/0.5, AdamW;
- ``cellcut cellseg3d``: the reference's architecture (50.5M parameters) with cellcut's loss;
- ``reference``: napari-cellseg3d 0.2.4's default WNet step (its worker's code path: remap,
  its SoftNCutsLoss radius 2, MSE, Adam lr 2e-5).

Usage::

    .venv/bin/python benchmarks/bench_train_step.py [--rounds 3] [--size 64]

Prints a table and writes ``benchmarks/results/train_step.json``.
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
    raw = torch.rand(1, 1, size, size, size) * 1000.0
    if side == "reference":
        import anchor_import as ref

        torch.use_deterministic_algorithms(True, warn_only=True)  # as its worker does
        model = ref.WNet(in_channels=1, out_channels=1, num_classes=2, dropout=0.65)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-5, weight_decay=0.01)
        ncut = ref.SoftNCutsLoss(
            data_shape=(size,) * 3,
            device="cpu",
            intensity_sigma=1.0,
            spatial_sigma=4.0,
            radius=2,
        )
        mse = torch.nn.MSELoss()

        def step() -> None:
            image = ref.remap_image(raw.clone()[0, 0])[None, None]
            enc, dec = model(image)
            loss = 0.5 * ncut(enc, image) + 0.5 * mse(dec, image)
            opt.zero_grad()
            loss.backward()
            opt.step()

        n_params = sum(p.numel() for p in model.parameters())
    else:
        from cellcut.losses import ReconstructionLoss, SoftNCutLoss, WNetLoss
        from cellcut.model import WNet3D, count_parameters
        from cellcut.normalize import normalize

        model = WNet3D(side.split()[-1])
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        loss_fn = WNetLoss(SoftNCutLoss(1.0, 4.0, radius=2), ReconstructionLoss("mse"), 0.5, 0.5)

        def step() -> None:
            image = torch.from_numpy(normalize(raw[0, 0].numpy()))[None, None]
            out = model(image)
            loss = loss_fn(out.probs, out.reconstruction, image)
            opt.zero_grad()
            loss.total.backward()
            opt.step()

        n_params = count_parameters(model)
    result = harness.time_calls(step, warmup=1, runs=5 if side != "reference" else 3)
    result["n_params"] = n_params
    harness.emit(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)
    ref_python = None if args.no_reference else harness.anchor_python()
    script = Path(__file__).resolve()
    size = str(args.size)
    cases = [
        (side, lambda side=side: harness.run_subprocess_case(sys.executable, script, [side, size]))
        for side in ("cellcut compact", "cellcut cellseg3d")
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
        speed = ref["median_s"] / s["median_s"] if "median_s" in ref and "median_s" in s else None
        mem = (
            s["peak_rss_mb"] / ref["peak_rss_mb"]
            if ref.get("peak_rss_mb") and "peak_rss_mb" in s
            else None
        )
        rows.append(
            [
                name,
                s.get("n_params"),
                s.get("median_s"),
                speed,
                s.get("peak_rss_mb"),
                mem,
                s.get("error", ""),
            ]
        )
    print(
        harness.table(
            rows,
            [
                "side",
                "parameters",
                "step s",
                "speed-up vs reference",
                "peak RSS MB",
                "memory vs reference",
                "error",
            ],
        )
    )
    path = harness.write_json(
        "train_step",
        {"machine": harness.machine(), "size": args.size, "summary": summary, "raw": raw},
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
