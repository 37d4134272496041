"""CellTable: per-cell statistics stored as columns, read as rows."""

from __future__ import annotations

import numpy as np
import pytest

from cellcut.segmentation import CellTable, cell_statistics, write_stats_csv


def test_rows_read_from_columns_with_python_types():
    labels = np.zeros((4, 5, 6), dtype=np.int32)
    labels[0, 0, 0] = 3
    labels[1:3, 1:3, 1:3] = 7
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    table, summary = cell_statistics(labels, image, (2.0, 1.0, 1.0), block=(2, 3, 4))
    assert isinstance(table, CellTable) and len(table) == 2 == summary["cells"]
    first, last = table[0], table[-1]
    assert first["label"] == 3 and last["label"] == 7
    assert type(first["label"]) is int and type(first["area"]) is int
    assert type(first["volume_um3"]) is float and first["volume_um3"] == 2.0
    assert last["area"] == 8 and last["centroid-0"] == 1.5 and last["centroid_z_um"] == 3.0
    assert last["bbox-1"] == 1 and last["bbox-4"] == 3
    assert last["intensity_mean"] == pytest.approx(image[1:3, 1:3, 1:3].mean())
    assert [r["label"] for r in table] == [3, 7] and table[0:1] == [first]
    with pytest.raises(IndexError):
        table[2]


def test_empty_volume_gives_an_empty_table_and_a_header_only_csv(tmp_path):
    table, summary = cell_statistics(np.zeros((3, 3, 3), np.int32), np.ones((3, 3, 3)), None)
    assert len(table) == 0 and summary["cells"] == 0
    path = write_stats_csv(tmp_path / "cells.csv", table, overwrite=False)
    header = path.read_text().strip()
    assert header.startswith("label,centroid-0,centroid-1,centroid-2,") and "bbox-5" in header


def test_a_million_cells_take_columns_not_dicts():
    n = 1_000_000
    ids = np.arange(1, n + 1)
    table = CellTable({"id": ids, "volume_um3": np.ones(n), "centroid_z": np.zeros(n)})
    assert len(table) == n and table[n - 1] == {"id": n, "volume_um3": 1.0, "centroid_z": 0.0}
    assert sum(c.nbytes for c in table.columns.values()) == 24 * n  # 8 bytes per value
