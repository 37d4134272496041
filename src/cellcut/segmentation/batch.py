"""Many volumes in one run: :func:`segment_batch`.

Every input (files, folders, glob patterns; with ``stack_folders`` each folder of 2D slices is
one volume) gets its own outputs in one folder, named after it: ``NAME_labels.tif``,
``NAME_cells.csv`` with ``NAME_cells.summary.json``, ``NAME_overview.png`` (and
``NAME_probability.tif`` when asked). The model is loaded once. An input whose labels exist is
skipped unless ``overwrite``; one that fails is reported and the batch goes on. A summary CSV
of every input (status, cells, seconds, outputs, error) is written at the end, as
``segment_summary.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellcut.config import segment_options
from cellcut.errors import CellcutError, InputFileError
from cellcut.io import Volume, find_volumes, read_stack_folder
from cellcut.outputs import atomic_output, check_output, split_location
from cellcut.runtime import resolve_device
from cellcut.segmentation.pipeline import segment
from cellcut.segmentation.predict import resolve_model

SUMMARY_NAME = "segment_summary.csv"
SUMMARY_FIELDS = ("input", "status", "cells", "seconds", "labels", "statistics", "error")


@dataclass
class BatchResult:
    """One row per input (:data:`SUMMARY_FIELDS`), and where the summary went."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary_path: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def batch_inputs(specs: Sequence[str | os.PathLike], stack_folders: bool = False) -> list[str]:
    """The volumes named by files, folders and glob patterns (a folder is one volume with
    ``stack_folders``)."""
    if not stack_folders:
        return find_volumes(specs)
    folders = [os.fspath(s) for s in specs]
    missing = [f for f in folders if not Path(f).is_dir()]
    if missing:
        raise InputFileError(
            "cannot read stack",
            "--stack-folder takes folders of 2D TIFF slices",
            "give folders",
            file=missing[0],
        )
    return folders


def output_names(source: str) -> str:
    """The stem an input's outputs are named after (``a/b/c.ome.tif`` -> ``c``)."""
    name = Path(split_location(source)[0].as_posix().rstrip("/")).name
    for suffix in (".ome.zarr", ".ome.tif", ".ome.tiff", ".nii.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def segment_batch(
    specs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    model: Any = None,
    options: dict[str, Any] | None = None,
    probability: bool = False,
    stack_folders: bool = False,
    overwrite: bool = False,
    on_input: Callable[[int, int, str, dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> BatchResult:
    """Segment every input into ``out_dir``; see the module docstring.

    ``on_input(i, n, source, row)`` is called after each input with its summary row.
    """
    inputs = batch_inputs(specs, stack_folders)
    folder = Path(out_dir)
    summary = check_output(folder / SUMMARY_NAME, overwrite=True)
    stems = [output_names(s) for s in inputs]
    clashes = {s for s in stems if stems.count(s) > 1}
    settings = segment_options(options).model_dump(exclude_unset=True)
    cluster = settings.pop("cluster", None)
    loaded = resolve_model(model, resolve_device(settings.get("device") or "auto"))
    result = BatchResult()
    with contextlib.ExitStack() as stack:
        if cluster is not None:  # one cluster for the whole batch
            from cellcut.segmentation.cluster import connect

            settings["cluster"] = stack.enter_context(connect(cluster))
        for i, (source, stem) in enumerate(zip(inputs, stems, strict=True)):
            name = f"{stem}-{i}" if stem in clashes else stem
            row = _one(source, folder, name, loaded, settings, probability, stack_folders,
                       overwrite, progress)  # fmt: skip
            result.rows.append(row)
            if on_input is not None:
                on_input(i, len(inputs), source, row)
    with atomic_output(summary) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(result.rows)
    result.summary_path = summary
    return result


def _one(
    source: str,
    folder: Path,
    name: str,
    loaded: Any,
    settings: dict[str, Any],
    probability: bool,
    stack_folders: bool,
    overwrite: bool,
    progress: Any,
) -> dict[str, Any]:
    labels = folder / f"{name}_labels.tif"
    stats = folder / f"{name}_cells.csv"
    row: dict[str, Any] = {"input": source, "labels": str(labels), "statistics": str(stats)}
    if labels.exists() and not overwrite:
        return {**row, "status": "skipped", "cells": "", "seconds": "", "error": "labels exist"}
    t0 = time.perf_counter()
    try:
        image: str | Volume = read_stack_folder(source) if stack_folders else source
        result = segment(
            image,
            labels,
            model=loaded,
            **settings,
            stats=stats,
            overview=folder / f"{name}_overview.png",
            probability_out=folder / f"{name}_probability.tif" if probability else None,
            overwrite=True,  # an unfinished set is replaced anyway; a finished one was skipped
            progress=progress,
        )
    except CellcutError as e:
        seconds = round(time.perf_counter() - t0, 2)
        return {**row, "status": "failed", "cells": "", "seconds": seconds, "error": str(e)}
    seconds = round(time.perf_counter() - t0, 2)
    return {**row, "status": "done", "cells": result.n_cells, "seconds": seconds, "error": ""}
