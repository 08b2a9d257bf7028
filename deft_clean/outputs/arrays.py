"""``detect --save-arrays DIR``: the image features and class probabilities as NumPy files for other tools.

``DIR/features.npy`` is float32 ``[N, D]`` (the frozen CLIP image features), ``DIR/probs.npy`` float32
``[N, K]`` (the cross-fitted class probabilities behind ``p_clean``), and ``DIR/arrays.json`` names the
classes (column order of ``probs``) and how the rows line up: row ``i`` of both arrays is row ``i`` of the
Parquet. Rows of unusable files are NaN; select ``status == "ok"`` before handing the arrays to cleanlab or
FiftyOne. Each file is written atomically; ``arrays.json`` is written last and records the row count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..run.errors import DataError, UsageError, option
from ..run.files import write_atomic
from ..run.ownership import owned_entry, read_manifest, write_manifest

FEATURES = "features.npy"
PROBS = "probs.npy"
INFO = "arrays.json"
ARRAY_FILES = (FEATURES, PROBS, INFO)  # all that --save-arrays writes in its folder
ROW_ORDER = (
    "row i of features.npy and probs.npy is row i of the detect Parquet (its 'path' column); rows of unusable "
    "files (status != 'ok') are NaN; probs columns follow 'classes', which is the Parquet's label_index order"
)


def check_arrays_dir(folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Refuse a ``--save-arrays`` folder holding an earlier run's arrays without ``overwrite``, and one holding
    array files that deft-clean did not write (its manifest does not list them) whatever ``overwrite`` says.

    Where the folder may be (not over an input, not inside the dataset, not overlapping another output)
    is decided by :func:`deft_clean.run.safety.check_outputs`, called next to this.
    """
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option('save_arrays')} {target} is a file; pass a folder (it is created if missing)")
    earlier = [name for name in ARRAY_FILES if os.path.lexists(target / name)]
    listed = (read_manifest(target) or []) if earlier else []
    foreign = [name for name in earlier if name not in listed or owned_entry(target, name) is None]
    if foreign:  # not ours: replaced by neither run, --overwrite or not
        raise UsageError(
            f"{option('save_arrays')} {target} holds {', '.join(foreign)}, which deft-clean did not write there; "
            "move it or choose another folder"
        )
    if earlier and not overwrite:
        raise UsageError(
            f"{option('save_arrays')} {target} already holds {', '.join(earlier)}; pass {option('overwrite', True)} "
            "to replace them, or choose another folder"
        )
    return target


def save_arrays(
    folder: str | os.PathLike[str],
    *,
    features: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    probs_source: str,
    results: str | os.PathLike[str] | None,
) -> Path:
    """Write ``features`` (float32 [N, D]) and ``probs`` (float32 [N, K]) with their ``arrays.json``."""
    n = len(features)
    if probs.shape != (n, len(classes)):
        raise ValueError(f"probs has shape {probs.shape}, expected ({n}, {len(classes)})")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for name, array in ((FEATURES, features), (PROBS, probs)):
        data = np.ascontiguousarray(array, dtype=np.float32)
        write_atomic(target / name, lambda tmp, data=data: _save_npy(tmp, data))
    info = {
        "rows": n,
        "feature_dim": int(features.shape[1]),
        "classes": list(classes),
        "probs": probs_source,
        "results": str(Path(results).resolve()) if results is not None else None,
        "row_order": ROW_ORDER,
    }
    text = json.dumps(info, indent=2) + "\n"
    write_atomic(target / INFO, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_manifest(target, [*(read_manifest(target) or []), *ARRAY_FILES])  # last; what was listed stays listed
    return target


def load_arrays(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read what :func:`save_arrays` wrote: ``(features [N, D], probs [N, K], info)``."""
    target = Path(folder)
    try:
        info = json.loads((target / INFO).read_text(encoding="utf-8"))
        features = np.load(target / FEATURES)
        probs = np.load(target / PROBS)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{target}: not a complete {option('save_arrays')} folder ({type(exc).__name__}: {exc})"
        ) from None
    if len(features) != info["rows"] or probs.shape != (info["rows"], len(info["classes"])):
        raise DataError(f"{target}: arrays do not match {INFO} (a run was interrupted while writing?)")
    return features, probs, info


def _save_npy(path: Path, data: np.ndarray) -> None:
    with path.open("wb") as handle:  # np.save(path) would append ".npy" to the temporary name
        np.save(handle, data)


def save_result_arrays(result: Any, folder: str | os.PathLike[str]) -> Path:
    """Save a :class:`~deft_clean.detecting.detect.DetectResult`'s features and class probabilities.

    The probabilities are the cross-fitted image-evidence ones when the fused rule produced them, else (the
    ``deft`` rule, or too few rows for image evidence) the zero-shot text posterior; ``arrays.json`` says which.
    """
    if result.features is None or result.evidence is None:
        raise UsageError("this result holds no arrays (only a result returned by detect() does, not a loaded one)")
    usable = np.asarray(result.frame["status"] == "ok")
    if result.visual_probs is not None:
        probs, source = result.visual_probs, "cross-fitted image evidence (the probabilities behind p_clean)"
    else:
        probs, source = result.evidence.zero_shot, "zero-shot text posterior (no image evidence in this run)"
    probs = np.where(usable[:, None], probs, np.nan)
    features = np.where(usable[:, None], result.features, np.nan)
    return save_arrays(
        folder, features=features, probs=probs, classes=result.classes, probs_source=source, results=result.path
    )
