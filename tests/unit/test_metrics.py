"""Metrics against hand-computed cases and a brute-force matcher."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cellcut.metrics import dice, evaluate, iou, iou_matrix, match_instances


def test_dice_and_iou_hand_computed():
    t = np.array([1, 1, 1, 0, 0])
    p = np.array([0, 1, 1, 1, 0])
    assert dice(t, p) == pytest.approx(2 * 2 / 6)
    assert iou(t, p) == pytest.approx(2 / 4)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_matching_hand_computed():
    truth = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 3, 3]])
    pred = np.array([[5, 5, 5, 0, 0, 7, 7, 7, 0, 0]])
    # 1~5: IoU 3/4; 2~7: IoU 2/3; 3 unmatched
    m = {r.threshold: r for r in match_instances(truth, pred, thresholds=(0.5, 0.7, 0.8))}
    assert (m[0.5].tp, m[0.5].fp, m[0.5].fn) == (2, 0, 1)
    assert m[0.5].f1 == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert m[0.5].panoptic_quality == pytest.approx((0.75 + 2 / 3) / (2 + 0.5))
    assert (m[0.7].tp, m[0.7].fp, m[0.7].fn) == (1, 1, 2)
    assert m[0.8].tp == 0
    assert m[0.5].accuracy == pytest.approx(2 / 3) and m[0.7].accuracy == pytest.approx(1 / 4)
    named = m[0.5].to_dict()  # stardist.matching's field names and values
    assert named == {
        "criterion": "iou", "thresh": 0.5, "fp": 0, "tp": 2, "fn": 1,
        "precision": 1.0, "recall": pytest.approx(2 / 3), "accuracy": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8), "n_true": 3, "n_pred": 2,
        "mean_true_score": pytest.approx((0.75 + 2 / 3) / 3),
        "mean_matched_score": pytest.approx((0.75 + 2 / 3) / 2),
        "panoptic_quality": pytest.approx((0.75 + 2 / 3) / 2.5),
    }  # fmt: skip


def brute_force_tp(matrix, threshold):
    n_t, n_p = matrix.shape
    best = 0
    for perm in itertools.permutations(range(max(n_t, n_p)), n_t):
        tp = sum(1 for i, j in enumerate(perm) if j < n_p and matrix[i, j] >= threshold)
        best = max(best, tp)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_optimal_assignment_matches_brute_force_at_low_thresholds(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, size=(6, 6))
    pred = rng.integers(0, 5, size=(6, 6))
    matrix, _, _ = iou_matrix(truth, pred)
    for th in (0.1, 0.2, 0.3):
        [r] = match_instances(truth, pred, thresholds=(th,))
        assert r.tp == brute_force_tp(matrix, th)


def test_many_objects_use_little_memory():
    labels = np.arange(200 * 200, dtype=np.int32).reshape(1, 200, 200) + 1  # 40,000 objects
    ev = evaluate(labels, labels, thresholds=(0.3, 0.5))
    assert ev.n_true == 40_000 and ev.at(0.5).f1 == 1.0 and ev.at(0.3).tp == 40_000
