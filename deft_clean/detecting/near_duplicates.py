"""Near-duplicates confirmed at the pixel level: the feature search proposes pairs, the decoded images decide.

Frozen CLIP features put look-alike distinct images (two handwritten ones, two photos of one product) as
close as a JPEG re-encode, so features only propose candidate pairs. Each candidate's two images are
decoded through the reader and compared as grayscale thumbnails, by similarity and worst-block residual
(:mod:`deft_clean.inputs.pixel_similarity`).

A pair is a near-duplicate when its similarity is at least the threshold and its residual at most
``MAX_RESIDUAL``. Measured on 2,000 MNIST and 1,797 upscaled 8x8 digits (``benchmarks/duplicates.py``):
distinct look-alikes reach similarity 0.987 (MNIST) or residual 0.085 (8x8 digits) but never both; JPEG
q75, 1-pixel shifts, +-10% brightness and resizes stay above 0.989 and below 0.074. Only rows in candidate
pairs are decoded (``2 * THUMB**2`` bytes each are kept), so the cost follows the candidates, not N**2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..inputs.pixel_similarity import DUPLICATE_THRESHOLD, MAX_RESIDUAL, Thumbnails, compare_rows

PairTest = Callable[[np.ndarray], np.ndarray]  # row pairs int64 [P, 2] -> bool [P]: the two are copies


def confirm(
    thumbs: Thumbnails, candidates: np.ndarray, *, threshold: float = DUPLICATE_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs (int64 [P, 2]) that are near-duplicates at the pixel level, and their similarity."""
    if not len(candidates):
        return candidates.reshape(0, 2), np.zeros(0, dtype=np.float32)
    pairs = np.unique(np.sort(candidates, axis=1), axis=0)  # (i, j) and (j, i) are compared once
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    similarity, residual = compare_rows(thumbs, pairs, threshold=threshold)
    near = (similarity >= threshold) & (residual <= MAX_RESIDUAL)
    return pairs[near], similarity[near]


def group_details(groups: np.ndarray, hashes: Any, similarity_to: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each grouped row's kind and similarity: (kind object [N]: "exact" | "near" | None, float32 [N]).

    A row is "exact" when another row of its group has the same content hash, else "near". Its similarity
    is ``similarity_to(rows, firsts)`` to its group's first member (float32 [M]); the first member's is
    its best match in the group. NaN for unique rows.
    """
    n = len(groups)
    kind = np.full(n, None, dtype=object)
    similarity = np.full(n, np.nan, dtype=np.float32)
    grouped = np.flatnonzero(groups >= 0)
    if not len(grouped):
        return kind, similarity
    first = {}
    for i in grouped:
        first.setdefault(int(groups[i]), int(i))
    firsts = np.array([first[int(groups[i])] for i in grouped])
    others = grouped != firsts
    similarity[grouped[others]] = similarity_to(grouped[others], firsts[others])
    for g, row in first.items():
        members = similarity[(groups == g) & (np.arange(n) != row)]
        similarity[row] = np.nanmax(members) if np.isfinite(members).any() else np.nan
    keys = [(int(groups[i]), hashes[i]) for i in grouped] if hashes is not None else []
    counts: dict[tuple[int, Any], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    for i, row in enumerate(grouped):
        same_bytes = bool(keys) and keys[i][1] is not None and counts[keys[i]] > 1
        kind[row] = "exact" if same_bytes else "near"
    return kind, similarity


def copies_test(
    features: np.ndarray,
    hashes: Sequence[str | None] | None,
    thumbs: Thumbnails | None,
    *,
    threshold: float,
    feature_threshold: float,
) -> PairTest:
    """Whether row pairs are copies by the test that proposed them: the same bytes, else pixel similarity
    >= ``threshold`` and residual <= ``MAX_RESIDUAL`` (with thumbnails), else feature cosine >=
    ``feature_threshold``."""

    def test(pairs: np.ndarray) -> np.ndarray:
        if thumbs is not None:
            similarity, residual = compare_rows(thumbs, pairs, threshold=threshold)
            near = (similarity >= threshold) & (residual <= MAX_RESIDUAL)
        else:
            a, b = features[pairs[:, 0]], features[pairs[:, 1]]  # [P, D] each
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            near = (a * b).sum(axis=1) >= feature_threshold * np.maximum(norms, 1e-12)
        if hashes is not None:
            near |= np.array([hashes[i] is not None and hashes[i] == hashes[j] for i, j in pairs], dtype=bool)
        return near

    return test


def clique_groups(n: int, pairs: np.ndarray, copies: PairTest) -> np.ndarray:
    """int64 [n]: duplicate groups in which every member is a copy of every other (``copies``), numbered 0, 1,
    ... by their first row; -1 alone.

    The pairs only propose: their connected components are split in row order, each row joining the first
    group of its component whose every member it copies, else starting a group. So a chain of small steps
    (a morph from one image to another, each step within the threshold) never becomes one group: whichever
    member export keeps, every other member of its group is a copy of it.
    """
    groups = np.full(n, -1, dtype=np.int64)
    if not len(pairs):
        return groups
    component = group_ids(n, pairs)  # every paired row is in a component of two or more
    next_id = 0
    cliques: dict[int, list[list[int]]] = {}  # component -> its groups so far (rows in order)
    for row in np.flatnonzero(component >= 0):
        found = cliques.setdefault(int(component[row]), [])
        for members in found:
            others = np.array(members, dtype=np.int64)
            if copies(np.stack([np.full(len(others), row), others], axis=1)).all():
                members.append(int(row))
                break
        else:
            found.append([int(row)])
    for found in sorted((m for ms in cliques.values() for m in ms if len(m) > 1), key=lambda m: m[0]):
        groups[found] = next_id
        next_id += 1
    return groups


def group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """int64 [n]: connected components of the pairs (union-find), numbered 0, 1, ... in row order; -1 alone."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    ids = np.full(n, -1, dtype=np.int64)
    numbering: dict[int, int] = {}
    for i in np.flatnonzero(sizes[roots] > 1):
        ids[i] = numbering.setdefault(int(roots[i]), len(numbering))
    return ids
