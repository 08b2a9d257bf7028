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

from collections.abc import Callable
from typing import Any

import numpy as np

from ..inputs.pixel_similarity import MAX_RESIDUAL, Thumbnails, compare_rows

PairTest = Callable[[np.ndarray], np.ndarray]  # row pairs int64 [P, 2] -> bool [P]: the two are copies


def group_details(groups: np.ndarray, rep: np.ndarray, similarity_to: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each grouped row's kind and similarity: (kind object [N]: "exact" | "near" | None, float32 [N]).

    A row is "exact" when another row of its group has the same bytes (the same representative ``rep``, int [N],
    ``health.representatives``), else "near". Its similarity is ``similarity_to(rows, firsts)`` to its group's
    first member (float32 [M]); the first member's is its best match in the group. NaN for unique rows.
    """
    n = len(groups)
    kind = np.full(n, None, dtype=object)
    similarity = np.full(n, np.nan, dtype=np.float32)
    grouped = np.flatnonzero(groups >= 0)
    if not len(grouped):
        return kind, similarity
    ids, first_at, slot = np.unique(groups[grouped], return_index=True, return_inverse=True)
    leaders = grouped[first_at]  # [G] each group's first row
    firsts = leaders[slot]  # [M] the first row of each grouped row's group
    others = grouped != firsts
    similarity[grouped[others]] = similarity_to(grouped[others], firsts[others])
    best = np.full(len(ids), np.nan, dtype=np.float32)
    np.fmax.at(best, slot[others], similarity[grouped[others]])  # NaN-ignoring max over each group's others
    similarity[leaders] = best
    # rows of one content always share a group (health.with_copies): counting the content among grouped rows
    same_bytes = np.bincount(rep[grouped], minlength=n)[rep[grouped]] > 1
    kind[grouped] = np.where(same_bytes, "exact", "near")
    return kind, similarity


def copies_test(
    features: np.ndarray, thumbs: Thumbnails | None, *, threshold: float, feature_threshold: float
) -> PairTest:
    """Whether row pairs of distinct pictures (rows with the same bytes are one representative, see
    ``health.representatives``) are copies by the test that proposed them: pixel similarity >= ``threshold``
    and residual <= ``MAX_RESIDUAL`` (with thumbnails), else feature cosine >= ``feature_threshold``."""

    def test(pairs: np.ndarray) -> np.ndarray:
        if thumbs is not None:
            similarity, residual = compare_rows(thumbs, pairs, threshold=threshold)
            return (similarity >= threshold) & (residual <= MAX_RESIDUAL)
        a, b = features[pairs[:, 0]], features[pairs[:, 1]]  # [P, D] each
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return (a * b).sum(axis=1) >= feature_threshold * np.maximum(norms, 1e-12)

    return test


FULL_COMPONENT = 64  # components up to this many rows have every pair tested in one batch


class PairMemo:
    """``copies`` (a :data:`PairTest`) evaluated at most once per unordered pair, in batches; ``known`` (int64
    [M, 2] pairs, bool [M]) seeds it with pairs already tested (the confirmed and rejected candidates)."""

    def __init__(self, n: int, copies: PairTest, known: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.n, self.copies = n, copies
        self.keys = np.zeros(0, dtype=np.int64)  # sorted pair keys
        self.values = np.zeros(0, dtype=bool)
        if known is not None and len(known[0]):
            self._store(self._key(known[0]), np.asarray(known[1], dtype=bool))

    def _key(self, pairs: np.ndarray) -> np.ndarray:
        return np.minimum(pairs[:, 0], pairs[:, 1]) * self.n + np.maximum(pairs[:, 0], pairs[:, 1])

    def _store(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys, first = np.unique(keys, return_index=True)
        keys = np.concatenate([self.keys, keys])
        values = np.concatenate([self.values, values[first]])
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]

    def test(self, pairs: np.ndarray) -> np.ndarray:
        """bool [P]: whether each pair is a copy; untested pairs are tested in one call to ``copies``."""
        if not len(pairs):
            return np.zeros(0, dtype=bool)
        keys = self._key(pairs)
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        hit = (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        result = np.zeros(len(pairs), dtype=bool)
        result[hit] = self.values[at[hit]]
        missing = np.flatnonzero(~hit)
        if len(missing):
            fresh, where = np.unique(keys[missing], return_inverse=True)
            tested = self.copies(np.stack([fresh // self.n, fresh % self.n], axis=1))
            result[missing] = tested[where]
            self._store(fresh, tested)
        return result


def clique_groups(
    n: int, pairs: np.ndarray, copies: PairTest, *, known: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """int64 [n]: duplicate groups in which every member is a copy of every other (``copies``), numbered 0, 1,
    ... by their first row; -1 alone.

    The pairs only propose: their connected components are split in row order, each row joining the first
    group of its component whose every member it copies, else starting a group. So a chain of small steps
    (a morph from one image to another, each step within the threshold) never becomes one group: whichever
    member export keeps, every other member of its group is a copy of it. Each pair is tested once
    (``known``: pairs already tested, see :class:`PairMemo`); the pairs of components up to ``FULL_COMPONENT``
    rows are tested together in one batch.
    """
    groups = np.full(n, -1, dtype=np.int64)
    if not len(pairs):
        return groups
    component = group_ids(n, pairs)  # every paired row is in a component of two or more
    rows = np.flatnonzero(component >= 0)
    rows = rows[np.argsort(component[rows], kind="stable")]  # grouped by component, row order inside
    members = np.split(rows, np.flatnonzero(np.diff(component[rows])) + 1)
    memo = PairMemo(n, copies, known)
    small = [m for m in members if len(m) <= FULL_COMPONENT]
    if small:  # every pair of every small component in one batch
        memo.test(np.concatenate([m[np.stack(np.triu_indices(len(m), 1), axis=1)] for m in small]))
    found: list[list[int]] = []
    for member_rows in members:
        m = len(member_rows)
        if m <= FULL_COMPONENT:
            upper = np.stack(np.triu_indices(m, 1), axis=1)  # [m(m-1)/2, 2] local pairs
            matrix = np.zeros((m, m), dtype=bool)
            matrix[upper[:, 0], upper[:, 1]] = memo.test(member_rows[upper])  # a lookup: tested above
            matrix |= matrix.T

            def joins(row: int, clique: list[int], matrix: np.ndarray = matrix) -> bool:
                return bool(matrix[row, clique].all())

        else:  # a large component: pairs tested as the split needs them

            def joins(row: int, clique: list[int], rows: np.ndarray = member_rows) -> bool:
                others = rows[clique]
                return bool(memo.test(np.stack([np.full(len(others), rows[row]), others], axis=1)).all())

        cliques: list[list[int]] = []  # local row numbers within the component
        for row in range(m):
            for clique in cliques:
                if joins(row, clique):
                    clique.append(row)
                    break
            else:
                cliques.append([row])
        found.extend(member_rows[c].tolist() for c in cliques if len(c) > 1)
    for next_id, clique in enumerate(sorted(found, key=lambda c: c[0])):
        groups[clique] = next_id
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
