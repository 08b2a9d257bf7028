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

import functools
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


def gray_thumbnail(image: Any) -> np.ndarray:
    """uint8 [THUMB, THUMB]: the image (PIL) as a grayscale thumbnail (what the reading pass keeps of each row)."""
    from PIL import Image

    small = image.convert("L").resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=None)
    return np.frombuffer(small.tobytes(), dtype=np.uint8).reshape(THUMB, THUMB)  # np.asarray: 2x the time


def with_blur(gray: np.ndarray) -> np.ndarray:
    """uint8 [R, 2, S, S]: grayscale thumbnails ``gray`` (uint8 [R, S, S]) and the same blurred by a Gaussian of
    ``BLUR`` pixels (taps over three sigmas, edges repeated), rounded to uint8: all at once, as ``B @ x @ B.T``
    with the separable kernel and the edge rule folded into one [S, S] matrix. Made where thumbnails are
    compared, not per decoded row (Pillow's blur of one 32 px image costs as much as its decode; ~1 us here)."""
    gray = np.asarray(gray, dtype=np.uint8)
    s = gray.shape[-1]
    blur = _blur_matrix(s)
    out = np.empty((len(gray), 2, s, s), dtype=np.uint8)
    out[:, 0] = gray
    for start in range(0, len(gray), CHUNK):
        blurred = blur @ gray[start : start + CHUNK].astype(np.float32) @ blur.T  # [C, S, S]
        out[start : start + CHUNK, 1] = np.clip(np.rint(blurred), 0, 255)
    return out


@functools.lru_cache(maxsize=4)
def _blur_matrix(s: int) -> np.ndarray:
    """float32 [S, S]: row i holds the weights of the Gaussian taps around pixel i, taps past an edge given to
    the edge pixel. Made once per size: :func:`thumbnail` runs it per decoded file otherwise."""
    reach = int(np.ceil(3 * BLUR))
    offsets = np.arange(-reach, reach + 1)
    taps = np.exp(-0.5 * (offsets / BLUR) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((s, s))
    for i in range(s):
        np.add.at(matrix[i], np.clip(i + offsets, 0, s - 1), taps)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # shared by every caller
    return matrix


def thumbnail(image: Any) -> np.ndarray:
    """uint8 [2, THUMB, THUMB]: the image (PIL) as a grayscale thumbnail, and the same blurred by ``BLUR``."""
    return with_blur(gray_thumbnail(image)[None])[0]


class Thumbnails:
    """Row thumbnails decoded on first use through the reader (``images.open``); None for an unreadable row.

    ``known`` (uint8 [N, THUMB, THUMB] grayscale thumbnails and bool [N]: which rows have one), when a pass
    already made them from its own decode (the detect run's reading pass): they are used (blurred where
    compared), and a row without one is unreadable, so that no file is opened again (``images`` may then be
    None)."""

    def __init__(self, images: ImageSource | None, known: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.images = images
        self.known = known
        self.cache: dict[int, np.ndarray | None] = {}

    def get(self, row: int) -> np.ndarray | None:
        if self.known is not None:
            thumbs, made = self.known
            return with_blur(thumbs[row][None])[0] if made[row] else None
        if row not in self.cache:
            try:
                self.cache[row] = thumbnail(self.images.open(row, draft_size=2 * THUMB))
            except Exception:  # noqa: BLE001 - any decoding failure: the row is not compared
                self.cache[row] = None
        return self.cache[row]

    def many(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [R, 2, THUMB, THUMB], bool [R] readable) for ``rows``; an unreadable row's thumbnail is zeros."""
        if self.known is not None:
            thumbs, made = self.known
            return with_blur(thumbs[rows]), made[rows]
        found = [self.get(int(row)) for row in rows]
        blank = np.zeros((2, THUMB, THUMB), np.uint8)
        stacked = np.stack([t if t is not None else blank for t in found]) if found else blank[None][:0]
        return stacked, np.array([t is not None for t in found], dtype=bool)


def _aligned(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The overlapping crops of ``a`` and ``b`` ([P, S, S]) when ``b`` is moved by (dy, dx)."""
    s = a.shape[1]
    return (
        a[:, max(dy, 0) : s + min(dy, 0), max(dx, 0) : s + min(dx, 0)],
        b[:, max(-dy, 0) : s + min(-dy, 0), max(-dx, 0) : s + min(-dx, 0)],
    )


def _correlation(a: np.ndarray, b: np.ndarray, offset_a: np.ndarray, offset_b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sums, flat-image cases and correlation of aligned crops ``a``, ``b`` (float32 [P, h, w], each row centred on
    its full thumbnail's mean, ``offset_a``/``offset_b`` [P]; centring keeps the float32 sums accurate):
    (ma, mb, aa, ab, gap, both, corr), ``ma``/``mb`` the crops' means (centred), the rest [P]. Five reductions
    over the crops' views: no copy of a crop is made."""
    sums = (a.sum(axis=(1, 2)), np.einsum("ijk,ijk->i", a, a), b.sum(axis=(1, 2)), np.einsum("ijk,ijk->i", b, b))
    return _from_sums(a.shape[1] * a.shape[2], *sums, np.einsum("ijk,ijk->i", a, b), offset_a, offset_b)


def _from_sums(
    n: int,
    sa: np.ndarray,
    saa: np.ndarray,
    sb: np.ndarray,
    sbb: np.ndarray,
    sab: np.ndarray,
    offset_a: np.ndarray,
    offset_b: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """:func:`_correlation`'s results from the crops' sums, sums of squares and of products (each [P])."""
    ma, mb = sa / n, sb / n
    aa = np.maximum(saa - n * ma * ma, 0.0)  # sum of squares about the crop's mean
    bb = np.maximum(sbb - n * mb * mb, 0.0)
    ab = sab - n * ma * mb
    flat_a, flat_b = aa < FLAT**2 * n, bb < FLAT**2 * n
    both = flat_a & flat_b  # two flat images: alike when their brightness is
    gap = np.abs((ma + offset_a) - (mb + offset_b)) / 255.0
    corr = ab / np.sqrt(np.maximum(aa * bb, 1e-12))
    corr = np.where(both, 1.0 - gap, np.where(flat_a | flat_b, 0.0, corr))
    return ma, mb, aa, ab, gap, both, corr.astype(np.float32)


def _margins(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """What :func:`_window` takes any crop's sum and sum of squares from, for thumbnails ``x`` (float32
    [C, L, S, S]): row and column sums of ``x`` and of ``x**2`` (four [C, L, S]), their totals ([C, L] each),
    ``x`` and ``x**2``."""
    squares = np.square(x)
    rows, rows2 = x.sum(axis=3), squares.sum(axis=3)
    return rows, x.sum(axis=2), rows2, squares.sum(axis=2), rows.sum(axis=2), rows2.sum(axis=2), x, squares


def _window(margins: tuple[np.ndarray, ...], layer: int, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares ([C] each) of the crop :func:`_aligned` takes of the first image's ``layer`` at
    (dy, dx): the whole image's less the rows and columns the crop leaves out (their corner added back once)."""
    rows, cols, rows2, cols2, total, total2, x, squares = margins
    s = x.shape[2]
    out_y = slice(0, dy) if dy > 0 else slice(s + dy, s)  # empty for dy == 0
    out_x = slice(0, dx) if dx > 0 else slice(s + dx, s)
    found = []
    for by_row, by_col, whole, values in ((rows, cols, total, x), (rows2, cols2, total2, squares)):
        value = whole[:, layer].copy()
        if dy:
            value -= by_row[:, layer, out_y].sum(axis=1)
        if dx:
            value -= by_col[:, layer, out_x].sum(axis=1)
        if dy and dx:
            value += values[:, layer, out_y, out_x].sum(axis=(1, 2))
        found.append(value)
    return found[0], found[1]


def _compare(a: np.ndarray, b: np.ndarray, offset_a: np.ndarray, offset_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlation and worst-block residual of aligned crops ``a``, ``b`` (float32 [P, h, w], centred as in
    :func:`_correlation`): two [P] arrays."""
    p, h, w = a.shape
    ma, mb, aa, ab, gap, both, corr = _correlation(a, b, offset_a, offset_b)
    alpha = ab / np.maximum(aa, 1e-12)  # contrast fit b ~ alpha * a (+ offset)
    h4, w4 = h // 4 * 4, w // 4 * 4
    a4 = a[:, :h4, :w4] - ma[:, None, None]
    r = np.abs((b[:, :h4, :w4] - mb[:, None, None]) - alpha[:, None, None] * a4)  # [P, h', w'] (x 255)
    residual = r.reshape(p, h // 4, 4, w // 4, 4).mean(axis=(2, 4)).reshape(p, -1).max(axis=1) / 255.0
    return corr, np.where(both, gap, residual).astype(np.float32)


def alignments() -> list[tuple[int, int, int, int]]:
    """(first's layer, second's layer, dy, dx) of every comparison made: the sharp thumbnails at every shift
    up to ``SHIFT`` (a moved crop), a blurred one against a sharp one unshifted (a resized copy)."""
    shifts = [(0, 0, dy, dx) for dy in range(-SHIFT, SHIFT + 1) for dx in range(-SHIFT, SHIFT + 1)]
    return [*shifts, (1, 0, 0, 0), (0, 1, 0, 0)]


def _layers(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [C, 2, S, S] thumbnails as float32, each layer centred on its own mean, and those means [C, 2]."""
    x = chunk.astype(np.float32)
    means = x.mean(axis=(2, 3))  # [C, 2]
    x -= means[:, :, None, None]
    return x, means


def pixel_similarity(
    first: np.ndarray, second: np.ndarray, *, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity float32 [P], residual float32 [P]) of thumbnail pairs ``first``, ``second`` (uint8 [P, 2, S, S]).

    Similarity is the best correlation over :func:`alignments`, residual the least worst-block residual.
    With ``threshold``, the residual is computed only for pairs whose similarity reaches it (the others are
    not near-duplicates whatever their residual: inf), first at each pair's best alignment and at the others only
    while it is above ``MAX_RESIDUAL`` (a pair within it is a near-duplicate whatever the others give: its
    residual is then the first found within it, not necessarily the least); the correlations are cheap, the
    residual is not, and most feature candidates are look-alikes below the threshold.
    """
    best = np.full(len(first), -1.0, dtype=np.float32)
    least = np.full(len(first), np.inf, dtype=np.float32)
    for start in range(0, len(first), CHUNK):
        here = slice(start, start + CHUNK)
        a, b = first[here], second[here]
        best[here], least[here] = _similarity(a, b, crop_sums(a), crop_sums(b), threshold)
    return best, least


def crop_sums(thumbs: np.ndarray) -> np.ndarray:
    """float64 [C, A, 2, 3]: for each thumbnail (uint8 [C, 2, S, S]) and alignment, as the first image (0) and as
    the second (1): the sum and sum of squares of the crop compared (centred on its layer's mean), and that
    mean. Computed once per row, they leave one pass over a pair's pixels per alignment."""
    shifts = alignments()
    out = np.empty((len(thumbs), len(shifts), 2, 3))
    for start in range(0, len(thumbs), CHUNK):
        x, means = _layers(thumbs[start : start + CHUNK])
        margins = _margins(x)
        for s, (la, lb, dy, dx) in enumerate(shifts):
            for role, (layer, y, x_) in enumerate(((la, dy, dx), (lb, -dy, -dx))):
                total, squares = _window(margins, layer, y, x_)
                out[start : start + len(x), s, role] = np.stack([total, squares, means[:, layer]], axis=1)
    return out


def _similarity(
    first: np.ndarray, second: np.ndarray, sums_first: np.ndarray, sums_second: np.ndarray, threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_similarity` of one chunk of pairs, their :func:`crop_sums` given."""
    a, offset_a = _layers(first)  # [C, 2, S, S], [C, 2]
    b, offset_b = _layers(second)
    shifts = alignments()
    corr = np.empty((len(a), len(shifts)), dtype=np.float32)  # [C, A]
    for s, (la, lb, dy, dx) in enumerate(shifts):
        crop_a, crop_b = _aligned(a[:, la], b[:, lb], dy, dx)
        product = np.einsum("ijk,ijk->i", crop_a, crop_b)  # the one pass over the pair's pixels
        n = crop_a.shape[1] * crop_a.shape[2]
        sa, saa, ma = sums_first[:, s, 0].T
        sb, sbb, mb = sums_second[:, s, 1].T
        corr[:, s] = _from_sums(n, sa, saa, sb, sbb, product, ma, mb)[-1]
    best = corr.max(axis=1)
    least = np.full(len(a), np.inf, dtype=np.float32)
    close = np.flatnonzero(best >= threshold) if threshold is not None else np.arange(len(a))
    if not len(close):
        return best, least
    tried = np.full(len(a), -1)
    if threshold is not None:  # each close pair's best alignment first
        tried[close] = corr[close].argmax(axis=1)
        for s in np.unique(tried[close]):
            rows = close[tried[close] == s]
            least[rows] = _residual(a, b, offset_a, offset_b, rows, shifts[s])
    for s, shift in enumerate(shifts):
        rows = close[tried[close] != s]
        if threshold is not None:
            rows = rows[least[rows] > MAX_RESIDUAL]
        if len(rows):
            least[rows] = np.minimum(least[rows], _residual(a, b, offset_a, offset_b, rows, shift))
    return best, least


def _residual(
    a: np.ndarray, b: np.ndarray, offset_a: np.ndarray, offset_b: np.ndarray, rows: np.ndarray, shift: tuple
) -> np.ndarray:
    """float32 [R]: the worst-block residual of pairs ``rows`` of a chunk (see :func:`pixel_similarity`) at one
    alignment ``shift`` (first's layer, second's layer, dy, dx)."""
    la, lb, dy, dx = shift
    crops = _aligned(a[rows, la], b[rows, lb], dy, dx)
    return _compare(*crops, offset_a[rows, la], offset_b[rows, lb])[1]


def compare_rows(
    thumbs: Thumbnails, pairs: np.ndarray, *, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_similarity` of row pairs (int64 [P, 2]); a pair with an unreadable row gets (NaN, inf).
    Each row's :func:`crop_sums` are computed once; thumbnails are gathered ``CHUNK`` pairs at a time."""
    similarity = np.full(len(pairs), np.nan, dtype=np.float32)
    residual = np.full(len(pairs), np.inf, dtype=np.float32)
    rows, slots = np.unique(pairs, return_inverse=True)
    slots = slots.reshape(-1, 2)
    found, readable = thumbs.many(rows)
    sums = crop_sums(found)  # [R, A, 2, 3]
    for start in range(0, len(pairs), CHUNK):
        chunk = slots[start : start + CHUNK]
        ok = np.flatnonzero(readable[chunk[:, 0]] & readable[chunk[:, 1]])
        if len(ok):
            i, j = chunk[ok, 0], chunk[ok, 1]
            result = _similarity(found[i], found[j], sums[i], sums[j], threshold)
            similarity[start + ok], residual[start + ok] = result
    return similarity, residual
