"""The fingerprint of a volume and the self-check of a segmentation against it."""

from __future__ import annotations

import numpy as np
import pytest

from cellcut.fingerprint import Fingerprint, measure
from cellcut.postprocess import object_radii, typical_radius
from cellcut.segmentation.selfcheck import check_segmentation
from cellcut.synthetic import regime_volume


@pytest.mark.parametrize("regime", ["confocal-dense-grainy", "lightsheet-sparse", "large-nuclei"])
def test_fingerprint_finds_foreground_and_radius(regime):
    v = regime_volume(regime, 0)
    f = measure(v.image, v.voxel_size)
    truth = (v.labels > 0).mean()
    assert f.foreground_fraction == pytest.approx(truth, abs=0.05)
    counts = np.bincount(v.labels.ravel())[1:]
    radius = np.median(np.cbrt(3 * counts * np.prod(v.voxel_size) / (4 * np.pi)))
    assert 0.7 < f.object_radius / radius < 1.4
    assert f.units == "µm"


def test_typical_radius_ignores_speckle():
    mask = np.zeros((40, 40, 40), bool)
    zz, yy, xx = np.ogrid[:40, :40, :40]
    mask |= (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 8**2
    rng = np.random.default_rng(0)
    specks = rng.random(mask.shape) < 0.02  # hundreds of one-voxel components
    r = typical_radius(*object_radii(mask | specks, None, min_voxels=1))
    assert r == pytest.approx(8.5, abs=1.0)


FP = Fingerprint(
    foreground_fraction=0.2,
    object_radius=3.0,
    contrast_to_noise=2.0,
    saturated_fraction=0.0,
    units="µm",
)


def test_a_good_result_passes():
    volumes = np.full(50, 4 / 3 * np.pi * 3.0**3)
    assert check_segmentation(volumes, 0.18, FP) == []


def test_nothing_found_is_said_with_a_remedy():
    [finding] = check_segmentation(np.zeros(0), 0.0, FP)
    assert finding.kind == "empty" and "fine-tune" in finding.message


def test_speckle_is_said():
    volumes = np.concatenate([np.full(40, 2.0), np.full(10, 4 / 3 * np.pi * 27)])
    kinds = [f.kind for f in check_segmentation(volumes, 0.2, FP)]
    assert "speckle" in kinds and "size" in kinds


def test_foreground_far_from_the_image_split_is_said():
    volumes = np.full(50, 4 / 3 * np.pi * 3.0**3)
    findings = check_segmentation(volumes, 0.02, FP)
    assert [f.kind for f in findings] == ["foreground"]
    assert "2.0%" in findings[0].message and "20.0%" in findings[0].message


def test_one_object_across_the_volume_is_said_merged():
    volumes = np.concatenate([[4000.0], np.full(30, 4 / 3 * np.pi * 27)])
    spans = np.full((31, 3), 0.1)
    spans[0] = (0.9, 0.6, 0.55)
    findings = check_segmentation(volumes, 0.2, FP, spans=spans)
    assert [f.kind for f in findings] == ["merged"]
    assert "90% × 60% × 55%" in findings[0].message and "--min-distance" in findings[0].message


@pytest.mark.parametrize(
    ("share_of_cells", "span"),
    [(0.2, (0.9, 0.9, 0.9)), (0.9, (0.9, 0.9, 0.45))],  # a small share; short along one axis
)
def test_a_large_object_is_not_called_merged_below_either_bound(share_of_cells, span):
    rest = np.full(30, 4 / 3 * np.pi * 27)
    largest = share_of_cells * rest.sum() / (1 - share_of_cells)
    spans = np.full((31, 3), 0.1)
    spans[0] = span
    volumes = np.concatenate([[largest], rest])
    assert "merged" not in [f.kind for f in check_segmentation(volumes, 0.2, FP, spans=spans)]


def test_segment_says_merged_when_one_blob_fills_the_volume(tmp_path):
    """End to end, through the statistics' bounding boxes: the shipped model on one bright
    body that fills most of a small volume."""
    from cellcut.segmentation import segment

    zz, yy, xx = np.ogrid[:40, :48, :48]
    body = ((zz - 20) / 17.0) ** 2 + ((yy - 24) / 21.0) ** 2 + ((xx - 24) / 21.0) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = (100 + 900 * body + rng.normal(0, 20, body.shape)).astype(np.float32)
    result = segment(image, None, model="default", voxel_size=(1.0, 1.0, 1.0))
    assert any(w.startswith("one object holds") for w in result.warnings), result.warnings


def test_segment_reports_the_self_check(tmp_path):
    """End to end: an untrained model's speckle on a grainy regime draws a warning."""
    from tests.helpers import untrained_model

    from cellcut.segmentation import segment

    v = regime_volume("confocal-dense-grainy", 0)
    untrained_model(tmp_path / "random.pt")
    result = segment(
        v.image[:48, :48, :48], None, model=tmp_path / "random.pt", voxel_size=v.voxel_size,
        instances="connected",
    )  # fmt: skip
    assert result.warnings and result.summary["warnings"] == result.warnings
    assert result.summary["fingerprint"]["foreground_fraction"] > 0.05


def test_fingerprint_settings_follow_contrast_and_radius():
    from cellcut.fingerprint import DEFAULT_SEED_DISTANCE, Fingerprint

    grainy = Fingerprint(0.2, 1.2, 1.1, 0.0, "µm")
    clean = Fingerprint(0.2, 1.2, 12.0, 0.0, "µm")
    unknown = Fingerprint(0.0, None, 0.5, 0.0, "µm")
    assert grainy.denoise_sigma() == pytest.approx(0.2)  # a sixth of the radius
    assert clean.denoise_sigma() == 0.0 and unknown.denoise_sigma() == 0.0
    assert grainy.seed_distance() == pytest.approx(0.6)
    assert unknown.seed_distance() == DEFAULT_SEED_DISTANCE
    # Voronoi-Otsu's mask blur: 1 µm, or a quarter of the radius where that is less
    assert grainy.outline_sigma() == pytest.approx(0.3)
    assert Fingerprint(0.2, 8.0, 12.0, 0.0, "µm").outline_sigma() == 1.0
    assert unknown.outline_sigma() == 1.0


def test_outline_sigma_auto_is_used_and_said(tmp_path):
    from tests.helpers import untrained_model

    from cellcut.segmentation import segment

    v = regime_volume("confocal-dense-grainy", 0)
    image = v.image[:32, :48, :48]
    model = untrained_model(tmp_path / "m.pt")
    auto = segment(image, None, model=model, voxel_size=v.voxel_size, instances="voronoi-otsu")
    expected = measure(image, v.voxel_size).outline_sigma()
    assert expected < 1.0 and auto.summary["outline_sigma"] == pytest.approx(expected)
    fixed = segment(
        image, None, model=model, voxel_size=v.voxel_size, instances="voronoi-otsu",
        outline_sigma=1.0,
    )  # fmt: skip
    assert fixed.summary["outline_sigma"] == 1.0


def test_grainy_regime_is_measured_grainy_and_a_clean_one_is_not():
    from cellcut.fingerprint import GRAINY_CONTRAST, measure
    from cellcut.synthetic import regime_volume

    grainy = regime_volume("confocal-dense-grainy", 0)
    clean = regime_volume("large-nuclei", 0)
    assert measure(grainy.image, grainy.voxel_size).contrast_to_noise < GRAINY_CONTRAST
    assert measure(clean.image, clean.voxel_size).contrast_to_noise > GRAINY_CONTRAST


def test_sizes_spread_widely_are_said_with_settings_from_the_image_radius():
    # large nuclei cut into a few big parts and many fragments of every size
    volumes = np.concatenate([np.geomspace(20.0, 4000.0, 30), np.full(5, 4 / 3 * np.pi * 9.0**3)])
    image = Fingerprint(0.1, 9.0, 2.0, 0.0, "µm")  # the image's own radius, 9 µm
    findings = check_segmentation(volumes, 0.1, FP, image=image)
    spread = [f for f in findings if f.kind == "spread"]
    assert len(spread) == 1
    assert "--min-distance 4.5 --min-volume 382" in spread[0].message  # half of 9 µm; its sphere


def test_alike_sizes_and_few_objects_are_not_said_spread():
    rng = np.random.default_rng(0)
    alike = 4 / 3 * np.pi * 3.0**3 * np.exp(rng.normal(0, 0.4, 200))  # a real image's spread
    assert "spread" not in [f.kind for f in check_segmentation(alike, 0.2, FP)]
    few = np.geomspace(20.0, 4000.0, 9)
    assert "spread" not in [f.kind for f in check_segmentation(few, 0.2, FP)]


def test_segment_says_spread_where_the_model_fragments_large_textured_nuclei():
    """End to end: a draw of the training distribution (development volume 90029 of
    bench_regimes.py: 21 dim, textured nuclei of radius ~9 µm) that the shipped model's
    instance step cuts into hundreds of pieces; the remedy's settings come from the image's
    own radius, not the instance step's."""
    from cellcut.fingerprint import measure
    from cellcut.segmentation import segment
    from cellcut.synthetic import make_nuclei_volume, random_regime

    v = make_nuclei_volume(seed=90029, **random_regime(np.random.default_rng(90029)))
    result = segment(v.image, None, model="default", voxel_size=v.voxel_size)
    assert result.n_cells > 5 * v.labels.max()  # fragmented
    [warning] = [w for w in result.warnings if "spread widely" in w]
    image = measure(v.image, v.voxel_size)
    assert f"--min-distance {image.seed_distance():.3g}" in warning
