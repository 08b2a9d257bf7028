"""Human review decisions: the ``path,decision,label`` CSV that the HTML report downloads, read and applied.

A decision is ``keep`` (the given label is right), ``drop`` (leave the sample out) or ``relabel`` (keep
it under ``label``). A human decision always wins over detect's automatic verdict; rows without one
keep the automatic verdict. :func:`read_decisions` validates the file against the results at the
boundary, so :func:`Verdicts.apply` can assume it is consistent. Export and train both use it.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..run.errors import DataError, UsageError, option
from .results import flagged_rows, usable_rows

DECISIONS = ("keep", "drop", "relabel")
COLUMNS = ("path", "decision", "label")


@dataclass(frozen=True)
class Verdicts:
    """Human decisions aligned with a results frame's rows."""

    decided: np.ndarray  # bool [N]: the row has a human decision
    keep: np.ndarray  # bool [N]: kept (keep or relabel); meaningful where decided
    label: np.ndarray  # object [N]: the label it is kept under; None where not decided or dropped
    counts: dict[str, int]  # decisions per word: keep, drop, relabel

    @property
    def reviewed(self) -> int:
        """Rows with a human decision."""
        return int(self.decided.sum())

    def apply(
        self, keep: np.ndarray, labels: np.ndarray, *, classes: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Overlay the human decisions on an automatic verdict: ``keep`` bool [N] and ``labels`` [N].

        ``labels`` are names, or indices into ``classes`` when it is given. Returns new arrays.
        """
        new = self.label if classes is None else self.label_indices(classes)
        keep = np.where(self.decided, self.keep, keep)
        labels = np.where(self.decided & self.keep, new, labels).astype(labels.dtype)
        return keep, labels

    def label_indices(self, classes: list[str]) -> np.ndarray:
        """int64 [N]: the decided label's index in ``classes``; -1 where there is none."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index.get(lab, -1) if lab is not None else -1 for lab in self.label], dtype=np.int64)


def read_decisions(path: str | os.PathLike[str], frame: pd.DataFrame, metadata: dict[str, Any]) -> Verdicts:
    """Read and validate a decisions CSV against the results it was made from.

    Raises:
        UsageError: the file does not exist.
        DataError: a malformed header, an unknown path or class, a duplicate path, a bad decision word,
            a decision on an unusable row, or ``keep`` with a label other than the given one. The message
            names the file and its line.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{option('decisions')} file not found: {file}")
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{file}: not a readable CSV ({exc})") from None
    if not lines:
        raise DataError(f"{file}: empty; expected a header {','.join(COLUMNS)}")
    header = [h.strip().lower() for h in lines[0]]
    if "path" not in header or "decision" not in header:
        raise DataError(f"{file} line 1: header must name the columns {','.join(COLUMNS)}, got {','.join(header)}")
    col = {name: header.index(name) for name in COLUMNS if name in header}

    classes = set(metadata.get("classes") or []) | set(frame["label"].astype(str))
    position = {p: i for i, p in enumerate(frame["path"].astype(str))}
    usable = usable_rows(frame)
    given = frame["label"].astype(str).to_numpy()
    n = len(frame)
    decided = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    label = np.full(n, None, dtype=object)
    seen: dict[str, int] = {}
    counts: Counter[str] = Counter()

    for line_no, cells in enumerate(lines[1:], start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line, e.g. at the end of a hand-edited file
        where = f"{file} line {line_no}"

        def cell(name: str, cells: list[str] = cells) -> str:
            i = col.get(name)
            text = cells[i] if i is not None and i < len(cells) else ""
            return text if name == "path" else text.strip()  # a path byte for byte: " a.png" is another file

        p, word, new = cell("path"), cell("decision").lower(), cell("label")
        if word not in DECISIONS:
            raise DataError(f"{where}: decision must be one of {', '.join(DECISIONS)}, got {word!r}")
        if p not in position:
            raise DataError(f"{where}: path {p!r} is not in the results; was the file made for another run?")
        if p in seen:
            raise DataError(f"{where}: path {p!r} is decided twice (first on line {seen[p]})")
        seen[p] = line_no
        i = position[p]
        if not usable[i]:
            raise DataError(f"{where}: {p!r} is unusable ({frame['status'].iloc[i]}); it cannot be kept or dropped")
        if word == "relabel":
            if not new:
                raise DataError(f"{where}: relabel needs a label")
            if new not in classes:
                raise DataError(f"{where}: unknown class {new!r}; classes are {sorted(classes)[:10]}")
        elif word == "keep":
            if new and new != given[i]:
                raise DataError(f"{where}: keep with label {new!r}, but {p!r} is labelled {given[i]!r}; use relabel")
            new = given[i]
        decided[i] = True
        keep[i] = word != "drop"
        label[i] = new if word != "drop" else None
        counts[word] += 1
    return Verdicts(decided, keep, label, {w: counts[w] for w in DECISIONS})


def load_verdicts(
    decisions: str | os.PathLike[str] | Verdicts | None, frame: pd.DataFrame, metadata: dict[str, Any]
) -> Verdicts | None:
    """``decisions`` as Verdicts: read a path, pass Verdicts and None through."""
    if decisions is None or isinstance(decisions, Verdicts):
        return decisions
    return read_decisions(decisions, frame, metadata)


def review_counts(
    decisions: str | os.PathLike[str] | Verdicts, frame: pd.DataFrame, metadata: dict[str, Any]
) -> dict[str, int]:
    """How far review got: flagged rows, how many of them have a decision, decisions per word, and
    ``other``, decisions on rows that detect kept."""
    verdicts = load_verdicts(decisions, frame, metadata)
    assert verdicts is not None
    flagged = flagged_rows(frame)
    return {
        "flagged": int(flagged.sum()),
        "reviewed": int((verdicts.decided & flagged).sum()),
        **verdicts.counts,
        "other": int((verdicts.decided & ~flagged).sum()),
    }
