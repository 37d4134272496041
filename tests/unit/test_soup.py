"""Model soups: averaged weights of runs from one starting model (cellcut.model.soup)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cellcut.errors import CheckpointError
from cellcut.model import Checkpoint, WNet3D, average_checkpoints, load_model


def ingredient(tmp_path, name: str, seed: int, normalization="percentile", **arch) -> str:
    torch.manual_seed(seed)
    model = WNet3D(base_width=arch.get("base_width", 2), depth=1)
    path = tmp_path / f"{name}.pt"
    Checkpoint(
        architecture=dataclasses.asdict(model.arch),
        model=model.state_dict(),
        config={"data": {"normalization": normalization}},
        foreground_classes=[1],
        intensity_sigma=10.0 + seed,
        intensity_centres=[10.0 * seed, 50.0 + seed],
        step=100 * (seed + 1),
        images=[f"{name}.tif", "shared.tif"],
        optimizer={"state": {}},
    ).save(path)
    return str(path)


def test_the_soup_is_the_mean_of_its_ingredients(tmp_path):
    paths = [ingredient(tmp_path, n, s) for n, s in (("a", 0), ("b", 1), ("c", 2))]
    soup = average_checkpoints(paths)
    weights = [Checkpoint.load(p).model for p in paths]
    for key, value in soup.model.items():
        expected = (weights[0][key].double() + weights[1][key] + weights[2][key]) / 3
        torch.testing.assert_close(value, expected.to(value.dtype))
    assert not torch.equal(soup.model[key], weights[0][key])  # it did average something
    assert soup.intensity_centres == pytest.approx([10.0, 51.0])
    assert soup.intensity_sigma == pytest.approx(11.0)
    assert soup.step == 600
    assert soup.images == ["a.tif", "shared.tif", "b.tif", "c.tif"]
    assert soup.optimizer is None  # a starting point, not a run to resume


def test_a_soup_of_one_model_twice_predicts_as_that_model(tmp_path):
    a = ingredient(tmp_path, "a", 0)
    soup_path = average_checkpoints([a, a]).save(tmp_path / "soup.pt")
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected = load_model(a).model(x).probs
        got = load_model(soup_path).model(x).probs
    torch.testing.assert_close(got, expected)


def test_models_that_disagree_are_refused(tmp_path):
    a = ingredient(tmp_path, "a", 0)
    wider = ingredient(tmp_path, "wider", 1, base_width=4)
    with pytest.raises(CheckpointError, match="architecture differs"):
        average_checkpoints([a, wider])
    other_norm = ingredient(tmp_path, "minmax", 1, normalization="minmax")
    with pytest.raises(CheckpointError, match="normalization differs"):
        average_checkpoints([a, other_norm])
    with pytest.raises(CheckpointError, match="at least two"):
        average_checkpoints([a])
