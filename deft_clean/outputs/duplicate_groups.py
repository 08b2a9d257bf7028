"""Duplicate groups re-confirmed from the files before ``export --drop-duplicates`` acts on them.

A results file is data, not instructions: its ``duplicate_kind`` column could call distinct images copies.
So a row keeps its kind only when the files agree: an ``exact`` row's bytes equal another member's, a ``near``
row's thumbnail is within the pixel threshold of another member's (:mod:`deft_clean.inputs.pixel_similarity`, the test
detect used). Rows the files do not confirm lose their kind and are exported like any other row.
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


def confirmed_copies(frame: pd.DataFrame, root: Path, metadata: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with ``duplicate_kind`` cleared on the grouped rows the files under ``root`` do not confirm."""
    if "duplicate_group" not in frame.columns or "duplicate_kind" not in frame.columns:
        return frame
    kind = frame["duplicate_kind"]
    grouped = frame["duplicate_group"].notna() & kind.isin(DUPLICATE_KINDS)
    if not grouped.any():
        return frame
    threshold = _threshold(metadata)
    files = _Files(root)
    refused: list[Any] = []
    for _, members in frame.index[grouped].to_series().groupby(frame.loc[grouped, "duplicate_group"]):
        rows = list(members)
        paths = {i: str(frame.at[i, "path"]) for i in rows}
        for i in rows:
            others = [paths[j] for j in rows if j != i]
            same = files.same_bytes if kind[i] == "exact" else lambda a, b: files.near(a, b, threshold)
            if not any(same(paths[i], other) for other in others):
                refused.append(i)
    if not refused:
        return frame
    warn_result(
        f"{len(refused)} row(s) the results file calls duplicates are not copies of another member of their group "
        "by their files; they are exported like any other row"
    )
    out = frame.copy()
    out.loc[refused, "duplicate_kind"] = None
    return out


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
