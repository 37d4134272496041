"""Outputs committed together (cellcut.outputs), and what segment does with them on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cellcut.errors import CellcutError, InputFileError, OutputError
from cellcut.outputs import (
    OutputSet,
    atomic_output,
    check_output,
    remove_stale_temporaries,
    temp_sibling,
    workspace_folder,
)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_sibling_keeps_suffix_and_names_the_process(tmp_path):
    tmp = temp_sibling(tmp_path / "cells.ome.zarr")
    assert tmp.parent == tmp_path and tmp.name.startswith(".cells.tmp-")
    assert tmp.name.endswith(".ome.zarr") and f"-{os.getpid()}-" in tmp.name
    long = temp_sibling(tmp_path / ("x" * 250 + ".tif"))
    assert len(long.name) < 255


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "labels.tif"
    mine = temp_sibling(target)
    mine.write_bytes(b"in progress")
    dead = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    dead.write_bytes(b"left by a killed run")
    other = tmp_path / ".labels.tmp-notours.tif"
    other.write_bytes(b"")
    assert remove_stale_temporaries(target) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()


def test_workspace_folders_of_dead_processes_are_removed():
    folder = workspace_folder("cellcut-test")
    stale = folder.with_name(folder.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    stale.mkdir()
    (stale / "big.zarr").write_bytes(b"x")
    again = workspace_folder("cellcut-test")
    assert folder.exists() and again.exists() and not stale.exists()
    folder.rmdir()
    again.rmdir()


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "a.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_check_output_probes_the_folder(tmp_path):
    assert check_output(tmp_path / "new" / "a.tif") == tmp_path / "new" / "a.tif"
    with pytest.raises(OutputError, match="not writable"):
        check_output("/proc/a.tif")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new"]


def test_output_set_refuses_collisions_and_inputs(tmp_path):
    image = tmp_path / "img.tif"
    image.write_bytes(b"input")
    with pytest.raises(OutputError, match="the probability and the labels"):
        OutputSet({"labels": tmp_path / "a.tif", "probability": tmp_path / "a.tif"}).check()
    with pytest.raises(OutputError, match="refused even with --overwrite"):
        OutputSet({"labels": image}, overwrite=True, inputs=[image]).check()
    with pytest.raises(OutputError, match="would replace the input"):  # the same file, by a link
        os.link(image, tmp_path / "hard.tif")
        OutputSet({"labels": tmp_path / "hard.tif"}, overwrite=True, inputs=[image]).check()
    with pytest.raises(OutputError, match="output exists"):
        OutputSet({"labels": image}).check()


def test_output_set_commits_all_and_main_result_last(tmp_path, monkeypatch):
    outputs = OutputSet({"labels": tmp_path / "sub" / "l.npy", "stats": tmp_path / "c.csv"})
    outputs.check()
    assert not (tmp_path / "sub").exists()  # nothing is created by the check
    order = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(os.path.basename(b)), real(a, b)))
    with outputs:
        np.save(outputs.staged("labels"), np.zeros(3))
        with open(outputs.staged("stats"), "w") as f:
            f.write("id\n")
        assert not (tmp_path / "c.csv").exists()
        final = outputs.commit()
    assert final == {"labels": tmp_path / "sub" / "l.npy", "stats": tmp_path / "c.csv"}
    assert order[-2:] == ["c.csv", "l.npy"] and order[0].endswith("cellcut-commit.json")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.csv", "l.npy", "sub"]


def test_output_set_discards_temporaries_and_folders_it_made(tmp_path):
    outputs = OutputSet({"labels": tmp_path / "a" / "b" / "l.npy"})
    outputs.check()
    with pytest.raises(RuntimeError), outputs:
        np.save(outputs.staged("labels"), np.zeros(3))
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_unfinished_set_is_replaced_without_overwrite(tmp_path):
    labels, stats = tmp_path / "l.npy", tmp_path / "c.csv"
    stats.write_text("id\n1\n")  # committed before the kill; the labels were not
    journal = tmp_path / ".l.npy.cellcut-commit.json"
    journal.write_text(json.dumps({"targets": [str(labels), str(stats)]}))
    outputs = OutputSet({"labels": labels, "stats": stats})
    outputs.check()  # no "output exists": the set never finished
    with outputs:
        np.save(outputs.staged("labels"), np.ones(2))
        with open(outputs.staged("stats"), "w") as f:
            f.write("id\n2\n")
        outputs.commit()
    assert stats.read_text() == "id\n2\n" and not journal.exists()
    with pytest.raises(OutputError, match="output exists"):  # now it is a finished result
        OutputSet({"labels": labels, "stats": stats}).check()


def test_segment_failing_after_staging_leaves_nothing(tmp_path, monkeypatch, small_synthetic):
    from cellcut import figures
    from cellcut.segmentation import segment

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, small_synthetic.image)
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def broken(*args, **kwargs):
        raise InputFileError("cannot read volume", "a block cannot be decoded", "re-copy it")

    monkeypatch.setattr(figures, "plot_overview", broken)  # after labels, probability, stats
    with pytest.raises(CellcutError, match="cannot be decoded"):
        segment(
            image,
            tmp_path / "out" / "labels.tif",
            probability_out=tmp_path / "p.tif",
            stats=tmp_path / "c.csv",
            overview=tmp_path / "o.png",
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_segment_warns_of_missing_zarr_chunks(tmp_path, small_synthetic):
    from cellcut.io import import_zarr
    from cellcut.segmentation import segment

    store = tmp_path / "img.zarr"
    arr = import_zarr().create_array(
        str(store), shape=small_synthetic.image.shape, dtype=np.float32, chunks=(12, 20, 20)
    )
    arr[...] = small_synthetic.image + 1
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    result = segment(store, None, voxel_size=(1.5, 1, 1))
    assert any("1 of 8 chunks are missing" in w for w in result.warnings), result.warnings


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """``cellcut info IMAGE | head -1``: the reader is gone before cellcut writes."""
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(0).random((4, 8, 8)))
    code = (
        "import os, sys\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
        "from cellcut.cli import main\n"
        f"sys.exit(main(['info', {str(image)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
