"""Confident learning on class probabilities (cleanlab's word): per-class thresholds, the
confident class of each row, estimated issue counts and the flags they give.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # elements of one [rows, K] block where whole [N, K] temporaries would be too large


def class_thresholds(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Confident learning's per-class thresholds: mean probability of class k over rows labelled k. [K]."""
    thresholds = np.ones(n_classes, dtype=np.float64)
    for k in range(n_classes):
        rows = labels == k
        if rows.any():
            thresholds[k] = float(probs[rows, k].mean())
    return thresholds


def confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the most probable class among those at or above their threshold; -1 when none is. [N]."""
    best = np.empty(len(probs), dtype=np.int64)
    step = max(1, CHUNK // max(probs.shape[1], 1))
    for start in range(0, len(probs), step):  # [B, K] temporaries, not [N, K]
        part = probs[start : start + step]
        above = part >= thresholds[None, :]
        masked = np.where(above, part, -np.inf)
        best[start : start + step] = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    return best


def estimated_issue_counts(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """How many rows of each given class are mislabelled, from the calibrated confident joint. int64 [K].

    The confident joint counts rows labelled i whose confident class (see :func:`confident_class`) is j;
    each row of it is rescaled to the number of rows labelled i (rows with no confident class are
    otherwise lost), and the off-diagonal mass of row i is class i's estimated number of wrong labels.
    """
    best = confident_class(probs, class_thresholds(probs, labels, n_classes))
    counted = best >= 0
    joint = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(joint, (labels[counted], best[counted]), 1.0)
    given = np.bincount(labels, minlength=n_classes).astype(np.float64)
    row_sums = joint.sum(axis=1)
    calibrated = joint * (given / np.maximum(row_sums, 1.0))[:, None]
    issues = given - np.diag(calibrated)
    return np.rint(np.clip(issues, 0, given)).astype(np.int64)


def flag_by_class(
    probs: np.ndarray, labels: np.ndarray, n_classes: int, *, order_by: np.ndarray | None = None
) -> np.ndarray:
    """bool [N]: per given class, its estimated number of wrong labels, taken lowest probability of the label
    first; a row whose most probable class is its label is never flagged (as cleanlab's prune_by_class).

    The count comes from confident learning; the order from the probability of the given label (or
    ``order_by`` [N], lower = flagged first), which ranks noisy below clean rows far better than a fixed
    threshold separates them.
    """
    counts = estimated_issue_counts(probs, labels, n_classes)
    self_confidence = probs[np.arange(len(labels)), labels] if order_by is None else order_by
    flagged = np.zeros(len(labels), dtype=bool)
    for k in range(n_classes):
        rows = np.flatnonzero(labels == k)
        if counts[k] == 0 or len(rows) == 0:
            continue
        order = rows[np.argsort(self_confidence[rows], kind="stable")]
        flagged[order[: counts[k]]] = True
    return flagged & (probs.argmax(axis=1) != labels)
