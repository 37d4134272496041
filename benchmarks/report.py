#!/usr/bin/env python
"""Turn benchmarks/results/*.json into the README's performance and results sections."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

README = harness.ROOT / "README.md"


def load(name: str) -> dict | None:
    path = harness.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def performance() -> str:
    parts = []
    loss = load("loss")
    if loss:
        m = loss["machine"]
        rows = [
            "| size | radius | cellcut method (used) | cellcut s | reference s | speed-up | "
            "cellcut extra MB | reference extra MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in loss["summary"].items():
            if not name.startswith("cellcut"):
                continue
            _, method, size, radius = name.split()
            ref = loss["summary"].get(f"reference {size} {radius}", {})
            speed = (
                ref["median_s"] / s["median_s"] if "median_s" in ref and "median_s" in s else None
            )
            rows.append(
                f"| {size} | {radius[2:]} | {method} ({s.get('method_used', '?')}) | "
                f"{fmt(s.get('median_s'))} | {fmt(ref.get('median_s'))} | "
                f"{fmt(speed, '.1f')}× | {fmt(s.get('extra_peak_mb'), '.0f')} | "
                f"{fmt(ref.get('extra_peak_mb'), '.0f')} |"
            )
        parts.append(
            "**Soft N-cut, forward + backward** (σ_X 4, σ_I 1 on 0..100 data, K 2; "
            f"`benchmarks/bench_loss.py`, {m['cpus']} CPUs, {m['threads']} threads, "
            f"median of {loss['summary'][next(iter(loss['summary']))].get('rounds', 1)} "
            "interleaved rounds):\n\n" + "\n".join(rows)
        )
    step = load("train_step")
    if step:
        rows = [
            "| side | parameters | step s | speed-up | peak RSS MB | memory vs reference |",
            "|---|---|---|---|---|---|",
        ]
        ref = step["summary"].get("reference", {})
        for name, s in step["summary"].items():
            speed = (
                ref["median_s"] / s["median_s"] if "median_s" in ref and "median_s" in s else None
            )
            mem = (
                s["peak_rss_mb"] / ref["peak_rss_mb"]
                if ref.get("peak_rss_mb") and "peak_rss_mb" in s
                else None
            )
            rows.append(
                f"| {name} | {s.get('n_params', 0):,} | {fmt(s.get('median_s'))} | "
                f"{fmt(speed, '.1f')}× | {fmt(s.get('peak_rss_mb'), '.0f')} | "
                f"{fmt(mem, '.2f')} |"
            )
        parts.append(
            "**Training step at 64³, batch 1** (forward, both losses, backward, optimizer "
            "step; `benchmarks/bench_train_step.py`):\n\n" + "\n".join(rows)
        )
    infer = load("infer")
    if infer:
        rows = [
            "| side | seconds for 128³ | voxels/s | vs reference | peak RSS MB |",
            "|---|---|---|---|---|",
        ]
        ref = infer["summary"].get("reference", {})
        for name, s in infer["summary"].items():
            vps = s.get("voxels_per_s")
            ratio = vps / ref["voxels_per_s"] if vps and ref.get("voxels_per_s") else None
            rows.append(
                f"| {name} | {fmt(s.get('median_s'))} | {fmt(vps, '.3g')} | "
                f"{fmt(ratio, '.1f')}× | {fmt(s.get('peak_rss_mb'), '.0f')} |"
            )
        parts.append(
            "**Sliding-window inference** of the encoder, 64³ windows (cellcut 96: 96³), "
            "overlap 0.25 (`benchmarks/bench_infer.py`):\n\n" + "\n".join(rows)
        )
    large = load("segment_large")
    if large:
        st = large.get("stages_s", {})
        parts.append(
            f"**End to end on a {large['size']}³ volume** (lazy zarr input, block "
            f"{large['block']}, probability + Voronoi-Otsu instances + statistics + overview; "
            f"`benchmarks/bench_segment_large.py`): {large['total_s']:.0f} s in all "
            f"(probability {fmt(st.get('probability'), '.0f')} s, instances "
            f"{fmt(st.get('instances'), '.0f')} s), {large['voxels_per_s']:.3g} voxels/s, peak "
            f"RSS {large['peak_rss_mb']:.0f} MB, {large['cells']} cells found for "
            f"{large['n_true']} generated (F1@0.5 {large['f1_50']:.3f}, Dice {large['dice']:.3f})."
        )
    return "\n\n".join(parts) or "(no benchmark results yet)"


def results() -> str:
    parts = []
    emb = load("train_embryo")
    if emb:
        rows = [
            "| model | Dice | F1@0.5 | 8-cell Dice/F1 | 16-cell Dice/F1 |",
            "|---|---|---|---|---|",
        ]
        for name, r in emb["results"].items():
            if "error" in r:
                rows.append(f"| {name} | - | - | {r['error'][:60]} | |")
                continue
            vols = r.get("volumes", [])
            per = [f"{v['dice']:.3f}/{v['f1_50']:.3f}" for v in vols] + ["", ""]
            rows.append(f"| {name} | {r['dice']:.3f} | {r['f1_50']:.3f} | {per[0]} | {per[1]} |")
        parts.append(
            "**Embryo nuclei** (`../shared/data/embryo`, 8 and 16 cells, labels used only for "
            f"scoring; training {emb['minutes']:g} minutes on 2 CPU threads; "
            "`benchmarks/bench_train_embryo.py`):\n\n"
            + "\n".join(rows)
            + "\n\n![quality against training minutes](docs/quality_vs_minutes.png)"
        )
    regimes = regime_table()
    if regimes:
        parts.append(regimes)
    land = load("ncut_landscape")
    if land:
        rows = [
            "| σ_I | σ_X | true mask beats a half-volume cut: N-cut | N-cut + class intensity |",
            "|---|---|---|---|",
        ]
        for r in land["rows"]:
            rows.append(
                f"| {r['sigma_i']:g} | {r['sigma_x']:g} | {r['true_beats_position']}/"
                f"{r['patches']} | {r['with_intensity_term']}/{r['patches']} |"
            )
        parts.append(
            "**Why the class-intensity term** (`benchmarks/ncut_landscape.py`, embryo "
            "patches, percentile units):\n\n" + "\n".join(rows)
        )
    return "\n\n".join(parts) or "(no results yet)"


REGIME_SIDES = ("voronoi-otsu", "watershed", "zero-shot", "fine-tune", "scratch", "reference")


def regime_table() -> str | None:
    """The regime suite: benchmarks/results/regimes.json, plus regimes_training.json's columns."""
    base = load("regimes")
    if not base:
        return None
    rows = {name: dict(r) for name, r in base["rows"].items()}
    extra = load("regimes_training")
    for name, r in (extra or {}).get("rows", {}).items():
        rows.setdefault(name, {}).update(r)
    sides = [s for s in REGIME_SIDES if any(s in r for r in rows.values())]
    lines = [
        "| volume | " + " | ".join(f"{s} F1/Dice" for s in sides) + " |",
        "|---|" + "---|" * len(sides),
    ]
    for name, r in rows.items():
        cells = [
            f"{r[s]['f1']:.2f}/{r[s]['dice']:.2f}" if "f1" in r.get(s, {}) else "" for s in sides
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    minutes = (extra or base).get("minutes", 5)
    return (
        "**Imaging regimes** (synthetic, with ground truth, `cellcut.synthetic.REGIMES`, scoring "
        "seed 0; the real embryo volumes; `benchmarks/bench_regimes.py`; instance F1 at IoU 0.5 "
        f"/ foreground Dice; training columns {minutes:g} minutes on 2 CPU threads, only where "
        "run):\n\n" + "\n".join(lines) + "\n\n![F1 per regime](docs/regimes.png)"
    )


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> None:
    text = README.read_text()
    text = replace(text, "performance", performance())
    text = replace(text, "results", results())
    README.write_text(text)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
