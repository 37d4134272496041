#!/usr/bin/env python
"""Does the true mask beat a cut by position? The soft N-cut's landscape on real patches.

For patches of ../shared/data/embryo (half centred on a nucleus, half anywhere), compares the
soft N-cut of the ground-truth foreground mask with that of the best half-volume split along z,
y or x, for a grid of σ_I (percentile-normalized units) and σ_X; also with the class-intensity
term added (``--intensity-weight``). Prints how often the true mask wins, and writes
``benchmarks/results/ncut_landscape.json``.

Usage::

    .venv/bin/python benchmarks/ncut_landscape.py [--patches 12] [--intensity-weight 1]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=12)
    ap.add_argument("--intensity-weight", type=float, default=1.0)
    args = ap.parse_args()

    import numpy as np
    import tifffile
    import torch

    from cellcut.losses import SoftNCutLoss
    from cellcut.losses.intensity import ClassIntensityLoss, initial_centres
    from cellcut.normalize import normalize

    torch.set_num_threads(harness.THREADS)
    root = harness.SHARED / "data" / "embryo"
    if not root.exists():
        raise SystemExit(f"{root} not found")
    vols = []
    for n in (8, 16):
        img = normalize(tifffile.imread(root / f"{n}cell_image.tif"), "percentile")
        vols.append((img, tifffile.imread(root / f"{n}cell_labels_cc.tif") > 0))
    centres = initial_centres(np.concatenate([v[0].ravel() for v in vols]), 2)
    intensity = ClassIntensityLoss(centres, momentum=0.0).eval()
    rng = np.random.default_rng(0)
    size = (32, 64, 64)
    patches = []
    for i in range(args.patches):
        x, g = vols[i % 2]
        if i < args.patches // 2:
            c = np.argwhere(g)[rng.integers(g.sum())]
            start = [
                int(np.clip(cc - p // 2, 0, s - p))
                for cc, p, s in zip(c, size, x.shape, strict=False)
            ]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(size, x.shape, strict=False)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, size, strict=False))
        patches.append(
            (
                torch.from_numpy(x[sl].astype(np.float32))[None, None],
                torch.from_numpy(g[sl].astype(np.float32))[None, None],
            )
        )

    def two(m):
        return torch.cat([1 - m, m], 1)  # class 0 dark, class 1 bright

    rows, out = [], []
    for sigma_i, sigma_x in itertools.product([1.0, 3.0, 10.0], [1.0, 2.0, 4.0]):
        ncut = SoftNCutLoss(sigma_i, sigma_x, voxel_size=(2.18, 1.0, 1.0))
        wins = wins_combined = 0
        for x, g in patches:
            splits = []
            for ax in (2, 3, 4):
                m = torch.zeros_like(g)
                idx = [slice(None)] * 5
                idx[ax] = slice(0, g.shape[ax] // 2)
                m[tuple(idx)] = 1
                splits.append(m)
            j_true = ncut(two(g), x).item()
            j_pos = [ncut(two(m), x).item() for m in splits]
            wins += j_true < min(j_pos)
            c_true = j_true + args.intensity_weight * intensity(two(g), x).item()
            c_pos = [
                jp + args.intensity_weight * intensity(two(m), x).item()
                for jp, m in zip(j_pos, splits, strict=False)
            ]
            wins_combined += c_true < min(c_pos)
        rows.append([sigma_i, sigma_x, f"{wins}/{len(patches)}", f"{wins_combined}/{len(patches)}"])
        out.append(
            {
                "sigma_i": sigma_i,
                "sigma_x": sigma_x,
                "true_beats_position": wins,
                "with_intensity_term": wins_combined,
                "patches": len(patches),
            }
        )
    print(
        harness.table(
            rows,
            [
                "σ_I",
                "σ_X",
                "N-cut: true mask wins",
                f"N-cut + {args.intensity_weight:g}·intensity: true mask wins",
            ],
        )
    )
    path = harness.write_json(
        "ncut_landscape",
        {"machine": harness.machine(), "rows": out, "intensity_weight": args.intensity_weight},
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
