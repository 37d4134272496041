#!/usr/bin/env python
"""Quality across imaging regimes: the volumes users bring, each with ground truth.

Each regime of :data:`cellcut.synthetic.REGIMES` (light-sheet sparse, plant-tissue confocal
dense and grainy, dim, packed, small, large, anisotropic, unevenly lit, saturated 8-bit, nuclei
in a dim tissue body) is generated at scoring seeds (below 1000; the shipped model trains on
seeds from 1000 with its own parameter draws), plus the real embryo volumes of ../shared/data
where present; with ``--development N``, also N development volumes drawn from the training
distribution at seeds of their own (``dev/SEED``, :data:`DEVELOPMENT_SEED_BASE`), on which a
rule is designed before the suite checks it. Per volume:

- ``voronoi-otsu`` and ``watershed``: the classical methods on the raw image, automatic
  parameters (cellcut.postprocess with Otsu's threshold; the seed distance and speck floor
  from the image's fingerprint alone: cellcut's own instance step also hears its model's
  foreground, :func:`cellcut.segmentation.labelling.object_scale`);
- ``zero-shot``: ``cellcut.segment`` with the shipped model and the default settings;
- ``fine-tune``: ``cellcut train --from-pretrained default`` on the volume for ``--minutes``,
  then segment;
- ``scratch``: ``cellcut train`` from a fresh model for ``--minutes``, then segment;
- ``reference``: napari-cellseg3d 0.2.4's WNet3D trained ``--minutes`` with its defaults (only
  for the regimes named with ``--reference``: it is slow), segmented and split into instances
  by the same Voronoi-Otsu step.

Scores: instance F1 at IoU 0.5 and foreground Dice. Every training runs on 2 threads.
``--runs DIR`` keeps the training runs (``DIR/VOLUME/SIDE``); a later call with the same
``--runs`` scores the kept runs again instead of retraining them.

Usage::

    .venv/bin/python benchmarks/bench_regimes.py [--minutes 5] [--sides ...] [--regimes ...] \\
        [--development 60]

Prints a table, writes ``benchmarks/results/NAME.json`` (``--out NAME``, default ``regimes``)
and, for the default name or with ``--plot PATH``, the figure (``docs/regimes.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

SIDES = ("voronoi-otsu", "watershed", "zero-shot", "fine-tune", "scratch", "reference")
EMBRYO_VOXEL = (2.18, 1.0, 1.0)


DEVELOPMENT_SEED_BASE = 90000
"""Development volumes: generator settings drawn by :func:`cellcut.synthetic.random_regime`
(the training distribution) at seeds from here, far from the training volumes' (1000 on) and
never scored in the suite's table: what a rule is designed on before the suite checks it."""


def development_volume(seed: int):
    """The development volume of ``seed`` (:data:`DEVELOPMENT_SEED_BASE` and up): its settings
    drawn from a generator of that seed, its nuclei made with the same seed."""
    import numpy as np

    from cellcut.synthetic import make_nuclei_volume, random_regime

    if seed < DEVELOPMENT_SEED_BASE:
        raise ValueError(f"development seeds start at {DEVELOPMENT_SEED_BASE}")
    return make_nuclei_volume(seed=seed, **random_regime(np.random.default_rng(seed)))


def volumes(
    regimes: list[str],
    seeds: list[int],
    embryo: bool,
    artifacts: bool = False,
    development: int = 0,
):
    """(name, image, labels, voxel size) for every regime and seed (and, with ``artifacts``,
    the same nuclei under every artifact of :data:`cellcut.artifacts.KINDS`), then the first
    ``development`` development volumes (``dev/SEED``), then the embryo volumes."""
    import tifffile

    from cellcut.synthetic import regime_volume

    for seed in range(DEVELOPMENT_SEED_BASE, DEVELOPMENT_SEED_BASE + development):
        v = development_volume(seed)
        yield f"dev/{seed}", v.image, v.labels, v.voxel_size
    for name in regimes:
        for seed in seeds:
            v = regime_volume(name, seed)
            yield f"{name}/{seed}", v.image, v.labels, v.voxel_size
            if artifacts:
                v = regime_volume(name, seed, artifacts=True)
                yield f"{name}/{seed}+artifacts", v.image, v.labels, v.voxel_size
    root = harness.SHARED / "data" / "embryo"
    if embryo and root.exists():
        for n in (8, 16):
            image = tifffile.imread(root / f"{n}cell_image.tif")
            labels = tifffile.imread(root / f"{n}cell_labels_cc.tif")
            yield f"embryo-{n}cell", image, labels, EMBRYO_VOXEL


def score(truth, labels) -> dict:
    from cellcut.metrics import evaluate

    e = evaluate(truth, labels, thresholds=(0.5,))
    return {"f1": round(e.f1_50, 4), "dice": round(e.dice, 4), "n_pred": int(labels.max())}


def classical(image, truth, voxel_size, method: str) -> dict:
    """A classical method on the raw image, with the automatic settings the image's fingerprint
    gives (seed distance, speck floor)."""
    import numpy as np

    from cellcut.fingerprint import measure
    from cellcut.postprocess import instances

    fp = measure(image, voxel_size)
    labels = instances(
        image.astype(np.float32),
        method,
        voxel_size=voxel_size,
        probability=False,
        min_distance=fp.seed_distance(),
        min_volume=fp.speck_volume(),
    )
    return score(truth, labels)


def cellcut_side(
    side,
    image,
    truth,
    voxel_size,
    folder: Path,
    minutes: float,
    model: str,
    device: str = "cpu",
    settings: dict | None = None,
):
    import tifffile
    import torch

    from cellcut.segmentation import segment
    from cellcut.training import train

    torch.set_num_threads(harness.THREADS)
    info: dict = {}
    kept = folder / side / "bench.json"
    if side == "zero-shot":
        use = model
    elif kept.exists():  # a run kept by an earlier --runs: scored again, not retrained
        info = json.loads(kept.read_text())
        use = str(folder / side)
    else:
        path = folder / "image.tif"
        tifffile.imwrite(path, image)
        run = train(
            [path],
            folder / side,
            from_pretrained=model if side == "fine-tune" else None,
            overrides={
                "stop.minutes": minutes,
                "data.voxel_size": list(voxel_size),
                "log.progress": False,
                "log.plots": False,
                "device": device,
                **(settings or {}),
            },
        )
        use = str(run.checkpoint)
        info = {"steps": run.step, "diagnoses": [d.kind for d in run.diagnoses]}
        kept.write_text(json.dumps(info))
    precision = os.environ.get("CELLCUT_BENCH_PRECISION", "float32")
    result = segment(
        image, None, model=use, voxel_size=voxel_size, device=device, precision=precision
    )
    chosen = result.summary.get("instances_chosen")
    return {**score(truth, result.labels), **info, **({"chosen": chosen} if chosen else {})}


def reference_side(image, truth, voxel_size, folder: Path, minutes: float) -> dict:
    """Train the reference in its own venv (a subprocess), segment, score here."""
    import numpy as np
    import tifffile

    from cellcut.scoring import score_class_probabilities

    python = harness.anchor_python()
    if python is None:
        return {}
    path = folder / "image.tif"
    tifffile.imwrite(path, image)
    out = harness.run_subprocess_case(
        python, Path(__file__).resolve(), [str(minutes), str(path), str(folder)]
    )
    probs = np.load(folder / "reference_probs.npy")
    evaluation, _ = score_class_probabilities(probs, image, truth, voxel_size)
    return {"f1": round(evaluation.f1_50, 4), "dice": round(evaluation.dice, 4), **out}


def main() -> None:
    from cellcut.synthetic import REGIMES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--regimes",
        nargs="*",
        default=list(REGIMES),
        choices=list(REGIMES),
        help="synthetic regimes (none: the embryo volumes only)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sides", nargs="+", default=list(SIDES[:5]), choices=SIDES)
    ap.add_argument("--reference", nargs="*", default=[], help="regimes to run the reference on")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--no-embryo", action="store_true")
    ap.add_argument("--artifacts", action="store_true", help="also each regime with artifacts")
    ap.add_argument(
        "--development",
        type=int,
        default=0,
        metavar="N",
        help=f"also the first N development volumes (random_regime, seeds from "
        f"{DEVELOPMENT_SEED_BASE}); the summary gives their mean per side",
    )
    ap.add_argument("--device", default="cpu", help="where cellcut trains and segments")
    ap.add_argument("--out", default="regimes", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument(
        "--plot",
        type=Path,
        help="write the figure of F1 per regime here (default: docs/regimes.png for the default "
        "--out only, so that pilot runs leave no figures in docs/)",
    )
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument(
        "--runs",
        type=Path,
        help="keep the training runs in RUNS/VOLUME/SIDE; a run already there is scored again "
        "instead of retrained (e.g. after a change to the instance step)",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="training settings (train's --set)",
    )
    args = ap.parse_args()
    os.environ["CELLCUT_BENCH_PRECISION"] = args.precision  # read where cases segment

    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    every = volumes(args.regimes, args.seeds, not args.no_embryo, args.artifacts, args.development)
    for name, image, truth, voxel_size in every:
        rows[name] = {}
        sides = list(args.sides)
        if "reference" not in sides and name.split("/")[0] in args.reference:
            sides.append("reference")
        for side in sides:
            with _folder(args.runs, name) as tmp:
                if side in ("voronoi-otsu", "watershed"):
                    result = classical(image, truth, voxel_size, side)
                elif side == "reference":
                    result = reference_side(image, truth, voxel_size, Path(tmp), args.minutes)
                else:
                    result = cellcut_side(
                        side,
                        image,
                        truth,
                        voxel_size,
                        Path(tmp),
                        args.minutes,
                        args.model,
                        args.device,
                        dict(kv.split("=", 1) for kv in args.set),
                    )
            rows[name][side] = result
            print(f"[{time.perf_counter() - t0:6.0f} s] {name} {side}: {result}", flush=True)
        harness.write_json(
            args.out,
            {
                "minutes": args.minutes,
                "model": args.model,
                "device": args.device,
                "settings": args.set,
                "rows": rows,
                "means": means(rows),
            },
        )
    header = ["volume", *[f"{s} F1/Dice" for s in SIDES if any(s in r for r in rows.values())]]
    table = []
    for name, result in rows.items():
        cells = [name]
        for s in SIDES:
            if any(s in r for r in rows.values()):
                r = result.get(s)
                cells.append(f"{r['f1']:.2f}/{r['dice']:.2f}" if r and "f1" in r else "")
        table.append(cells)
    print(harness.table(table, header))
    for kind, by_side in means(rows).items():
        print(f"mean F1, {kind}: " + ", ".join(f"{k} {v}" for k, v in by_side.items()))
    suite = {n: r for n, r in rows.items() if group(n) != "development"}
    figure = args.plot
    if figure is None and args.out == ap.get_default("out"):
        figure = Path(__file__).resolve().parents[1] / "docs" / f"{args.out}.png"
    if suite and figure is not None:
        plot(suite, figure)


def group(name: str) -> str:
    """Which mean a volume counts in: ``development``, ``embryo`` or ``regimes``."""
    if name.startswith("dev/"):
        return "development"
    return "embryo" if name.startswith("embryo") else "regimes"


def means(rows: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Per group of volumes (:func:`group`) and side: mean F1 over the volumes scored, and how
    many."""
    out: dict[str, dict[str, dict]] = {}
    for name, result in rows.items():
        for side, r in result.items():
            if "f1" in r:
                out.setdefault(group(name), {}).setdefault(side, []).append(r["f1"])
    return {
        g: {s: {"mean_f1": round(sum(v) / len(v), 4), "volumes": len(v)} for s, v in sides.items()}
        for g, sides in out.items()
    }


@contextlib.contextmanager
def _folder(runs: Path | None, name: str):
    """Where a volume's training runs go: a temporary folder, or RUNS/VOLUME kept."""
    if runs is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    else:
        folder = runs / name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    sides = [s for s in SIDES if any(s in r for r in rows.values())]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names)), 4))
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        values = [rows[n].get(side, {}).get("f1", np.nan) for n in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=side)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("instance F1 at IoU 0.5")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(sides))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"written: {path}")


def reference_case(minutes: float, path: Path, folder: Path) -> dict:
    """In the reference's venv: its training loop (its worker's defaults, as in
    bench_train_embryo.py) on one volume, then its sliding-window class probabilities."""
    import numpy as np
    import tifffile

    from bench_train_embryo import pad_to_patch, reference_loop, reference_probabilities

    v = tifffile.imread(path).astype(np.float32)
    model, log = reference_loop([pad_to_patch(v)], minutes, lambda *_: None)
    step = len(log)
    model.eval()
    np.save(folder / "reference_probs.npy", reference_probabilities(model, v))
    return {"steps": step}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        minutes, path, folder = float(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
        print("RESULT " + json.dumps(reference_case(minutes, path, folder)), flush=True)
    else:
        main()
