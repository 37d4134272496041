"""Side-by-side benchmark harness: cellcut and the reference implementation in one run.

Every case runs in a fresh subprocess (so peak memory is per case) with 2 threads and
``OMP_WAIT_POLICY=PASSIVE``. Cases of both sides are interleaved round by round, so a busy
machine slows both alike; tables quote medians and the ratio of medians.

The reference side (napari-cellseg3d 0.2.4) runs in its own virtual environment built by
``../shared/anchor/setup.sh``; :func:`anchor_python` finds or builds it, and the reference
columns are left out with a message where ``../shared/anchor`` is absent.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("CELLCUT_SHARED", ROOT.parent / "shared"))
ANCHOR_DIR = SHARED / "anchor"
RESULTS = HERE / "results"
THREADS = 2


def anchor_python(build: bool = True) -> Path | None:
    """Python of the reference's venv, built with ``shared/anchor/setup.sh`` if missing."""
    if not (ANCHOR_DIR / "setup.sh").exists():
        print(f"[reference] {ANCHOR_DIR} not found: reference columns left out", file=sys.stderr)
        return None
    venv = Path(
        os.environ.get(
            "ANCHOR_VENV",
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            / "cellcut"
            / "cellseg3d-anchor-venv",
        )
    )
    python = venv / "bin" / "python"
    if not python.exists() and build:
        print(f"[reference] building its venv in {venv} (once)", file=sys.stderr)
        subprocess.run(["bash", str(ANCHOR_DIR / "setup.sh"), str(venv)], check=True)
    return python if python.exists() else None


def case_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(THREADS),
        MKL_NUM_THREADS=str(THREADS),
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONPATH=os.pathsep.join([str(ANCHOR_DIR), str(ROOT)]),
    )
    return env


def run_subprocess_case(python: Path | str, script: Path, args: Sequence[str]) -> dict[str, Any]:
    """Run ``script --case ARGS`` with ``python``; return the JSON it prints after RESULT."""
    cmd = [str(python), str(script), "--case", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=case_env(), timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        killed = proc.returncode in (-9, 137)
        return {
            "error": "killed (out of memory?)" if killed else f"exit {proc.returncode}",
            "stderr": proc.stderr[-3000:],
            "wall_s": wall,
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            out["wall_s"] = wall
            return out
    return {"error": "no result", "stderr": proc.stderr[-3000:], "wall_s": wall}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process' RSS (Linux ≥ 4.0).

    Without it, ``ru_maxrss`` keeps whatever peaked before the measurement (imports, building
    the inputs), and a case's "extra peak" would measure that instead of the calls timed.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (VmHWM), else since the process began."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_calls(fn: Callable[[], Any], warmup: int, runs: int, limit_s: float = 120.0) -> dict:
    """Warm-up calls, then timed calls (stopping early when one exceeds ``limit_s``)."""
    rss0 = rss_bytes()
    peak_reset = reset_peak_rss()
    warm = []
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if times[-1] > limit_s:
            break
    return {
        "warmup_s": warm,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "rss_before_mb": rss0 / 2**20,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "extra_peak_mb": (peak_rss_bytes() - rss0) / 2**20,
        "peak_reset": peak_reset,
    }


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": THREADS,
        "load1": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def interleave(
    cases: Sequence[tuple[str, Callable[[], dict]]], rounds: int
) -> dict[str, list[dict]]:
    """Run every case once per round, in the same order, ``rounds`` times."""
    results: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for r in range(rounds):
        for name, fn in cases:
            out = fn()
            results[name].append(out)
            shown = out.get("median_s", out.get("error"))
            print(f"  round {r + 1}/{rounds} {name}: {shown}", file=sys.stderr, flush=True)
    return results


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Median over rounds of each round's median time; max of peak memories."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {
            "error": runs[0].get("error") if runs else "not run",
            "stderr": runs[0].get("stderr", "") if runs else "",
        }
    return {
        "median_s": statistics.median(r["median_s"] for r in ok),
        "min_s": min(r["min_s"] for r in ok),
        "extra_peak_mb": max(r["extra_peak_mb"] for r in ok),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "rounds": len(ok),
        **{
            k: v
            for k, v in ok[0].items()
            if k
            not in (
                "warmup_s",
                "times_s",
                "median_s",
                "min_s",
                "extra_peak_mb",
                "peak_rss_mb",
                "rss_before_mb",
            )
        },
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return "-" if c is None else str(c)


class StageClock:
    """A ``segment(progress=...)`` callback: each stage's wall time (from its first report to
    its last block) and the peak RSS so far when it ends, MB."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self._stage: str | None = None
        self._start = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._start = stage, now
        if done == total:
            self.seconds[stage] = now - self._start
            self.peaks[stage] = peak_rss_bytes() / 2**20


def tiled_nuclei(folder: Path, size: int, tile: int = 128) -> tuple[Any, Any]:
    """A size³ synthetic nuclei volume (voxel 1 µm) made of tile³ generated pieces, written to
    ``folder/image.zarr`` (float32) and its ground truth, ids unique, to ``folder/truth.zarr``;
    returns both arrays."""
    import numpy as np
    import zarr

    from cellcut.synthetic import make_nuclei_volume

    chunks = (tile,) * 3
    img = zarr.create_array(
        str(folder / "image.zarr"), shape=(size,) * 3, dtype="float32", chunks=chunks
    )
    truth = zarr.create_array(
        str(folder / "truth.zarr"), shape=(size,) * 3, dtype="int32", chunks=chunks
    )
    offset = 0
    for z in range(0, size, tile):
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                v = make_nuclei_volume(
                    (tile,) * 3, seed=z * 7 + y * 3 + x, voxel_size=(1, 1, 1), radius_um=(3.0, 6.0)
                )
                region = (slice(z, z + tile), slice(y, y + tile), slice(x, x + tile))
                img[region] = v.image.astype(np.float32)
                lab = v.labels.astype(np.int64)
                lab[lab > 0] += offset
                offset = int(lab.max()) if lab.max() > 0 else offset
                truth[region] = lab.astype(np.int32)
    return img, truth
