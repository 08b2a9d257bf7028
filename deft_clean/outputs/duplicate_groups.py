"""Duplicate groups re-confirmed from the files before ``export --drop-duplicates`` acts on them.

A results file is data, not instructions: its ``duplicate_group`` column could call distinct images copies,
or merge two pairs of copies into one group. So a group keeps its kind only when the files agree that every
member is a copy of every other (the same bytes, or thumbnails within the pixel threshold of
:mod:`deft_clean.inputs.pixel_similarity`, the test detect used), as detect builds them. A group the files do
not confirm loses its kind and is exported whole.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..inputs.pixel_similarity import DUPLICATE_THRESHOLD, MAX_RESIDUAL, pixel_similarity, thumbnail
from ..run.errors import warn_result
from ..run.safety import read_file
from .results import DUPLICATE_KINDS

MAX_CHECKED = 256  # distinct files a group may hold to be re-checked (pairs ~ its square); a larger one is kept


def confirmed_copies(frame: pd.DataFrame, root: Path, metadata: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with ``duplicate_kind`` cleared on every row of a group the files under ``root`` do not confirm.

    A group holds when every member is a copy of every other one: the same bytes, or thumbnails within the
    pixel threshold. Whichever member export keeps, each one it leaves out is then a copy of it; a group
    that does not hold (two pairs merged into one group, a chain of look-alikes) is exported whole.
    """
    if "duplicate_group" not in frame.columns or "duplicate_kind" not in frame.columns:
        return frame
    grouped = frame["duplicate_group"].notna() & frame["duplicate_kind"].isin(DUPLICATE_KINDS)
    if not grouped.any():
        return frame
    threshold = _threshold(metadata)
    files = _Files(root)
    refused: list[Any] = []
    for _, members in frame.index[grouped].to_series().groupby(frame.loc[grouped, "duplicate_group"]):
        rows = list(members)
        if not _holds([str(frame.at[i, "path"]) for i in rows], files, threshold):
            refused.extend(rows)
    if not refused:
        return frame
    warn_result(
        f"{len(refused)} row(s) the results file calls duplicates are not copies of every other member of their "
        "group by their files; their groups are exported whole"
    )
    out = frame.copy()
    out.loc[refused, "duplicate_kind"] = None
    return out


def _holds(paths: list[str], files: _Files, threshold: float) -> bool:
    """Every file is a copy of every other: compared once per distinct content (same bytes are copies)."""
    digests = [files.digest(p) for p in paths]
    if len(paths) < 2 or any(d is None for d in digests):
        return False
    distinct = list({d: p for d, p in zip(digests, paths, strict=True)}.values())  # one path per content
    if len(distinct) > MAX_CHECKED:
        return False
    return all(files.near(a, b, threshold) for k, a in enumerate(distinct) for b in distinct[k + 1 :])


def _threshold(metadata: dict[str, Any]) -> float:
    """The pixel threshold detect used (its options), else the default; never a looser one than 0.9."""
    options = metadata.get("options") if isinstance(metadata.get("options"), dict) else {}
    value = options.get("duplicate_threshold", DUPLICATE_THRESHOLD)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(min(max(value, 0.9), 1.0))
    return DUPLICATE_THRESHOLD


class _Files:
    """Digests and thumbnails of the rows' files, read once each (None: unreadable, confirms nothing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str | None] = {}
        self.thumbs: dict[str, np.ndarray | None] = {}

    def digest(self, path: str) -> str | None:
        if path not in self.digests:
            try:
                self.digests[path] = hashlib.sha256(read_file(self.root / path, root=self.root)).hexdigest()
            except OSError:
                self.digests[path] = None
        return self.digests[path]

    def thumb(self, path: str) -> np.ndarray | None:
        if path not in self.thumbs:
            from ..inputs.decode import load_image

            try:
                self.thumbs[path] = thumbnail(load_image(self.root / path, root=self.root))
            except Exception:  # noqa: BLE001 - any decoding failure: the row confirms nothing
                self.thumbs[path] = None
        return self.thumbs[path]

    def same_bytes(self, a: str, b: str) -> bool:
        first = self.digest(a)
        return first is not None and first == self.digest(b)

    def near(self, a: str, b: str, threshold: float) -> bool:
        first, second = self.thumb(a), self.thumb(b)
        if first is None or second is None:
            return False
        similarity, residual = pixel_similarity(first[None], second[None])
        return bool(similarity[0] >= threshold and residual[0] <= MAX_RESIDUAL)
