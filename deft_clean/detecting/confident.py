"""Confident learning on class probabilities (cleanlab's word): per-class thresholds, the
confident class of each row, estimated issue counts and the flags they give; and the probability that each
given label is right, from the same probabilities and a noise model fitted to the labels
(:func:`label_posterior`).
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # elements of one [rows, K] block where whole [N, K] temporaries would be too large
EM_ITERS = 200  # EM iterations of label_posterior at most
EM_TOL = 1e-5  # ... stopping when no entry of the noise transition moves more than this
EM_START = 0.9  # the transition EM starts from: this much on the diagonal, the rest spread evenly
EM_CLASSES = 16  # candidate true classes per row (its most probable ones, and its label)


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


def flag_by_class(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """bool [N]: per given class, its estimated number of wrong labels, taken lowest probability of the label
    first; a row whose most probable class is its label is never flagged (as cleanlab's prune_by_class). The
    fused rule flags with :func:`label_posterior`; this count only picks the rows the image evidence keeps, on
    which the fusion weight is fitted.
    """
    counts = estimated_issue_counts(probs, labels, n_classes)
    self_confidence = probs[np.arange(len(labels)), labels]
    flagged = np.zeros(len(labels), dtype=bool)
    for k in range(n_classes):
        rows = np.flatnonzero(labels == k)
        if counts[k] == 0 or len(rows) == 0:
            continue
        order = rows[np.argsort(self_confidence[rows], kind="stable")]
        flagged[order[: counts[k]]] = True
    return flagged & (probs.argmax(axis=1) != labels)


def label_posterior(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, float, np.ndarray]:
    """P(the given label is right | the evidence, the labels) per row, float32 [N]; the noise rate the fitted
    noise model implies (the mean of ``1 - posterior``); and each row's most probable true class other than its
    label under the same posterior, int64 [N] (-1 with one class): what a row flagged by the posterior should
    be, even where the probe's own top class is the label (its mass spread over the others).

    ``probs`` [N, K] are class probabilities that did not learn the row's own label (cross-fitted probes on
    selected rows): the prior of its true class. The labels are modelled as drawn from a transition
    ``T[j, k] = P(label k | true class j)``; EM fits ``T`` by maximum likelihood of the given labels,
    ``sum_i log sum_j probs[i, j] T[j, y_i]`` (concave in ``T``: the start sets only how fast it gets there),
    and the posterior of the given label is ``probs[i, y_i] T[y_i, y_i] / sum_j probs[i, j] T[j, y_i]``.
    Unlike confident learning's count, a clean image the probe finds ambiguous is not counted as a wrong
    label: its probability mass is weighed against how often labels are wrong at all (shifted-digits
    benchmark: the confident joint flagged 24-25% of the rows with 20% wrong; this posterior below 0.5, 20.0%).

    Each row's true class is one of its ``EM_CLASSES`` most probable classes or its label (the rest of a
    probe's mass is negligible), so ``T`` lives on the (class, label) pairs some row uses and an EM step costs
    O(N x EM_CLASSES) at any K (1M rows x 1,000 classes: seconds, not the hour a dense [N, K] EM takes).
    """
    n = len(labels)
    y = np.asarray(labels, dtype=np.int64)
    if n == 0:
        return np.zeros(0, np.float32), 0.0, np.zeros(0, np.int64)
    width = min(n_classes, EM_CLASSES)
    candidates = np.empty((n, width), dtype=np.int64)  # [N, M] classes a row's true class may be
    prior = np.empty((n, width), dtype=np.float64)  # [N, M] their probabilities
    step = max(1, CHUNK // max(n_classes, 1))
    for start in range(0, n, step):
        part = slice(start, start + step)
        p = probs[part]
        if width < n_classes:  # the ``width`` most probable classes, in no particular order, and the label
            top = np.argpartition(-p, width - 1, axis=1)[:, :width]
            missing = ~(top == y[part, None]).any(axis=1)
            top[missing, -1] = y[part][missing]
        else:
            top = np.tile(np.arange(n_classes), (len(p), 1))
        candidates[part] = top
        prior[part] = np.clip(np.take_along_axis(p, top, axis=1).astype(np.float64), 1e-12, None)
    pairs = candidates * n_classes + y[:, None]  # [N, M] flat (true class, label) pair of each candidate
    keys, slot = np.unique(pairs, return_inverse=True)  # the pairs T lives on; slot [N * M] -> pair
    slot = slot.reshape(n, width)
    true_of_key = keys // n_classes
    off = (1.0 - EM_START) / max(n_classes - 1, 1)
    transition = np.where(true_of_key == keys % n_classes, EM_START, off)  # T on the pairs, float64 [P]
    is_label = candidates == y[:, None]  # [N, M] where the label sits among the candidates
    for _ in range(EM_ITERS):
        q = prior * transition[slot]  # [N, M] prior x P(given label | candidate true class)
        q /= q.sum(axis=1, keepdims=True)
        counts = np.bincount(slot.ravel(), weights=q.ravel(), minlength=len(keys))  # expected rows per pair
        totals = np.bincount(true_of_key, weights=counts, minlength=n_classes)  # per true class
        updated = counts / np.maximum(totals[true_of_key], 1e-300)
        moved = float(np.abs(updated - transition).max())
        transition = updated
        if moved < EM_TOL:
            break
    q = prior * transition[slot]
    q /= q.sum(axis=1, keepdims=True)
    right = (q * is_label).sum(axis=1).astype(np.float32)  # [N]
    best_other = np.where(is_label, -1.0, q).argmax(axis=1)  # [N] slot of the likeliest candidate not the label
    other = np.where(width > 1, candidates[np.arange(n), best_other], -1)
    return right, float(1.0 - right.mean()), other
