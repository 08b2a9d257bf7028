"""Pixel similarity of two images: grayscale thumbnails compared over small shifts and a blur.

Shared by the health pass (:mod:`deft_clean.detecting.near_duplicates`, which confirms feature-search candidates)
and export (which re-confirms a results file's duplicate groups before ``--drop-duplicates`` drops a row).

- similarity: the Pearson correlation of the two thumbnails (brightness and contrast drop out), the best
  over shifts of up to ``SHIFT`` pixels (a moved crop) and over blurring either side (a copy resized down
  and back is a blurred original); 1.0 = the same picture;
- residual: after that alignment and a least-squares contrast fit, the mean absolute difference of the
  worst 4x4 block, as a share of full scale. A look-alike differs somewhere (a stroke, a corner); a copy
  differs a little everywhere (compression noise, blur).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .readers.base import ImageSource

DUPLICATE_THRESHOLD = 0.988  # pixel similarity at or above which a candidate pair is a near-duplicate
CANDIDATE_SIM = 0.90  # feature cosine at or above which two rows are compared at the pixel level
MAX_RESIDUAL = 0.08  # most a 4x4 block of a near-duplicate may differ (mean absolute, share of full scale)
THUMB = 32  # side of the grayscale thumbnails compared
SHIFT = 1  # thumbnail pixels the comparison may shift either image by, each way
BLUR = 1.0  # Gaussian radius (thumbnail pixels) of the blurred side
FLAT = 1.0  # standard deviation (0..255) below which a thumbnail is flat: compared by mean brightness only
CHUNK = 2048  # pairs compared at a time (~6 arrays of CHUNK x THUMB**2 floats)


def thumbnail(image: Any) -> np.ndarray:
    """uint8 [2, THUMB, THUMB]: the image (PIL) as a grayscale thumbnail, and the same blurred by ``BLUR``."""
    from PIL import Image, ImageFilter

    small = image.convert("L").resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=None)
    return np.stack([np.asarray(small), np.asarray(small.filter(ImageFilter.GaussianBlur(BLUR)))])


class Thumbnails:
    """Row thumbnails decoded on first use through the reader (``images.open``); None for an unreadable row.

    ``known`` (uint8 [N, 2, THUMB, THUMB] and bool [N]: which rows have one), when a pass already made them from
    its own decode (the detect run's reading pass): they are used, and a row without one is unreadable, so that
    no file is opened again (``images`` may then be None)."""

    def __init__(self, images: ImageSource | None, known: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.images = images
        self.known = known
        self.cache: dict[int, np.ndarray | None] = {}

    def get(self, row: int) -> np.ndarray | None:
        if self.known is not None:
            thumbs, made = self.known
            return thumbs[row] if made[row] else None
        if row not in self.cache:
            try:
                self.cache[row] = thumbnail(self.images.open(row, draft_size=2 * THUMB))
            except Exception:  # noqa: BLE001 - any decoding failure: the row is not compared
                self.cache[row] = None
        return self.cache[row]


def _aligned(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The overlapping crops of ``a`` and ``b`` ([P, S, S]) when ``b`` is moved by (dy, dx)."""
    s = a.shape[1]
    return (
        a[:, max(dy, 0) : s + min(dy, 0), max(dx, 0) : s + min(dx, 0)],
        b[:, max(-dy, 0) : s + min(-dy, 0), max(-dx, 0) : s + min(-dx, 0)],
    )


def _correlation(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centred crops, dot products and the flat-image cases of aligned crops ``a``, ``b`` (float32 [P, h, w]),
    and their correlation: (ac, bc, aa, ab, gap, both, corr), ``ac``/``bc`` [P, h*w], the rest [P]."""
    p, h, w = a.shape
    a, b = a.reshape(p, h * w), b.reshape(p, h * w)  # [P, h*w] (views where a crop is contiguous: not written)
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)
    ac, bc = a - mean_a[:, None], b - mean_b[:, None]
    aa, bb, ab = np.einsum("ij,ij->i", ac, ac), np.einsum("ij,ij->i", bc, bc), np.einsum("ij,ij->i", ac, bc)
    flat_a, flat_b = aa < FLAT**2 * h * w, bb < FLAT**2 * h * w
    both = flat_a & flat_b  # two flat images: alike when their brightness is
    gap = np.abs(mean_a - mean_b) / 255.0
    corr = ab / np.sqrt(np.maximum(aa * bb, 1e-12))
    corr = np.where(both, 1.0 - gap, np.where(flat_a | flat_b, 0.0, corr))
    return ac, bc, aa, ab, gap, both, corr.astype(np.float32)


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlation and worst-block residual of aligned crops ``a``, ``b`` (float32 [P, h, w]): two [P] arrays."""
    p, h, w = a.shape
    ac, bc, aa, ab, gap, both, corr = _correlation(a, b)
    alpha = ab / np.maximum(aa, 1e-12)  # contrast fit b ~ alpha * a (+ offset)
    r = np.abs(bc - alpha[:, None] * ac).reshape(p, h, w)[:, : h // 4 * 4, : w // 4 * 4]  # [P, h', w'] (x 255)
    residual = r.reshape(p, h // 4, 4, w // 4, 4).mean(axis=(2, 4)).reshape(p, -1).max(axis=1) / 255.0
    return corr, np.where(both, gap, residual).astype(np.float32)


def alignments() -> list[tuple[int, int, int, int]]:
    """(first's layer, second's layer, dy, dx) of every comparison made: the sharp thumbnails at every shift
    up to ``SHIFT`` (a moved crop), a blurred one against a sharp one unshifted (a resized copy)."""
    shifts = [(0, 0, dy, dx) for dy in range(-SHIFT, SHIFT + 1) for dx in range(-SHIFT, SHIFT + 1)]
    return [*shifts, (1, 0, 0, 0), (0, 1, 0, 0)]


def pixel_similarity(
    first: np.ndarray, second: np.ndarray, *, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity float32 [P], residual float32 [P]) of thumbnail pairs ``first``, ``second`` (uint8 [P, 2, S, S]).

    Similarity is the best correlation over :func:`alignments`, residual the least worst-block residual.
    With ``threshold``, the residual is computed only for pairs whose similarity reaches it (the others are
    not near-duplicates whatever their residual: inf); the correlations are cheap, the residual is not, and
    most feature candidates are look-alikes below the threshold.
    """
    best = np.full(len(first), -1.0, dtype=np.float32)
    least = np.full(len(first), np.inf, dtype=np.float32)
    for start in range(0, len(first), CHUNK):
        a = first[start : start + CHUNK].astype(np.float32)  # [C, 2, S, S]
        b = second[start : start + CHUNK].astype(np.float32)
        here = slice(start, start + len(a))
        for la, lb, dy, dx in alignments():
            best[here] = np.maximum(best[here], _correlation(*_aligned(a[:, la], b[:, lb], dy, dx))[-1])
        close = np.flatnonzero(best[here] >= threshold) if threshold is not None else np.arange(len(a))
        if not len(close):
            continue
        for la, lb, dy, dx in alignments():
            residual = _compare(*_aligned(a[close, la], b[close, lb], dy, dx))[1]
            least[start + close] = np.minimum(least[start + close], residual)
    return best, least


def compare_rows(
    thumbs: Thumbnails, pairs: np.ndarray, *, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_similarity` of row pairs (int64 [P, 2]); a pair with an unreadable row gets (NaN, inf)."""
    similarity = np.full(len(pairs), np.nan, dtype=np.float32)
    residual = np.full(len(pairs), np.inf, dtype=np.float32)
    readable = np.array([thumbs.get(int(i)) is not None and thumbs.get(int(j)) is not None for i, j in pairs], bool)
    if readable.any():
        both = pairs[readable]
        first = np.stack([thumbs.get(int(i)) for i in both[:, 0]])  # [P', 2, S, S]
        second = np.stack([thumbs.get(int(j)) for j in both[:, 1]])
        similarity[readable], residual[readable] = pixel_similarity(first, second, threshold=threshold)
    return similarity, residual
