"""Comparing localizations with ground truth: one-to-one matching, Jaccard index, RMSE, bias, CRLB ratio.

Matching follows the SMLM challenge (Sage et al., Nat. Methods 16, 387 (2019)): within each frame, localizations
and true emitters are paired one-to-one to minimise the total distance (Hungarian algorithm), and a pair counts
as a true positive only if its distance is below the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


@dataclass
class Matching:
    """Indices of matched pairs and the detection counts."""

    truth_index: np.ndarray
    locs_index: np.ndarray
    n_truth: int
    n_locs: int

    @property
    def true_positives(self) -> int:
        return len(self.truth_index)

    @property
    def false_positives(self) -> int:
        return self.n_locs - self.true_positives

    @property
    def false_negatives(self) -> int:
        return self.n_truth - self.true_positives

    @property
    def jaccard(self) -> float:
        """TP / (TP + FP + FN)."""
        denom = self.true_positives + self.false_positives + self.false_negatives
        return self.true_positives / denom if denom else 1.0


def match(truth, locs, tolerance: float = 1.0) -> Matching:
    """Pair ``locs`` with ``truth`` frame by frame (both need ``frame``, ``x``, ``y``; tolerance in pixels)."""
    ti_all, li_all = [], []
    t_order = np.argsort(truth["frame"], kind="stable")
    l_order = np.argsort(locs["frame"], kind="stable")
    tf = truth["frame"][t_order]
    lf = locs["frame"][l_order]
    frames = np.intersect1d(tf, lf)
    t_lo = np.searchsorted(tf, frames, "left")
    t_hi = np.searchsorted(tf, frames, "right")
    l_lo = np.searchsorted(lf, frames, "left")
    l_hi = np.searchsorted(lf, frames, "right")
    for a, b, c, d in zip(t_lo, t_hi, l_lo, l_hi):
        ti = t_order[a:b]
        li = l_order[c:d]
        tp = np.column_stack([truth["x"][ti], truth["y"][ti]]).astype(float)
        lp = np.column_stack([locs["x"][li], locs["y"][li]]).astype(float)
        # only pairs within the tolerance can match; others get a prohibitive cost
        dist = cKDTree(tp).sparse_distance_matrix(cKDTree(lp), tolerance, output_type="coo_matrix")
        if dist.nnz == 0:
            continue
        cost = np.full((len(ti), len(li)), 1e6)
        cost[dist.row, dist.col] = dist.data
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] <= tolerance
        ti_all.append(ti[rows[ok]])
        li_all.append(li[cols[ok]])
    ti = np.concatenate(ti_all) if ti_all else np.zeros(0, np.int64)
    li = np.concatenate(li_all) if li_all else np.zeros(0, np.int64)
    return Matching(ti, li, len(truth), len(locs))


@dataclass
class Accuracy:
    """Detection and precision summary (positions in pixels)."""

    jaccard: float
    recall: float
    precision: float
    rmse_x: float
    rmse_y: float
    bias_x: float
    bias_y: float
    n_matched: int

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


def accuracy(truth, locs, tolerance: float = 1.0) -> tuple[Accuracy, Matching]:
    """Jaccard, recall, precision, RMSE and bias of ``locs`` against ``truth``."""
    m = match(truth, locs, tolerance)
    ex = locs["x"][m.locs_index].astype(float) - truth["x"][m.truth_index]
    ey = locs["y"][m.locs_index].astype(float) - truth["y"][m.truth_index]
    nan = float("nan")
    acc = Accuracy(
        jaccard=m.jaccard,
        recall=m.true_positives / m.n_truth if m.n_truth else nan,
        precision=m.true_positives / m.n_locs if m.n_locs else nan,
        rmse_x=float(np.sqrt(np.mean(ex**2))) if len(ex) else nan,
        rmse_y=float(np.sqrt(np.mean(ey**2))) if len(ey) else nan,
        bias_x=float(np.mean(ex)) if len(ex) else nan,
        bias_y=float(np.mean(ey)) if len(ey) else nan,
        n_matched=m.true_positives,
    )
    return acc, m


def nearest_neighbour_distance(truth) -> np.ndarray:
    """Distance (pixels) from each true spot to the nearest other true spot of its frame (inf if alone)."""
    out = np.full(len(truth), np.inf)
    order = np.argsort(truth["frame"], kind="stable")
    frames = truth["frame"][order]
    bounds = np.flatnonzero(np.diff(frames)) + 1
    for idx in np.split(order, bounds):
        if len(idx) < 2:
            continue
        pts = np.column_stack([truth["x"][idx], truth["y"][idx]]).astype(float)
        d, _ = cKDTree(pts).query(pts, k=2)
        out[idx] = d[:, 1]
    return out
