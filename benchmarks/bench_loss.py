#!/usr/bin/env python
"""Soft N-cut loss, forward + backward: cellcut's ``exact`` and ``fast`` against the reference.

Setting (issue 3): σ_X = 4, σ_I = 1 on data remapped to 0..100, K = 2, batch 1, radius 2 and 5,
patches of 64³ and 128³. The input is a synthetic nuclei volume, the same file for both sides.
The reference's SoftNCutsLoss approximates a different objective (see README); only speed and
memory are compared here, correctness is tested against our exact loss and a dense reference.

Usage::

    .venv/bin/python benchmarks/bench_loss.py [--sizes 64 128] [--radii 2 5] [--rounds 3]

Prints a table and writes ``benchmarks/results/loss.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def run_case(argv: list[str]) -> None:
    side, size, radius, method, folder = argv
    import numpy as np
    import torch

    torch.set_num_threads(harness.THREADS)
    image = torch.from_numpy(np.load(Path(folder) / f"image{size}.npy"))[None, None]
    logits = torch.from_numpy(np.load(Path(folder) / f"logits{size}.npy"))[None]
    probs = torch.softmax(logits, 1).detach().requires_grad_()
    s = int(size)
    if side == "reference":
        import anchor_import as ref

        loss = ref.SoftNCutsLoss(
            data_shape=(s, s, s),
            device="cpu",
            intensity_sigma=1.0,
            spatial_sigma=4.0,
            radius=int(radius),
        )
    else:
        from cellcut.losses import SoftNCutLoss

        loss = SoftNCutLoss(1.0, 4.0, radius=float(radius), method=method)

    def step() -> None:
        probs.grad = None
        loss(probs, image).backward()

    result = harness.time_calls(step, warmup=1, runs=3 if s > 64 else 5)
    result["value"] = float(loss(probs, image))
    if side == "cellcut":
        result["method_used"] = loss.last_method
    harness.emit(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--radii", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)

    import numpy as np

    from cellcut.normalize import normalize
    from cellcut.synthetic import make_nuclei_volume

    ref_python = None if args.no_reference else harness.anchor_python()
    folder = Path(tempfile.mkdtemp(prefix="cellcut-bench-loss-"))
    for s in args.sizes:
        vol = make_nuclei_volume((s, s, s), seed=0, voxel_size=(1.0, 1.0, 1.0))
        np.save(folder / f"image{s}.npy", normalize(vol.image, "remap"))
        rng = np.random.default_rng(0)
        np.save(folder / f"logits{s}.npy", rng.normal(size=(2, s, s, s)).astype(np.float32))
    script = Path(__file__).resolve()
    cases = []
    for s in args.sizes:
        for r in args.radii:
            for method in ("fast", "exact"):
                cases.append(
                    (
                        f"cellcut {method} {s}^3 r={r}",
                        lambda s=s, r=r, m=method: harness.run_subprocess_case(
                            sys.executable, script, ["cellcut", str(s), str(r), m, str(folder)]
                        ),
                    )
                )
            if ref_python is not None:
                cases.append(
                    (
                        f"reference {s}^3 r={r}",
                        lambda s=s, r=r: harness.run_subprocess_case(
                            ref_python, script, ["reference", str(s), str(r), "-", str(folder)]
                        ),
                    )
                )
    raw = harness.interleave(cases, args.rounds)
    summary = {name: harness.summarise(runs) for name, runs in raw.items()}

    rows = []
    for s in args.sizes:
        for r in args.radii:
            ref = summary.get(f"reference {s}^3 r={r}", {})
            for method in ("fast", "exact"):
                ours = summary[f"cellcut {method} {s}^3 r={r}"]
                speedup = (
                    ref["median_s"] / ours["median_s"]
                    if "median_s" in ref and "median_s" in ours
                    else None
                )
                mem = (
                    ours.get("extra_peak_mb", 0) / ref["extra_peak_mb"]
                    if ref.get("extra_peak_mb")
                    else None
                )
                rows.append(
                    [
                        f"{s}^3",
                        r,
                        f"{method} ({ours.get('method_used', '?')})",
                        ours.get("median_s"),
                        ref.get("median_s"),
                        speedup,
                        ours.get("extra_peak_mb"),
                        ref.get("extra_peak_mb"),
                        mem,
                    ]
                )
    print(
        harness.table(
            rows,
            [
                "size",
                "radius",
                "cellcut method",
                "cellcut s",
                "reference s",
                "speed-up",
                "cellcut MB",
                "reference MB",
                "memory ratio",
            ],
        )
    )
    path = harness.write_json(
        "loss", {"machine": harness.machine(), "summary": summary, "raw": raw}
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
