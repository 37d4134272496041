"""Runs killed with SIGKILL at every moment an output is written: afterwards every output that
exists is complete, an unfinished set is recognised, and the same command finishes.

``segment`` is killed at each of its file renames in turn (a wrapper counts ``os.replace``
calls and kills the process at the k-th), and once while it computes: every moment between
two file operations of a run is covered. ``train`` likewise at its checkpoint renames.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.unit.test_error_catalogue import image

pytestmark = pytest.mark.slow

WRAPPER = """
import os, signal, sys
kill_at, n, real = int(sys.argv[1]), 0, os.replace
def replace(*args, **kwargs):
    global n
    n += 1
    if n == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
os.replace = replace
from cellcut.cli import main
code = main(sys.argv[2:])
print(f"renames: {n}", file=sys.stderr)
sys.exit(code)
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(folder: Path, kill_at: int, argv: list[str]) -> subprocess.CompletedProcess:
    script = folder / "wrapper.py"
    script.write_text(WRAPPER)
    return subprocess.run(
        [sys.executable, str(script), str(kill_at), *argv],
        cwd=folder,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def segment_outputs(folder: Path) -> dict[str, Path]:
    return {
        "labels": folder / "out" / "labels.tif",
        "probability": folder / "prob.tif",
        "statistics": folder / "cells.csv",
        "summary": folder / "cells.summary.json",
        "overview": folder / "overview.png",
    }


def segment_argv(folder: Path) -> list[str]:
    o = segment_outputs(folder)
    return [
        "segment", str(folder / "img.tif"), "--out", str(o["labels"]),
        "--probability", str(o["probability"]), "--stats", str(o["statistics"]),
        "--overview", str(o["overview"]), "--quiet",
    ]  # fmt: skip


def complete(role: str, path: Path) -> bool:
    """The output reads back whole."""
    try:
        if role in ("labels", "probability"):
            return tifffile.imread(path).shape == (16, 48, 48)
        if role == "statistics":
            with open(path) as f:
                return len(list(csv.DictReader(f))) >= 1
        if role == "summary":
            return "cells" in json.loads(path.read_text())
        return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    except Exception:
        return False


def leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if ".tmp-" in p.name or ".old-" in p.name or "cellcut-commit" in p.name
    )


def check_after_kill(folder: Path) -> str:
    """Every output that exists is complete; a partial set carries its journal. Returns
    'finished', 'none' or 'unfinished'."""
    outputs = segment_outputs(folder)
    present = {role: p for role, p in outputs.items() if p.exists()}
    for role, path in present.items():
        assert complete(role, path), f"{role} exists but is incomplete"
    journal = any("cellcut-commit" in name for name in leftovers(folder))
    if len(present) == len(outputs) and not journal:
        return "finished"
    if outputs["labels"].exists():
        assert journal, "the main result exists without the others and no journal says so"
    return "unfinished" if present else "none"


def test_segment_killed_at_every_rename(tmp_path):
    image(tmp_path, "img.tif", shape=(16, 48, 48))
    full = run(tmp_path / "", 0, segment_argv(tmp_path))
    assert full.returncode == 0, full.stderr
    renames = int(full.stderr.strip().splitlines()[-1].split()[-1])
    assert renames >= 2 * len(segment_outputs(tmp_path))  # staged, then committed
    states = []
    for k in range(1, renames + 1):
        folder = tmp_path / f"kill-{k}"
        folder.mkdir()
        image(folder, "img.tif", shape=(16, 48, 48))
        killed = run(folder, k, segment_argv(folder))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        state = check_after_kill(folder)
        states.append(state)
        again = run(folder, 0, segment_argv(folder))
        if state == "finished":
            assert again.returncode == 2 and "output exists" in again.stderr
        else:
            assert again.returncode == 0, (k, state, again.stderr)
        assert check_after_kill(folder) == "finished"
        assert leftovers(folder) == [], (k, leftovers(folder))
    assert {"none", "unfinished"} <= set(states), states


def test_segment_killed_while_computing(tmp_path):
    image(tmp_path, "img.tif", shape=(16, 48, 48))
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    proc = subprocess.Popen(
        [sys.executable, str(script), "0", *segment_argv(tmp_path)],
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not any(".tmp-" in p.name for p in tmp_path.rglob(".*")):  # first output staged
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert check_after_kill(tmp_path) in ("none", "unfinished")
    again = run(tmp_path, 0, segment_argv(tmp_path))
    assert again.returncode == 0, again.stderr
    assert check_after_kill(tmp_path) == "finished" and leftovers(tmp_path) == []


def train_argv(folder: Path) -> list[str]:
    return [
        "train", str(folder / "img.tif"), "--out", str(folder / "run"), "--steps", "4",
        "--quiet", "--set", "log.every=2", "log.checkpoint_every=2", "data.patch_size=[16,32,32]",
        "data.batch_size=1", "log.plots=false",
    ]  # fmt: skip


def test_train_killed_then_same_command_and_resume(tmp_path):
    image(tmp_path, "img.tif", shape=(16, 48, 48))
    full = run(tmp_path, 0, train_argv(tmp_path))
    assert full.returncode == 0, full.stderr
    renames = int(full.stderr.strip().splitlines()[-1].split()[-1])
    assert not (tmp_path / "run" / ".cellcut-running").exists()
    for k in sorted({2, renames // 2, renames}):
        folder = tmp_path / f"kill-{k}"
        folder.mkdir()
        image(folder, "img.tif", shape=(16, 48, 48))
        killed = run(folder, k, train_argv(folder))
        assert killed.returncode == -signal.SIGKILL
        run_dir = folder / "run"
        assert (run_dir / ".cellcut-running").exists()
        if (run_dir / "checkpoint.pt").exists():  # written atomically: always loadable
            resumed = run(folder, 0, [*train_argv(folder), "--resume"])
            assert resumed.returncode == 0, resumed.stderr
        else:
            again = run(folder, 0, train_argv(folder))
            assert again.returncode == 0, again.stderr
        assert not (run_dir / ".cellcut-running").exists()
        assert leftovers(folder) == []
    # the same command, without --resume or --overwrite, replaces an interrupted run
    folder = tmp_path / "same-command"
    folder.mkdir()
    image(folder, "img.tif", shape=(16, 48, 48))
    assert run(folder, renames, train_argv(folder)).returncode == -signal.SIGKILL
    again = run(folder, 0, train_argv(folder))
    assert again.returncode == 0, again.stderr
    assert "interrupted and never finished" in again.stdout + again.stderr
    finished = run(folder, 0, train_argv(folder))
    assert finished.returncode == 2 and "--resume to continue it" in finished.stderr
    assert np.isfinite(float(next(csv.DictReader(open(folder / "run" / "metrics.csv")))["ncut"]))
