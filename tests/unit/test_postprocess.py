"""Instance post-processing: inscribed radii, the automatic spot sigma, Voronoi-Otsu."""

from __future__ import annotations

import numpy as np
import pytest

from cellcut.postprocess import auto_spot_sigma, object_radii


def ball(shape, centre, radius_um, voxel_size=(1.0, 1.0, 1.0)):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * v) ** 2 for g, c, v in zip(grid, centre, voxel_size, strict=True))
    return d2 <= radius_um**2


def test_object_radii_are_physical_inscribed_radii():
    # a sphere of radius 6 µm sampled at (2, 1, 1) µm, and one of 3 µm
    vs = (2.0, 1.0, 1.0)
    mask = ball((20, 40, 60), (10, 20, 15), 6.0, vs) | ball((20, 40, 60), (10, 20, 45), 3.0, vs)
    radii, sizes = object_radii(mask, vs)
    assert np.sort(radii) == pytest.approx([3.0, 6.0], abs=1.0)
    assert sizes[np.argmax(radii)] == mask[:, :, :30].sum()
    # in voxels without a voxel size: the big one's x radius
    radii, _ = object_radii(ball((20, 40, 40), (10, 20, 20), 6.0))
    assert radii.tolist() == [pytest.approx(6, abs=1)]


def test_object_radii_skip_small_and_cut_objects():
    mask = ball((20, 40, 40), (10, 20, 20), 5.0)
    mask[0, 0, 0] = True  # one voxel: under min_voxels
    assert len(object_radii(mask)[0]) == 1
    cut = ball((20, 40, 40), (10, 20, 2), 5.0)  # touches the x = 0 face
    assert len(object_radii(cut)[0]) == 1
    assert len(object_radii(cut, open_faces=[(2, 0)])[0]) == 0
    assert len(object_radii(cut, open_faces=[(2, -1)])[0]) == 1
    assert len(object_radii(np.zeros((5, 5, 5), bool))[0]) == 0


def test_auto_spot_sigma_is_half_the_median_radius():
    assert auto_spot_sigma(np.array([2.0, 4.0, 10.0])) == (2.0, 4.0)
    assert auto_spot_sigma(np.zeros(0)) == (2.0, None)  # nothing measured: the default
    assert auto_spot_sigma(np.array([0.2]), (0.5, 0.25, 0.25)) == (0.125, 0.2)  # floor


def test_typical_radius_leaves_out_specks():
    from cellcut.postprocess import typical_radius

    # forty one-voxel specks do not outvote two real nuclei
    radii = np.array([0.5] * 40 + [6.0, 7.0])
    sizes = np.array([1.0] * 40 + [900.0, 1400.0])
    assert typical_radius(radii, sizes) == 6.5
    assert typical_radius(np.zeros(0), np.zeros(0)) is None


def _pairs_scene(seed=0):
    """Balls of radius 4.5-5.5 voxels; most sites hold two overlapping ones (centres 6.5
    apart), which a blur-based split merges. Returns (probability, true count)."""
    rng = np.random.default_rng(seed)
    shape = (24, 96, 96)
    mask, n = np.zeros(shape, bool), 0
    for y in (14, 40, 66):
        for x in (12, 44, 76):
            r = rng.uniform(4.5, 5.5)
            mask |= ball(shape, (12, y, x), r)
            n += 1
            if rng.random() < 0.6:
                mask |= ball(shape, (12, y, x + 6.5), r)
                n += 1
    return mask.astype(np.float32), n


def test_size_spread_is_the_mad_of_log_volumes():
    from cellcut.postprocess import size_spread

    labels = np.repeat(np.arange(5), [7, 10, 20, 40, 80])  # background 7, objects 1..4
    logs = np.log([10, 20, 40, 80])
    assert size_spread(labels) == pytest.approx(np.median(np.abs(logs - np.median(logs))))
    assert size_spread(np.zeros(10, int)) == float("inf")
    assert size_spread(np.array([0, 1, 1])) == float("inf")


def test_auto_instances_keep_the_labelling_whose_sizes_agree():
    from cellcut.postprocess import choose_instances, instances, size_spread

    prob, truth = _pairs_scene()
    candidates = {m: instances(prob, m, min_distance=2.5) for m in ("voronoi-otsu", "watershed")}
    assert candidates["voronoi-otsu"].max() < truth  # merged pairs: the spread widens
    labels, chosen = choose_instances(prob, min_distance=2.5)
    assert chosen == min(candidates, key=lambda m: size_spread(candidates[m])) == "watershed"
    assert labels.max() == truth
    np.testing.assert_array_equal(instances(prob, "auto", min_distance=2.5), labels)


def test_auto_instances_prefer_voronoi_otsu_on_a_tie():
    from cellcut.postprocess import choose_instances

    shape = (24, 48, 48)
    prob = (ball(shape, (12, 12, 12), 5) | ball(shape, (12, 34, 34), 5)).astype(np.float32)
    labels, chosen = choose_instances(prob)
    assert chosen == "voronoi-otsu" and labels.max() == 2


def test_object_scale_is_the_capped_geometric_mean_of_both_estimates():
    from cellcut.segmentation.labelling import IMAGE_RADIUS_CAP, object_scale

    assert object_scale(4.0, 4.0) == pytest.approx(4.0)
    assert object_scale(6.0, 4.0) == pytest.approx(np.sqrt(24.0))  # touching nuclei merged
    assert object_scale(3.0, 1.0) == pytest.approx(np.sqrt(IMAGE_RADIUS_CAP))  # a tissue body
    assert object_scale(40.0, 3.0) == object_scale(6.0, 3.0)  # the cap, however far off
    assert object_scale(None, 3.0) == 3.0 and object_scale(5.0, None) == 5.0
    assert object_scale(None, None) is None


def test_trims_halo_only_where_the_radius_spans_few_coarse_steps():
    from cellcut.postprocess import HALO_TRIM_STEPS, trims_halo

    assert trims_halo(3.0, (3.0, 1.0, 1.0))  # small nuclei, 3 µm z-steps: one step
    assert not trims_halo(12.0, (2.18, 1.0, 1.0))  # embryo nuclei: 5.5 z-steps
    assert trims_halo(HALO_TRIM_STEPS - 0.1, None) and not trims_halo(HALO_TRIM_STEPS, None)
    assert not trims_halo(None, (3.0, 1.0, 1.0))


def _blurred_slab(height: float) -> tuple[np.ndarray, np.ndarray]:
    """A nucleus two z-steps tall (slices 10-11) of ``height`` over a background of 10, blurred
    as on the small-nuclei regime (σ 0.8 z-steps, 0.6 voxels in y, x); and a model's outline
    of it four steps tall."""
    from scipy import ndimage as ndi

    truth = np.zeros((22, 20, 20), np.float32)
    truth[10:12, 6:14, 6:14] = 1.0
    image = 10.0 + height * ndi.gaussian_filter(truth, (0.8, 0.6, 0.6))
    outline = np.zeros(truth.shape, np.int32)
    outline[9:13, 5:15, 5:15] = 1
    return image, outline


def test_trim_halo_keeps_the_half_height_of_a_blurred_nucleus():
    from cellcut.postprocess import trim_halo

    image, outline = _blurred_slab(100.0)
    trimmed = trim_halo(outline, image, 2.0, (1.0, 1.0, 1.0))
    zs = np.flatnonzero(trimmed.any(axis=(1, 2)))
    assert zs.tolist() == [10, 11]  # the blur slices (9 and 12) go, the nucleus stays
    ys = np.flatnonzero(trimmed[10].any(axis=1))
    assert ys.tolist() == list(range(6, 14))  # and its own rows in y
    assert set(np.unique(trimmed)) == {0, 1}  # the id is kept
    # the same image 50 times brighter, on another background: the same voxels
    bright = trim_halo(outline, image * 50 + 300, 2.0, (1.0, 1.0, 1.0))
    assert np.array_equal(bright, trimmed)


def test_trim_halo_fills_holes_and_never_empties_an_object():
    from cellcut.postprocess import trim_halo

    image, outline = _blurred_slab(100.0)
    image[10:12, 9:11, 9:11] = 10.0  # a dark hole in the nucleus (texture)
    trimmed = trim_halo(outline, image, 2.0, (1.0, 1.0, 1.0))
    assert trimmed[10:12, 9:11, 9:11].all()
    flat = np.full(outline.shape, 10.0, np.float32)  # an object no brighter than around it
    assert np.array_equal(trim_halo(outline, flat, 2.0, (1.0, 1.0, 1.0)), outline)
    assert trim_halo(np.zeros_like(outline), image, 2.0).max() == 0


def test_trim_halo_in_place_equals_a_copy_and_leaves_inputs_alone_otherwise():
    from cellcut.postprocess import trim_halo

    image, outline = _blurred_slab(100.0)
    image = image.astype(np.float32)
    kept_image, kept_outline = image.copy(), outline.copy()
    copied = trim_halo(outline, image, 2.0, (1.0, 1.0, 1.0))
    assert np.array_equal(image, kept_image) and np.array_equal(outline, kept_outline)
    inplace = trim_halo(outline, image, 2.0, (1.0, 1.0, 1.0), overwrite=True)
    assert inplace is outline and np.array_equal(inplace, copied)
    assert not np.array_equal(image, kept_image)  # the blur went into the image's memory


def test_split_necks_splits_each_object_at_its_own_neck_only():
    from cellcut.postprocess import split_necks

    shape = (20, 40, 70)
    pair = ball(shape, (10, 20, 14), 6.0) | ball(shape, (10, 20, 26), 6.0)  # a neck at x = 20
    labels = np.zeros(shape, np.int32)
    labels[pair] = 1
    labels[ball(shape, (10, 20, 55), 7.0)] = 2  # one round nucleus: no neck
    split = split_necks(labels, 2.0)
    assert split.max() == 3 and set(np.unique(split)) == {0, 1, 2, 3}
    assert np.array_equal(split > 0, labels > 0)  # no voxel gained or lost
    left, right = split[10, 20, 10], split[10, 20, 30]
    assert left != right and {left, right} == {1, 2}  # the pair's pieces, in the object order
    assert (split[labels == 2] == 3).all()  # the round one whole
    # in place: the same result in the labels' own memory; a copy leaves them alone
    kept = labels.copy()
    copied = split_necks(labels, 2.0)
    assert np.array_equal(labels, kept)
    inplace = split_necks(labels, 2.0, overwrite=True)
    assert inplace is labels and np.array_equal(inplace, copied)


def test_split_necks_does_not_mix_pieces_with_later_ids():
    from cellcut.postprocess import split_necks

    shape = (16, 30, 80)
    labels = np.zeros(shape, np.int32)
    labels[ball(shape, (8, 15, 9), 5.0) | ball(shape, (8, 15, 19), 5.0)] = 1  # a pair
    labels[ball(shape, (8, 15, 30), 5.0) & (labels == 0)] = 2  # touching the pair's right half
    labels[(ball(shape, (8, 15, 45), 5.0) | ball(shape, (8, 15, 55), 5.0)) & (labels == 0)] = 3
    split = split_necks(labels, 2.0)
    assert split.max() == 5
    for i, pieces in ((1, 2), (2, 1), (3, 2)):  # every piece inside the object it came from
        assert len(np.unique(split[labels == i])) == pieces
    assert sum(len(np.unique(split[labels == i])) for i in (1, 2, 3)) == 5


def test_split_necks_keeps_a_part_no_seed_reaches_as_its_own_piece():
    from cellcut.postprocess import split_necks

    shape = (20, 30, 40)
    labels = np.zeros(shape, np.int32)
    labels[ball(shape, (10, 15, 12), 6.0)] = 1
    labels[9:11, 14:16, 20:22] = 1  # a crumb of the same object, within a seed distance of its peak
    labels[ball(shape, (10, 15, 32), 4.0)] = 2
    split = split_necks(labels, 6.0)
    assert np.array_equal(split > 0, labels > 0)  # nothing dropped
    assert split.max() == 3
    crumb = split[9:11, 14:16, 20:22]
    assert len(np.unique(crumb)) == 1
    assert crumb[0, 0, 0] not in (split[10, 15, 12], split[10, 15, 32])


def test_distance_watershed_splits_the_same_shape_at_any_voxel_size():
    # two overlapping nuclei (radius 12 voxels, centres 11 apart): the same voxels, sampled at
    # 0.127 µm (the plant-nuclei regime), 1 µm and 4 µm, with seeds half a radius apart, must
    # split alike; a blur fixed in µm (the earlier 0.5 µm + half a voxel) merged them at 0.127
    from cellcut.postprocess import distance_watershed

    shape = (30, 40, 60)
    mask = ball(shape, (15, 20, 24.5), 12.0) | ball(shape, (15, 20, 35.5), 12.0)
    results = [distance_watershed(mask, 6.0 * k, (k, k, k)) for k in (0.127, 1.0, 4.0)]
    assert results[1].max() == 2
    for labels in results:
        assert np.array_equal(labels, results[1])


def test_distance_watershed_splits_plant_like_nuclei_anisotropic():
    # the plant-nuclei regime's voxel (0.284, 0.127, 0.127) µm, nuclei of radius 1.5 µm whose
    # centres are 1.4 µm apart along x, and a third alone: three objects
    from cellcut.postprocess import distance_watershed

    vs = (0.284, 0.127, 0.127)
    shape = (24, 40, 100)
    mask = ball(shape, (12, 20, 29.5), 1.5, vs) | ball(shape, (12, 20, 40.5), 1.5, vs)
    mask |= ball(shape, (12, 20, 80), 1.5, vs)
    labels = distance_watershed(mask, 0.75, vs)
    assert labels.max() == 3
    assert labels[12, 20, 24] != labels[12, 20, 46]
    assert np.array_equal(labels > 0, mask)


def test_auto_method_wants_a_clearly_smaller_spread_for_voronoi_otsu_among_many_objects():
    from cellcut.postprocess import AUTO_MARGIN, AUTO_MIN_OBJECTS, auto_method

    many = {"voronoi-otsu": AUTO_MIN_OBJECTS, "watershed": AUTO_MIN_OBJECTS + 5}
    few = {"voronoi-otsu": AUTO_MIN_OBJECTS - 1, "watershed": AUTO_MIN_OBJECTS + 5}
    ws = 0.35
    slightly = {"voronoi-otsu": 0.95 * ws, "watershed": ws}  # smaller, within the margin
    clearly = {"voronoi-otsu": 0.99 * AUTO_MARGIN * ws, "watershed": ws}
    assert auto_method(slightly, many) == "watershed"
    assert auto_method(clearly, many) == "voronoi-otsu"
    # few objects: the smaller spread, ties to Voronoi-Otsu
    assert auto_method(slightly, few) == "voronoi-otsu"
    assert auto_method({"voronoi-otsu": ws, "watershed": ws}, few) == "voronoi-otsu"
    assert auto_method({"voronoi-otsu": ws, "watershed": 0.9 * ws}, few) == "watershed"
    # no objects at all: infinite spreads, a tie
    assert (
        auto_method(
            {"voronoi-otsu": np.inf, "watershed": np.inf}, {"voronoi-otsu": 0, "watershed": 0}
        )
        == "voronoi-otsu"
    )


def test_auto_instances_split_many_touching_pairs_with_the_watershed():
    from cellcut.postprocess import AUTO_MIN_OBJECTS, choose_instances

    rng = np.random.default_rng(3)
    shape = (24, 96, 200)
    mask, n = np.zeros(shape, bool), 0
    for y in (14, 40, 66):
        for x in range(12, 190, 26):
            r = rng.uniform(4.5, 5.5)
            mask |= ball(shape, (12, y, x), r)
            mask |= ball(shape, (12, y, x + 7), r)  # a touching pair
            n += 2
    assert n >= AUTO_MIN_OBJECTS
    labels, chosen = choose_instances(mask.astype(np.float32), min_distance=2.5)
    assert chosen == "watershed" and labels.max() == n
