"""Segmentation quality against ground truth: foreground overlap and instance matching.

Instance matching follows the usual convention of the field (as in StarDist's ``matching``):
predicted and true objects are paired one-to-one so as to maximise the number of pairs whose
intersection over union (IoU) reaches a threshold, ties broken by total IoU (an optimal
assignment, scipy's ``linear_sum_assignment``). From the pairs at each threshold: true
positives, false positives, false negatives, precision TP/(TP+FP), recall TP/(TP+FN),
F1 = 2TP/(2TP+FP+FN), and panoptic quality PQ = (Σ IoU of pairs) / (TP + FP/2 + FN/2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient of two masks (non-zero = foreground); 1.0 when both are empty."""
    t = np.asarray(truth) != 0
    p = np.asarray(pred) != 0
    _check_same_shape(t, p)
    denom = t.sum() + p.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(t, p).sum() / denom)


def iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    t = np.asarray(truth) != 0
    p = np.asarray(pred) != 0
    _check_same_shape(t, p)
    union = np.logical_or(t, p).sum()
    return 1.0 if union == 0 else float(np.logical_and(t, p).sum() / union)


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"ground truth shape {a.shape} differs from prediction shape {b.shape}")


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (true, predicted) object pair that overlaps.

    Returns
    -------
    matrix, truth_ids, pred_ids
        ``matrix[i, j]`` is the IoU of ``truth_ids[i]`` and ``pred_ids[j]`` (0 where disjoint).
    """
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    if t.size != p.size:
        raise ValueError(f"ground truth has {t.size} voxels, prediction {p.size}")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    counts = sparse.coo_matrix(
        (np.ones(t.size, dtype=np.int64), (t_inv, p_inv)), shape=(len(t_ids), len(p_ids))
    ).tocsr()
    dense = counts.toarray()
    t_keep = t_ids != 0
    p_keep = p_ids != 0
    sizes_t = dense.sum(1)[t_keep]
    sizes_p = dense.sum(0)[p_keep]
    inter = dense[np.ix_(t_keep, p_keep)].astype(np.float64)
    union = sizes_t[:, None] + sizes_p[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(union > 0, inter / union, 0.0)
    return matrix, t_ids[t_keep], p_ids[p_keep]


@dataclass
class MatchResult:
    """Counts and scores of an instance matching at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    panoptic_quality: float


def _match(matrix: np.ndarray, threshold: float) -> tuple[int, float]:
    """Number of pairs with IoU ≥ threshold in an optimal one-to-one assignment, and Σ IoU."""
    if matrix.size == 0:
        return 0, 0.0
    ok = matrix >= threshold
    if threshold > 0.5:
        # above 0.5 an object can overlap at most one other that much: the pairs are unique
        return int(ok.sum()), float(matrix[ok].sum())
    n = max(matrix.shape)
    cost = -(ok.astype(np.float64)) - matrix / (2.0 * n)
    rows, cols = linear_sum_assignment(cost)
    hit = ok[rows, cols]
    return int(hit.sum()), float(matrix[rows, cols][hit].sum())


def match_instances(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[MatchResult]:
    """Match instance label images at each IoU threshold (see module docstring)."""
    _check_same_shape(np.asarray(truth), np.asarray(pred))
    matrix, t_ids, p_ids = iou_matrix(truth, pred)
    n_true, n_pred = len(t_ids), len(p_ids)
    results = []
    for th in thresholds:
        tp, iou_sum = _match(matrix, th)
        fp, fn = n_pred - tp, n_true - tp
        precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
        recall = tp / n_true if n_true else 1.0
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom else 1.0
        pq_denom = tp + fp / 2 + fn / 2
        results.append(
            MatchResult(
                threshold=float(th),
                tp=tp,
                fp=fp,
                fn=fn,
                precision=precision,
                recall=recall,
                f1=f1,
                mean_matched_iou=iou_sum / tp if tp else 0.0,
                panoptic_quality=iou_sum / pq_denom if pq_denom else 1.0,
            )
        )
    return results


@dataclass
class Evaluation:
    """All scores of a prediction against ground truth."""

    dice: float
    iou: float
    n_true: int
    n_pred: int
    matches: list[MatchResult] = field(default_factory=list)

    def at(self, threshold: float) -> MatchResult:
        for m in self.matches:
            if abs(m.threshold - threshold) < 1e-9:
                return m
        raise KeyError(f"no match computed at IoU {threshold}")

    @property
    def mean_f1(self) -> float:
        return float(np.mean([m.f1 for m in self.matches])) if self.matches else 0.0

    @property
    def f1_50(self) -> float:
        return self.at(0.5).f1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean_f1"] = self.mean_f1
        return out

    def table(self) -> str:
        lines = [
            f"foreground Dice {self.dice:.4f}  IoU {self.iou:.4f}  "
            f"objects: truth {self.n_true}, predicted {self.n_pred}",
            "IoU thr  TP    FP    FN    precision recall  F1      PQ",
        ]
        for m in self.matches:
            lines.append(
                f"{m.threshold:<8.1f} {m.tp:<5d} {m.fp:<5d} {m.fn:<5d} {m.precision:<9.4f} "
                f"{m.recall:<7.4f} {m.f1:<7.4f} {m.panoptic_quality:.4f}"
            )
        lines.append(f"mean F1 over thresholds: {self.mean_f1:.4f}")
        return "\n".join(lines)


def evaluate(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> Evaluation:
    """Foreground Dice/IoU and instance matching of ``pred`` against ``truth`` labels."""
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    _check_same_shape(truth, pred)
    matches = match_instances(truth, pred, thresholds)
    return Evaluation(
        dice=dice(truth, pred),
        iou=iou(truth, pred),
        n_true=len(np.unique(truth[truth != 0])),
        n_pred=len(np.unique(pred[pred != 0])),
        matches=matches,
    )
