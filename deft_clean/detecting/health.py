"""Dataset health beyond label errors: exact duplicates, near-duplicates and outliers.

Exact duplicates share a file content hash. Near-duplicates are proposed by the frozen image features
(cosine at or above ``CANDIDATE_SIM`` among each row's nearest neighbours) and confirmed on the decoded
pixels (:mod:`deft_clean.detecting.near_duplicates`); outliers are far from their nearest neighbours and, when
class prompt embeddings are given, from every class prompt. Nearest neighbours come from faiss: an exact flat
index up to ``EXACT_ROWS`` rows, an inverted-file (IVF) index above (time ~ ``N * sqrt(N) * D``; 1M x 512
in minutes on two cores), a GPU flat index where faiss sees a GPU. Without faiss, or on a torch device
faiss cannot use, a blockwise exact scan runs instead (memory ``block**2`` floats, time ``N**2 * D``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..inputs.pixel_similarity import CANDIDATE_SIM, DUPLICATE_THRESHOLD, Thumbnails, compare_rows
from .near_duplicates import clique_groups, copies_test, group_details, group_ids

if TYPE_CHECKING:
    from ..inputs.readers.base import ImageSource

NEAR_DUPLICATE_SIM = 0.97  # without images to confirm with: feature cosine at or above which rows are near-duplicates
NEIGHBOURS = 10  # k of the k-nearest-neighbour distance behind the outlier score
OUTLIER_Z = 4.0  # robust z-score above which a row is an outlier
BLOCK = 4096  # rows and columns of one similarity block
MAX_GROUP_ROWS = 20  # a near-duplicate group larger than this and than MAX_GROUP_SHARE of the rows is implausible
MAX_GROUP_SHARE = 0.01
EXACT_ROWS = 20_000  # up to this many usable rows the neighbour search is exact (flat index)
IVF_PROBES = 8  # inverted lists an approximate search visits (see benchmarks/results/scale.md for its recall)
IVF_TRAIN_PER_LIST = 50  # training rows per inverted list for the IVF index's k-means
RESEARCH_Z = 2.0  # rows whose approximate neighbours look this far (robust z) are searched again, wider
RESEARCH_PROBES = 64  # lists visited by that second search (the first visits IVF_PROBES)
EXACT_CHECK_Z = OUTLIER_Z - 1  # rows still this far after it get an exact search: outlier flags as exact search's
EXACT_CHECK_ROWS = 5_000  # at most this many (the farthest first): ~1 GFLOP each at 1M x 512


@dataclass(frozen=True)
class Health:
    """Per-row health, aligned with the rows given."""

    duplicate_group: np.ndarray  # int64 [N]: rows sharing an id are exact or near duplicates; -1 = unique
    duplicate_kind: np.ndarray  # object [N]: "exact" (another row of the group has the same bytes), "near", None
    duplicate_similarity: np.ndarray  # float32 [N]: pixel similarity to the group's first row (its own: best match)
    outlier_score: np.ndarray  # float32 [N]: robust z-score of the distance to neighbours (and prompts); NaN unusable
    is_outlier: np.ndarray  # bool [N]: outlier_score > OUTLIER_Z
    warnings: list[str] = field(default_factory=list)  # e.g. a near-duplicate group dropped as implausible


def content_hashes(
    root: str | os.PathLike[str], paths: Sequence[str], *, images: ImageSource | None = None
) -> list[str | None]:
    """sha256 of each file's bytes (row i's bytes from ``images`` when given); None for an unreadable one.

    Bytes come through the reader (``images``, else the files below ``root``): a FIFO, a device, a file
    over the size limit or one outside the root is never read, only hashed as None.
    """
    from ..inputs.readers.base import FileImages

    source = images if images is not None else FileImages(root, paths)
    hashes: list[str | None] = []
    for i in range(len(paths)):
        try:
            data = source.read_bytes(i)
            hashes.append(hashlib.sha256(data).hexdigest())
        except OSError:
            hashes.append(None)
    return hashes


def _normalise(features: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(features.astype(np.float32, copy=True), copy=False)  # the one [N, D] copy
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # [N, D], unit rows
    return x


def neighbours(
    features: np.ndarray,
    usable: np.ndarray,
    *,
    k: int = NEIGHBOURS,
    threshold: float = NEAR_DUPLICATE_SIM,
    block: int = BLOCK,
    device: Any = "cpu",
    exact_rows: int = EXACT_ROWS,
    per_row: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean cosine similarity of each usable row to its ``k`` nearest other rows, and near-duplicate pairs.

    Returns ``(knn_sim float32 [N] (NaN unusable), pairs int64 [P, 2])``: each row paired with those of its
    ``per_row`` nearest other rows (at most ``k``) whose similarity is >= ``threshold``. Through faiss
    (:func:`index_neighbours`) when it is installed and the features live on the CPU or faiss has a GPU;
    otherwise by the exact blockwise scan (:func:`scan_neighbours`) on ``device``.
    """
    try:
        import faiss
    except ImportError:
        faiss = None
    on_accelerator = str(device) != "cpu"
    if faiss is None or (on_accelerator and faiss.get_num_gpus() == 0):
        return scan_neighbours(features, usable, k=k, threshold=threshold, block=block, device=device, per_row=per_row)
    return index_neighbours(features, usable, k=k, threshold=threshold, exact_rows=exact_rows, per_row=per_row)


def build_index(x: np.ndarray, *, exact_rows: int) -> Any:
    """A faiss inner-product index holding ``x`` (float32 [M, D], unit rows): flat (exact) up to ``exact_rows``
    rows or on a GPU, IVF with ``~2 sqrt(M)`` lists above (its k-means on ``IVF_TRAIN_PER_LIST`` rows a list)."""
    import faiss

    m, d = x.shape
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(d))
    elif m <= exact_rows:
        index = faiss.IndexFlatIP(d)
    else:
        lists = max(1, min(int(2 * np.sqrt(m)), m // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(m, size=min(m, IVF_TRAIN_PER_LIST * lists), replace=False)
        index.cp.niter = 10
        index.train(x[np.sort(sample)])
        index.nprobe = min(IVF_PROBES, lists)
    index.add(x)
    return index


def search(index: Any, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest indexed rows of every row of ``x``: (similarity float32 [M, k], id int64 [M, k]).

    An IVF index on the CPU is searched list by list (faiss.contrib's big_batch_search: the queries that
    visit a list meet its rows in one matrix product), ~10x faster than query by query; ids of -1 mark
    fewer than ``k`` results.
    """
    import faiss

    if isinstance(index, faiss.IndexIVF):
        from faiss.contrib.big_batch_search import big_batch_search

        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress whatever its verbose says
            return big_batch_search(index, x, k)
    sims, ids = [], []
    for start in range(0, len(x), 65_536):  # [B, k] results a block
        sim, found = index.search(x[start : start + 65_536], k)
        sims.append(sim)
        ids.append(found)
    return np.concatenate(sims), np.concatenate(ids)


def research_far_rows(index: Any, x: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> None:
    """Search again, over ``RESEARCH_PROBES`` lists, the rows whose approximate neighbours look far; in place.

    An IVF search misses the neighbours of a row whose cluster straddles lists it did not visit, and such a
    row looks like an outlier (measured: 2% of 1M clustered rows at 8 lists, their neighbour similarity 0.33
    where an exact search gives 0.53). Candidate outliers, a few percent of the rows, get the wider search,
    whose lists include the first search's, so its results replace theirs; the rows still far after it are
    searched exactly.
    """
    far = far_rows(sims, ids, RESEARCH_Z)
    if not len(far):
        return
    first = index.nprobe
    index.nprobe = min(index.nlist, RESEARCH_PROBES)
    try:
        sims[far], ids[far] = search(index, x[far], sims.shape[1])
    finally:
        index.nprobe = first
    # An approximate search only ever misses neighbours, so a row's approximate distance is an upper bound:
    # rows below EXACT_CHECK_Z cannot be outliers, and the few above it are searched exactly.
    far = far_rows(sims, ids, EXACT_CHECK_Z)[:EXACT_CHECK_ROWS]
    if len(far):
        import faiss

        sims[far], ids[far] = faiss.knn(x[far], x, sims.shape[1], metric=faiss.METRIC_INNER_PRODUCT)


def far_rows(sims: np.ndarray, ids: np.ndarray, z: float) -> np.ndarray:
    """Rows whose mean similarity to their found neighbours has a robust z-score of distance above ``z`` (or
    that found none), farthest first. ``sims``, ``ids``: [M, k + 1] search results (column 0: usually the row)."""
    valid = ids[:, 1:] >= 0
    mean = np.where(valid, sims[:, 1:], 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    score = np.where(valid.any(axis=1), robust_z(1.0 - mean), np.inf)
    far = np.flatnonzero(score > z)
    return far[np.argsort(-score[far], kind="stable")]


def index_neighbours(
    features: np.ndarray,
    usable: np.ndarray,
    *,
    k: int,
    threshold: float,
    exact_rows: int = EXACT_ROWS,
    per_row: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`neighbours` through a faiss index (see :func:`build_index`); same return values.

    Each row's ``k + 1`` nearest rows are searched and the row itself dropped (exact copies tie with it, so it
    is dropped by id, not by rank); a pair is a row and one of its ``per_row`` nearest other rows at or above
    ``threshold``.
    """
    rows = np.flatnonzero(usable)
    knn = np.full(len(features), np.nan, dtype=np.float32)
    m = len(rows)
    if m < 2:
        return knn, np.zeros((0, 2), dtype=np.int64)
    x = _normalise(features[rows])  # [M, D] float32, unit rows
    index = build_index(x, exact_rows=exact_rows)
    k = max(1, min(k, m - 1))
    sims, ids = search(index, x, k + 1)  # [M, k + 1] each, best first
    if hasattr(index, "nprobe") and index.nprobe < index.nlist:
        research_far_rows(index, x, sims, ids)
    own = ids == np.arange(m)[:, None]
    # Drop the row itself (or, when it was not returned, the last neighbour) to keep k others.
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(m), drop] = False
    sims, ids = sims[keep].reshape(m, k), ids[keep].reshape(m, k)
    valid = ids >= 0  # an IVF search can come back short of k neighbours (-1)
    knn[rows] = np.where(valid, sims, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return knn, rows[nearest_pairs(sims, ids, threshold, per_row)].reshape(-1, 2)


def nearest_pairs(sims: np.ndarray, ids: np.ndarray, threshold: float, per_row: int) -> np.ndarray:
    """int64 [P, 2]: (row, neighbour) for each of a row's ``per_row`` nearest (``sims``, ``ids``: [M, k], best
    first, ids -1 for none) at or above ``threshold``.

    One edge per row (``per_row=1``, features alone decide): a tight group still joins (every member's
    nearest is in the group), while a dense region of alike features does not chain into one giant group
    through every pair above the threshold. Pixel-confirmed candidates may take several per row.
    """
    sims, ids = sims[:, :per_row], ids[:, :per_row]
    hit = (sims >= threshold) & (ids >= 0)  # [M, per_row]
    return np.stack([np.nonzero(hit)[0], ids[hit]], axis=1).astype(np.int64)


def scan_neighbours(
    features: np.ndarray,
    usable: np.ndarray,
    *,
    k: int = NEIGHBOURS,
    threshold: float = NEAR_DUPLICATE_SIM,
    block: int = BLOCK,
    device: Any = "cpu",
    per_row: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact blockwise pass over usable rows: mean cosine similarity to the ``k`` nearest other rows, and pairs.

    Returns ``(knn_sim float32 [N] (NaN unusable), pairs int64 [P, 2])``: each row paired with those of its
    ``per_row`` nearest other rows whose similarity is >= ``threshold`` (as :func:`index_neighbours`).
    Memory is ``block * (block + k)`` floats; the products run on ``device``.
    """
    import torch

    rows = np.flatnonzero(usable)
    x = torch.from_numpy(_normalise(features[rows])).to(device)  # [M, D]
    m = len(rows)
    k = max(1, min(k, m - 1))
    knn = np.full(len(features), np.nan, dtype=np.float32)
    pairs: list[np.ndarray] = []
    for start in range(0, m, block):
        a = x[start : start + block]  # [B, D]
        best = torch.full((len(a), k), -torch.inf, device=x.device)  # running top-k similarities [B, k]
        best_ids = torch.full((len(a), k), -1, dtype=torch.long, device=x.device)  # and their rows [B, k]
        for col in range(0, m, block):
            sim = a @ x[col : col + block].T  # [B, C]
            if col == start:
                sim.fill_diagonal_(-torch.inf)  # a row is not its own neighbour
            cols = torch.arange(col, col + sim.shape[1], device=x.device).expand(len(a), -1)  # [B, C]
            merged = torch.cat([best, sim], dim=1)  # [B, k + C]
            top = merged.topk(k, dim=1)
            best, best_ids = top.values, torch.cat([best_ids, cols], dim=1).gather(1, top.indices)
        best, best_ids = best.cpu().numpy(), best_ids.cpu().numpy()
        knn[rows[start : start + len(a)]] = np.where(np.isfinite(best), best, np.nan).mean(axis=1)
        found = nearest_pairs(best, np.where(np.isfinite(best), best_ids, -1), threshold, per_row)
        pairs.append(found + np.array([start, 0]))
    found = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return knn, rows[found].reshape(-1, 2)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); NaN stays NaN."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return values.astype(np.float32)
    median = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - median))
    return ((values - median) / max(mad, 1e-6)).astype(np.float32)


def closest_prompt(features: np.ndarray, prompts: np.ndarray, *, step: int = 65_536) -> np.ndarray:
    """float32 [N]: each row's highest cosine similarity to a class prompt ([K, D]), ``step`` rows at a time."""
    unit_prompts = _normalise(prompts)  # [K, D]
    closest = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), step):
        closest[start : start + step] = (_normalise(features[start : start + step]) @ unit_prompts.T).max(axis=1)
    return closest


def dataset_health(
    features: np.ndarray,
    usable: np.ndarray,
    *,
    hashes: Sequence[str | None] | None = None,
    prompts: np.ndarray | None = None,
    images: ImageSource | None = None,
    threshold: float = DUPLICATE_THRESHOLD,
    feature_threshold: float | None = None,
    names: Sequence[str] | None = None,
    k: int = NEIGHBOURS,
    outlier_z: float = OUTLIER_Z,
    block: int = BLOCK,
    device: Any = "cpu",
    exact_rows: int = EXACT_ROWS,
    thumbnails: tuple[np.ndarray, np.ndarray] | None = None,
) -> Health:
    """Duplicate groups and outliers of ``features`` (float32 [N, D] frozen image features).

    With ``images`` (the rows' reader), each row's ``k`` nearest rows at feature cosine >= ``feature_threshold``
    (default ``CANDIDATE_SIM``) are candidates, and a candidate pair is a near-duplicate when its decoded
    thumbnails have pixel similarity >= ``threshold`` (see :mod:`deft_clean.detecting.near_duplicates`). Without
    ``images``, a row and its nearest row at cosine >= ``feature_threshold`` (default ``NEAR_DUPLICATE_SIM``)
    are, and similarities are feature cosines. ``hashes`` (content hashes, e.g. :func:`content_hashes`) join
    exact duplicates into the same groups; ``prompts`` (float32 [K, D] class prompt embeddings) add the
    distance to the closest class prompt to the outlier score (its mean with the neighbour distance, as
    robust z-scores). ``names`` (e.g. paths) name the rows of a dropped group in its warning. ``thumbnails``
    (uint8 [N, 2, T, T], bool [N] made), when a pass already decoded the rows: compared instead of decoding.
    """
    usable = np.asarray(usable, dtype=bool)
    thumbs = Thumbnails(images, thumbnails) if images is not None or thumbnails is not None else None
    if feature_threshold is None:
        feature_threshold = CANDIDATE_SIM if thumbs is not None else NEAR_DUPLICATE_SIM
    knn, pairs = neighbours(
        features,
        usable,
        k=k,
        threshold=feature_threshold,
        block=block,
        device=device,
        exact_rows=exact_rows,
        per_row=k if thumbs is not None else 1,
    )
    rep = representatives(hashes, usable)  # rows with the same bytes are one picture: compared once
    candidates = unique_pairs(rep[pairs])
    copies = copies_test(features, thumbs, threshold=threshold, feature_threshold=feature_threshold)
    confirmed = copies(candidates) if thumbs is not None else np.ones(len(candidates), dtype=bool)
    pairs, warnings = drop_oversized(candidates[confirmed], usable, names, rep=rep)
    # every member a copy of every other: never a chain
    groups = with_copies(clique_groups(len(features), pairs, copies, known=(candidates, confirmed)), rep)
    kind, similarity = group_details(groups, rep, _similarity_to(features, rep, thumbs))
    score = robust_z(1.0 - knn)
    if prompts is not None:
        closest = closest_prompt(features, prompts)  # [N]
        score = (score + robust_z(np.where(usable, 1.0 - closest, np.nan))) / 2
    score = np.where(usable, score, np.nan).astype(np.float32)
    outlier = np.nan_to_num(score, nan=-np.inf) > outlier_z
    return Health(groups, kind, similarity, score, outlier, warnings)


def drop_oversized(
    pairs: np.ndarray, usable: np.ndarray, names: Sequence[str] | None, *, rep: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """The near-duplicate pairs less those of implausibly large groups, and one warning per group dropped.

    A group over ``MAX_GROUP_ROWS`` rows and ``MAX_GROUP_SHARE`` of the usable rows is more likely a chain of
    look-alikes (or features too alike, without pixel confirmation) than copies of one picture, and
    --drop-duplicates would delete all but one of it: its rows are reported unique unless their bytes match.
    ``rep`` (int [N], :func:`representatives`): the pairs join representatives, each counting for its rows.
    """
    if not len(pairs):
        return pairs, []
    rep = np.arange(len(usable)) if rep is None else rep
    groups = group_ids(len(usable), pairs)
    member = groups[rep]  # [N] each row's group, through its representative
    sizes = np.bincount(member[member >= 0], minlength=int(groups.max()) + 1)  # rows per near-duplicate group
    limit = max(MAX_GROUP_ROWS, int(MAX_GROUP_SHARE * int(usable.sum())))
    warnings = []
    for g in np.flatnonzero(sizes > limit):
        rows = np.flatnonzero(member == g)
        shown = ", ".join(str(names[i]) if names is not None else f"row {i}" for i in rows[:5])
        warnings.append(
            f"a near-duplicate group of {len(rows)} images (more than {limit}) was dropped as implausible: "
            f"{shown}{', ...' if len(rows) > 5 else ''}; they are reported unique unless their bytes are "
            "identical; a higher --duplicate-threshold splits such groups"
        )
    return pairs[sizes[groups[pairs[:, 0]]] <= limit], warnings


def representatives(hashes: Sequence[str | None] | None, usable: np.ndarray) -> np.ndarray:
    """int64 [N]: for each usable row with a content hash, the first usable row with the same hash; every other
    row stands for itself."""
    rep = np.arange(len(usable), dtype=np.int64)
    if hashes is None:
        return rep
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h is not None and usable[i]:
            rep[i] = first.setdefault(h, i)
    return rep


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """int64 [P', 2]: the distinct unordered pairs of ``pairs`` ([P, 2]) as (smaller, larger), self-pairs left out."""
    pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)


def with_copies(groups: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """int64 [N]: ``groups`` (of representatives) given to every row its representative stands for, with the rows
    of one content that no group holds as a group of their own; numbered 0, 1, ... by their first row."""
    n = len(rep)
    expanded = groups[rep]  # [N]
    copies = np.bincount(rep, minlength=n) > 1  # representatives standing for two or more rows
    alone = (expanded < 0) & copies[rep]
    expanded = np.where(alone, n + rep, expanded)  # a provisional id per content, above every group id
    grouped = np.flatnonzero(expanded >= 0)
    out = np.full(n, -1, dtype=np.int64)
    if len(grouped):
        _, first_at, slot = np.unique(expanded[grouped], return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(grouped[first_at], kind="stable"), kind="stable")  # by first row
        out[grouped] = order[slot]
    return out


def _similarity_to(features: np.ndarray, rep: np.ndarray, thumbs: Thumbnails | None) -> Any:
    """``similarity_to(rows, firsts)`` for :func:`group_details`: pixel similarity (1.0 for the same bytes)
    with thumbnails, else feature cosine; each pair of contents compared once."""

    def similarity_to(rows: np.ndarray, firsts: np.ndarray) -> np.ndarray:
        sims = np.ones(len(rows), dtype=np.float32)
        differ = np.flatnonzero(rep[rows] != rep[firsts])  # the same bytes: 1.0
        if not len(differ):
            return sims
        pairs, where = np.unique(
            np.stack([rep[rows[differ]], rep[firsts[differ]]], axis=1), axis=0, return_inverse=True
        )
        if thumbs is None:
            a, b = _normalise(features[pairs[:, 0]]), _normalise(features[pairs[:, 1]])  # [P, D] each
            found = (a * b).sum(axis=1).astype(np.float32)
        else:
            found = compare_rows(thumbs, pairs)[0]
        sims[differ] = found[where.ravel()]
        return sims

    return similarity_to


@dataclass(frozen=True)
class HealthColumns:
    """What a detect run adds to the Parquet, and what it warns about (for the metadata's warnings)."""

    columns: dict[str, Any]  # duplicate_group, duplicate_kind, duplicate_similarity, outlier_score, is_outlier
    warnings: list[str]


def health_columns(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    features: np.ndarray,
    usable: np.ndarray,
    prompts: np.ndarray | None,
    *,
    device: Any,
    images: ImageSource | None = None,
    threshold: float = DUPLICATE_THRESHOLD,
    kept: Any = None,
) -> HealthColumns:
    """The Parquet's health columns for a detect run; near-duplicates confirmed on the decoded images.
    ``kept`` (a ``passes.Kept``): the hashes and thumbnails of the run's reading pass, so that no file is
    opened again; without it, files are read for their hashes and candidates decoded for their thumbnails."""
    from ..inputs.readers.base import FileImages

    source = images if images is not None else FileImages(root, paths)
    hashes = kept.hashes if kept is not None else content_hashes(root, paths, images=source)
    health = dataset_health(
        features,
        usable,
        hashes=hashes,
        prompts=prompts,
        images=None if kept is not None else source,
        threshold=threshold,
        names=paths,
        device=device,
        thumbnails=(kept.thumbnails, kept.made) if kept is not None else None,
    )
    grouped = health.duplicate_group >= 0
    columns = {
        "duplicate_group": pd.array(np.where(grouped, health.duplicate_group, None), dtype="Int64"),
        "duplicate_kind": pd.array(health.duplicate_kind, dtype=object),
        "duplicate_similarity": pd.array(np.where(grouped, health.duplicate_similarity, np.nan), dtype="Float32"),
        "outlier_score": pd.array(np.where(usable, health.outlier_score, np.nan), dtype="Float32"),
        "is_outlier": health.is_outlier & usable,
    }
    return HealthColumns(columns, list(health.warnings))
