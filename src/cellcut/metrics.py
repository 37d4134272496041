"""Segmentation quality against ground truth: foreground overlap and instance matching.

Instance matching follows the usual convention of the field (as in StarDist's ``matching``):
predicted and true objects are paired one-to-one so as to maximise the number of pairs whose
intersection over union (IoU) reaches a threshold, ties broken by total IoU (an optimal
assignment, scipy's ``linear_sum_assignment``). From the pairs at each threshold: true
positives, false positives, false negatives, precision TP/(TP+FP), recall TP/(TP+FN),
F1 = 2TP/(2TP+FP+FN), accuracy TP/(TP+FP+FN) (the figure Cellpose and StarDist papers
report as "average precision"), and panoptic quality PQ = (Σ IoU of pairs) / (TP + FP/2 + FN/2).
:meth:`MatchResult.to_dict` names them as ``stardist.matching`` does.
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


def iou_pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[sparse.csr_matrix, int, int]:
    """IoU of every overlapping (true, predicted) object pair, as a sparse matrix.

    Rows are the true objects and columns the predicted ones, both numbered by rank of their
    label value; only overlapping pairs are stored, so volumes with tens of thousands of
    objects need memory proportional to the overlaps, not to n_true × n_pred.

    Returns
    -------
    matrix, n_true, n_pred
    """
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    if t.size != p.size:
        raise ValueError(f"ground truth has {t.size} voxels, prediction {p.size}")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_sizes = np.bincount(t_inv, minlength=len(t_ids)).astype(np.float64)
    p_sizes = np.bincount(p_inv, minlength=len(p_ids)).astype(np.float64)
    both = (t != 0) & (p != 0)
    inter = sparse.coo_matrix(
        (np.ones(int(both.sum())), (t_inv[both], p_inv[both])), shape=(len(t_ids), len(p_ids))
    ).tocsr()
    inter.sum_duplicates()
    coo = inter.tocoo()
    union = t_sizes[coo.row] + p_sizes[coo.col] - coo.data
    matrix = sparse.csr_matrix((coo.data / union, (coo.row, coo.col)), shape=inter.shape)
    t_keep = np.flatnonzero(t_ids != 0)
    p_keep = np.flatnonzero(p_ids != 0)
    return matrix[t_keep][:, p_keep].tocsr(), len(t_keep), len(p_keep)


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense IoU matrix with the object ids (for small label images and inspection)."""
    matrix, _, _ = iou_pairs(truth, pred)
    t_ids = np.unique(np.asarray(truth))
    p_ids = np.unique(np.asarray(pred))
    return matrix.toarray(), t_ids[t_ids != 0], p_ids[p_ids != 0]


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
    accuracy: float = 0.0
    n_true: int = 0
    n_pred: int = 0
    mean_true_iou: float = 0.0

    def to_dict(self) -> dict:
        """The scores with ``stardist.matching``'s field names (``criterion`` "iou")."""
        return {
            "criterion": "iou",
            "thresh": self.threshold,
            "fp": self.fp,
            "tp": self.tp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "accuracy": self.accuracy,
            "f1": self.f1,
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "mean_true_score": self.mean_true_iou,
            "mean_matched_score": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
        }


def _match(matrix: sparse.csr_matrix, threshold: float) -> tuple[int, float]:
    """Pairs with IoU ≥ threshold in an optimal one-to-one assignment, and their Σ IoU.

    Above 0.5 an object can overlap at most one other that much, so the pairs are unique.
    Otherwise an assignment is solved per connected group of overlapping objects.
    """
    m = matrix.tocoo()
    ok = m.data >= threshold
    if threshold > 0.5 or not ok.any():
        return int(ok.sum()), float(m.data[ok].sum())
    from scipy.sparse.csgraph import connected_components

    n_t, n_p = matrix.shape
    edges = sparse.coo_matrix(
        (np.ones(int(ok.sum())), (m.row[ok], n_t + m.col[ok])), shape=(n_t + n_p, n_t + n_p)
    )
    _, component = connected_components(edges, directed=False)
    rows, cols, vals = m.row[ok], m.col[ok], m.data[ok]
    comp = component[rows]
    sizes = np.bincount(comp, minlength=component.max() + 1)
    single = sizes[comp] == 1  # one overlapping pair: matched as it is
    tp, total = int(single.sum()), float(vals[single].sum())
    order = np.argsort(comp[~single], kind="stable")
    r_all, c_all, v_all = rows[~single][order], cols[~single][order], vals[~single][order]
    _, starts = np.unique(comp[~single][order], return_index=True)
    bounds = [*starts[1:], len(order)] if len(starts) else []
    for a, b in zip(starts, bounds, strict=True):
        r, k = np.unique(r_all[a:b], return_inverse=True)
        q, j = np.unique(c_all[a:b], return_inverse=True)
        block = np.zeros((len(r), len(q)))
        block[k, j] = v_all[a:b]
        n = max(block.shape)
        cost = -(block >= threshold).astype(np.float64) - block / (2.0 * n)
        ri, ci = linear_sum_assignment(cost)
        hit = block[ri, ci] >= threshold
        tp += int(hit.sum())
        total += float(block[ri, ci][hit].sum())
    return tp, total


def match_instances(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[MatchResult]:
    """Match instance label images at each IoU threshold (see module docstring)."""
    _check_same_shape(np.asarray(truth), np.asarray(pred))
    matrix, n_true, n_pred = iou_pairs(truth, pred)
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
                accuracy=tp / (tp + fp + fn) if tp + fp + fn else 1.0,
                n_true=n_true,
                n_pred=n_pred,
                mean_true_iou=iou_sum / n_true if n_true else 0.0,
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
        out["matches"] = [m.to_dict() for m in self.matches]
        out["mean_f1"] = self.mean_f1
        return out

    def table(self) -> str:
        lines = [
            f"foreground Dice {self.dice:.4f}  IoU {self.iou:.4f}  "
            f"objects: truth {self.n_true}, predicted {self.n_pred}",
            "IoU thr  TP    FP    FN    precision recall  accuracy F1      PQ",
        ]
        for m in self.matches:
            lines.append(
                f"{m.threshold:<8.1f} {m.tp:<5d} {m.fp:<5d} {m.fn:<5d} {m.precision:<9.4f} "
                f"{m.recall:<7.4f} {m.accuracy:<8.4f} {m.f1:<7.4f} {m.panoptic_quality:.4f}"
            )
        lines.append(f"mean F1 over thresholds: {self.mean_f1:.4f}")
        return "\n".join(lines)


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """IoU thresholds: numbers above 0 and up to 1; a ConfigError otherwise."""
    from cellcut.errors import ConfigError

    values = tuple(float(t) for t in thresholds)
    bad = [t for t in values if not 0 < t <= 1]
    if bad or not values:
        raise ConfigError(
            "invalid option",
            f"threshold {bad[0]:g} is not an IoU (from 0 to 1)" if bad else "no threshold given",
            "give thresholds above 0 and up to 1, e.g. --thresholds 0.5 0.75",
        )
    return values


def evaluate(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> Evaluation:
    """Foreground Dice/IoU and instance matching of ``pred`` against ``truth`` labels."""
    thresholds = check_thresholds(thresholds)
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
