"""A results Parquet written directly (no detect run) over a tiny image folder, for report/export tests.

The folder has a class named like an HTML injection, a class with rich-markup brackets, a corrupt
image (an unusable row), flagged rows of which some are confident relabel candidates, and one clean
file whose name collides with a relabel candidate's in its suggested class.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from deft_clean import testing as toy
from deft_clean.outputs.results import load_results, write_results

HOSTILE = "<img src=x onerror=alert(1)>"
CLASSES = ["cat", "dog [x]", HOSTILE]
RELABEL_MIN_P = 0.9  # flagged rows get p_predicted 0.95 (relabel) or 0.4 (drop)


@dataclass(frozen=True)
class Review:
    root: Path  # the image folder detect "ran" on
    results: Path  # its results Parquet
    frame: pd.DataFrame  # the Parquet as load_results returns it

    @property
    def usable(self) -> pd.Series:
        return self.frame["status"] == "ok"

    @property
    def flagged(self) -> pd.Series:
        return self.usable & ~self.frame["is_clean"]

    @property
    def relabelled(self) -> pd.Series:
        return self.flagged & (self.frame["p_predicted"].fillna(0) >= RELABEL_MIN_P)


def make_review(folder: Path, *, per_class: int = 5) -> Review:
    images, labels = toy.synthetic_images(per_class, len(CLASSES), seed=7)
    root = folder / "data"
    paths = toy.write_image_folder(root, images, labels, CLASSES)
    rows = []
    for i, (path, k) in enumerate(zip(paths, labels, strict=True)):
        flagged = i % 3 == 0
        predicted = (int(k) + 1) % len(CLASSES) if flagged else int(k)
        rows.append(
            _row(
                path,
                int(k),
                p_clean=0.05 + 0.03 * i if flagged else 0.6 + 0.02 * i,
                is_clean=not flagged,
                predicted=predicted,
                p_predicted=(0.95 if i % 2 == 0 else 0.4) if flagged else 0.9,
            )
        )
    # A clean file in the suggested class of the first relabel candidate, with the same file name.
    first = rows[0]
    taken = f"{first['predicted_label']}/{Path(first['path']).name}"
    shutil.copy(root / paths[1], root / taken)
    k = first["predicted_index"]
    rows.append(_row(taken, k, p_clean=0.99, is_clean=True, predicted=k, p_predicted=0.99))
    (root / "cat" / "broken.png").write_bytes(b"not an image at all")
    broken = _row("cat/broken.png", 0, p_clean=None, is_clean=False, predicted=-1, p_predicted=None)
    broken["status"] = "unreadable: UnidentifiedImageError: cannot identify image file"
    rows.append(broken)
    metadata = {
        "kind": "detect",
        "model": "tiny",
        "classes": CLASSES,
        "dataset": str(root.resolve()),
        "source": "folder",
        "created": "2024-01-01T00:00:00+00:00",
    }
    results = write_results(pd.DataFrame(rows), metadata, folder / "results.parquet")
    frame, _ = load_results(results)
    return Review(root, results, frame)


def _row(path: str, k: int, *, p_clean, is_clean: bool, predicted: int, p_predicted) -> dict:
    return {
        "path": path,
        "label": CLASSES[k],
        "label_index": k,
        "p_clean": p_clean,
        "is_clean": is_clean,
        "predicted_label": CLASSES[predicted] if predicted >= 0 else None,
        "predicted_index": predicted,
        "p_predicted": p_predicted,
        "sim_pos": None if p_clean is None else 0.3,
        "sim_neg": None if p_clean is None else 0.1,
        "status": "ok",
    }


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under root (links not followed), keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
