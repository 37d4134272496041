#!/usr/bin/env python
"""Fine-tuning variants side by side on the regime suite: which weights a fine-tune should train.

Every (volume, variant) pair is one job: ``cellcut train --from-pretrained default`` on the
volume for ``--steps`` steps with the variant's settings, then ``cellcut.segment`` with the
result, scored against the volume's ground truth (instance F1 at IoU 0.5, foreground Dice);
``zero-shot`` segments with the starting model itself. Jobs run in ``--workers`` processes
(one CPU thread each), so a lent GPU serves many fine-tunes at once; on a 2-core CPU use
``--workers 1`` (or ``benchmarks/bench_regimes.py``, which runs the same cases one by one).

Variants (settings on top of the defaults):

- ``all``: ``optimizer.trainable=all``, every weight trains (the previous default);
- ``norms``: ``optimizer.trainable=norms``, the classifier's normalization layers and last layer
  and the decoder (what ``auto`` gives a fine-tune that keeps the model's classes);
- ``norms-unanchored``: ``norms`` without the pull back to the starting weights
  (``optimizer.anchor=0``);
- ``norms-anchor30``: ``norms`` with a pull 10x weaker than the default's
  (``optimizer.anchor=30``: 3% of the way back per step at the default learning rate);
- ``norms-anchor100``: ``norms`` with a pull 3x weaker than the default's, between the two;
- ``norms-anchor30-nointensity``: ``norms-anchor30`` without the class-intensity term
  (``loss.intensity_weight=0``), to test whether that term shrinks the fine-tuned foreground;
- ``norms-seed1``, ``norms-anchor30-seed1``: ``norms`` and ``norms-anchor30`` with another
  sampling seed (``seed=1``: other patches and augmentations), to measure a repeat's wobble;
- ``auto``: the defaults as they are;
- ``augment``: ``all`` with strong intensity, blur and noise changes on the network's input only
  (the recipe of ``configs/general_model.yaml``).

Volumes: ``REGIME/SEED`` of :data:`cellcut.synthetic.REGIMES` (scoring seeds), ``dev/SEED``
(``bench_regimes.py``'s development volumes, drawn from the training distribution) and
``embryo-8cell`` / ``embryo-16cell`` (../shared/data, or ``$CELLCUT_SHARED/data``; skipped
where absent).

Usage::

    .venv/bin/python benchmarks/bench_finetune.py --seeds 0 --variants zero-shot all norms \\
        [--steps 340] [--device cuda --workers 12] [--out finetune]

Prints a table (F1 per volume and variant, and each variant's mean, worst and count of volumes
more than 0.02 below zero-shot) and writes ``benchmarks/results/NAME.json``; every finished job
is appended to ``benchmarks/results/NAME.jsonl`` as it ends, so a run cut short keeps them; a run
stopped with Ctrl-C or ``kill`` still writes the JSON of the jobs that finished (``cut_short``).
Without ``zero-shot`` among the variants, ``--zero-shot-from NAME`` takes it from an earlier
run's JSON for the summary. With ``--runs DIR`` every fine-tune is kept there, and a later run
with the same ``DIR`` scores the kept models again instead of training them (after a change to
the instance step, say).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

AUGMENT = {
    "augment.input_only": "true",
    "augment.noise": "0.3",
    "augment.blur": "1.0",
    "augment.gamma": "0.4",
    "augment.intensity_scale": "0.3",
    "augment.intensity_shift": "0.1",
}
VARIANTS: dict[str, dict[str, str] | None] = {
    "zero-shot": None,
    "all": {"optimizer.trainable": "all"},
    "norms": {"optimizer.trainable": "norms"},
    "norms-seed1": {"optimizer.trainable": "norms", "seed": "1"},  # the default, another draw
    "norms-unanchored": {"optimizer.trainable": "norms", "optimizer.anchor": 0.0},
    "norms-anchor30": {"optimizer.trainable": "norms", "optimizer.anchor": 30.0},
    "norms-anchor100": {"optimizer.trainable": "norms", "optimizer.anchor": 100.0},
    "norms-anchor30-seed1": {"optimizer.trainable": "norms", "optimizer.anchor": 30.0, "seed": "1"},
    "norms-anchor30-nointensity": {
        "optimizer.trainable": "norms",
        "optimizer.anchor": 30.0,
        "loss.intensity_weight": 0.0,
    },
    "auto": {},
    "augment": {"optimizer.trainable": "all", **AUGMENT},
}
MARGIN = 0.02  # the bar: a fine-tune never more than this below zero-shot


def job(spec: tuple[str, str, int, str, str | None]) -> dict:
    """One fine-tune (or zero-shot) on one volume, scored; with ``runs``, the fine-tune is kept
    in ``runs/VOLUME/VARIANT`` and, where it is there already, scored again, not retrained."""
    volume, variant, steps, device, runs = spec
    import torch

    import bench_regimes

    harness.THREADS = 1  # cellcut_side sets torch's threads from it
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    found = _volume(volume)
    if found is None:
        return {"volume": volume, "variant": variant, "skipped": "volume not found"}
    image, truth, voxel_size = found
    settings = VARIANTS[variant]
    with contextlib.ExitStack() as stack:
        if runs:
            folder = Path(runs) / volume.replace("/", "-") / variant
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        result = bench_regimes.cellcut_side(
            "zero-shot" if settings is None else "fine-tune",
            image,
            truth,
            voxel_size,
            folder,
            1e6,  # minutes: the steps decide
            "default",
            device,
            None if settings is None else {**settings, "stop.steps": str(steps)},
        )
    return {"volume": volume, "variant": variant, "s": round(time.perf_counter() - t0, 1), **result}


def _volume(name: str):
    import bench_regimes

    if name.startswith("dev/"):
        v = bench_regimes.development_volume(int(name[4:]))
        return v.image, v.labels, v.voxel_size
    if "/" in name:
        regime, seed = name.rsplit("/", 1)
        _, image, truth, voxel_size = next(bench_regimes.volumes([regime], [int(seed)], False))
        return image, truth, voxel_size
    for found, image, truth, voxel_size in bench_regimes.volumes([], [], True):
        if found == name:
            return image, truth, voxel_size
    return None


def summary(rows: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant: mean F1, and against zero-shot on the same volumes the mean difference,
    the worst one and how many are more than :data:`MARGIN` below."""
    by_volume: dict[str, dict[str, float]] = {}
    for r in rows:
        if "f1" in r:
            by_volume.setdefault(r["volume"], {})[r["variant"]] = r["f1"]
    out = {}
    for v in variants:
        pairs = [(s[v], s["zero-shot"]) for s in by_volume.values() if v in s and "zero-shot" in s]
        if not pairs:
            continue
        diffs = [a - b for a, b in pairs]
        out[v] = {
            "volumes": len(pairs),
            "mean_f1": round(sum(a for a, _ in pairs) / len(pairs), 4),
            "mean_vs_zero_shot": round(sum(diffs) / len(diffs), 4),
            "worst_vs_zero_shot": round(min(diffs), 4),
            "below_by_more_than_margin": sum(d < -MARGIN for d in diffs),
        }
    return out


def earlier_zero_shot(name: str, volumes: list[str]) -> list[dict]:
    """The zero-shot rows of ``benchmarks/results/NAME.json`` for ``volumes``."""
    path = harness.RESULTS / f"{name}.json"
    rows = json.loads(path.read_text())["rows"]
    found = [r for r in rows if r.get("variant") == "zero-shot" and r.get("volume") in volumes]
    missing = sorted(set(volumes) - {r["volume"] for r in found})
    if missing:
        print(f"no zero-shot in {path.name} for {missing}: left out of the summary", flush=True)
    return found


def main() -> None:
    from cellcut.synthetic import REGIMES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--regimes", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-embryo", action="store_true")
    ap.add_argument(
        "--volumes", nargs="*", default=[], help="REGIME/SEED, dev/SEED or embryo-Ncell"
    )
    ap.add_argument("--variants", nargs="+", default=["zero-shot", "all", "norms"])
    ap.add_argument("--steps", type=int, default=340, help="340: what 5 minutes gave on 2 cores")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="finetune")
    ap.add_argument(
        "--runs", default=None, help="keep each fine-tune here; one found there is scored again"
    )
    ap.add_argument(
        "--zero-shot-from",
        metavar="NAME",
        help="without zero-shot among --variants: compare with the zero-shot rows of an earlier "
        "run (benchmarks/results/NAME.json; valid while the starting model and the instance "
        "step are those it ran with)",
    )
    args = ap.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}: choose from {list(VARIANTS)}")
    volumes = args.volumes or [f"{r}/{s}" for s in args.seeds for r in args.regimes]
    if not args.volumes and not args.no_embryo:
        volumes += ["embryo-8cell", "embryo-16cell"]
    jobs = [(v, k, args.steps, args.device, args.runs) for v in volumes for k in args.variants]
    harness.RESULTS.mkdir(exist_ok=True)
    log = harness.RESULTS / f"{args.out}.jsonl"
    rows: list[dict] = []
    t0 = time.perf_counter()
    context = mp.get_context("spawn")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: keep what finished
    cut_short = False
    try:
        with context.Pool(args.workers, maxtasksperchild=1) as pool, log.open("w") as f:
            for r in pool.imap_unordered(job, jobs):
                rows.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(f"[{time.perf_counter() - t0:6.0f} s] {r}", flush=True)
    except KeyboardInterrupt:
        cut_short = True
        print(f"cut short: {len(rows)} of {len(jobs)} jobs finished", flush=True)
    baseline = earlier_zero_shot(args.zero_shot_from, volumes) if args.zero_shot_from else []
    stats = summary(rows + baseline, args.variants)
    harness.write_json(
        args.out,
        {
            "steps": args.steps,
            "device": args.device,
            "workers": args.workers,
            "cut_short": cut_short,
            "machine": harness.machine(),
            "rows": rows,
            "summary": stats,
            "zero_shot_from": args.zero_shot_from,
        },
    )
    f1 = {(r["volume"], r["variant"]): r.get("f1") for r in rows}
    table = [[v, *[f1.get((v, k)) for k in args.variants]] for v in volumes]
    print(harness.table(table, ["volume", *args.variants]))
    for k, s in stats.items():
        print(f"{k}: {s}")


if __name__ == "__main__":
    main()
