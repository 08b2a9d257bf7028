"""Hand-offs to the tools people already use on a results file: cleanlab's columns and a FiftyOne dataset.

- :func:`cleanlab_issues` is the table cleanlab's ``Datalab.get_issues("label")`` returns, with its column
  names and meanings (``is_label_issue``, ``label_score``: higher means the given label is more likely right,
  ``given_label``, ``predicted_label``), one row per usable sample indexed by its Parquet row.
- :func:`write_fiftyone` writes a folder FiftyOne imports as ``fo.types.CSVDataset`` (``labels.csv``, absolute
  ``filepath`` per image, an empty ``data/``) and :func:`fiftyone_fields` gives the parsers that turn its columns into
  FiftyOne fields (``ground_truth`` and ``suggested`` as ``Classification``, ``p_clean`` a float, the flags
  booleans). :func:`load_fiftyone` is the two together. The importer reads only the CSV: no image is opened
  here, and every ``filepath`` is the dataset root joined with a row path that cannot leave it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..run.errors import UsageError
from ..run.files import write_atomic
from .results import flagged_rows, usable_rows

CLEANLAB_COLUMNS = ["is_label_issue", "label_score", "given_label", "predicted_label"]  # Datalab's order
FIFTYONE_COLUMNS = [
    "filepath",  # absolute path of the image
    "path",  # the Parquet's row identifier
    "ground_truth",  # the given label -> fo.Classification
    "suggested",  # the label the evidence points to -> fo.Classification (confidence: p_predicted)
    "p_predicted",
    "p_clean",
    "is_flagged",  # flagged and not withheld
    "withheld",
    "flag_reason",
    "duplicate_group",
    "is_outlier",
]


def cleanlab_issues(frame: pd.DataFrame) -> pd.DataFrame:
    """The usable rows as cleanlab's label-issue table (``Datalab.get_issues("label")``'s columns), lowest
    ``label_score`` not sorted: index = Parquet row, so ``frame.loc[issues.index]`` lines them up."""
    usable = usable_rows(frame)
    rows = frame[usable]
    return pd.DataFrame(
        {
            "is_label_issue": flagged_rows(frame)[usable],
            "label_score": rows["p_clean"].to_numpy(dtype=np.float64, na_value=np.nan),
            "given_label": rows["label"].astype(str).to_numpy(),
            "predicted_label": rows["predicted_label"].astype(str).to_numpy(),
        },
        index=rows.index,
    )


def fiftyone_rows(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The ``labels.csv`` table: one row per usable sample, its image at ``root / path``."""
    usable = usable_rows(frame)
    rows = frame[usable]
    root = Path(os.path.abspath(root))
    filepaths = []
    for path in rows["path"].astype(str):
        full = Path(os.path.normpath(root / path))
        if full != root and root not in full.parents:  # listing refuses such paths; a hand-edited file may not
            raise UsageError(f"row path {path!r} leaves the dataset root {root}")
        filepaths.append(str(full))

    def optional(column: str, default: Any) -> Any:
        return rows[column].to_numpy() if column in rows.columns else default

    return pd.DataFrame(
        {
            "filepath": filepaths,
            "path": rows["path"].astype(str).to_numpy(),
            "ground_truth": rows["label"].astype(str).to_numpy(),
            "suggested": rows["predicted_label"].astype(str).to_numpy(),
            "p_predicted": rows["p_predicted"].to_numpy(dtype=np.float64, na_value=np.nan),
            "p_clean": rows["p_clean"].to_numpy(dtype=np.float64, na_value=np.nan),
            "is_flagged": flagged_rows(frame)[usable],
            "withheld": pd.Series(optional("withheld", False)).fillna(False).astype(bool).to_numpy(),
            "flag_reason": pd.Series(optional("flag_reason", None)).fillna("").astype(str).to_numpy(),
            "duplicate_group": pd.Series(optional("duplicate_group", None), dtype="Int64").astype(str),
            "is_outlier": pd.Series(optional("is_outlier", False)).fillna(False).astype(bool).to_numpy(),
        }
    ).replace({"duplicate_group": {"<NA>": ""}})


def write_fiftyone(frame: pd.DataFrame, root: Path, out: str | os.PathLike[str]) -> Path:
    """Write ``out/labels.csv`` (atomically) for ``fo.Dataset.from_dir(out, dataset_type=fo.types.CSVDataset,
    fields=fiftyone_fields())``; returns ``out``. The images stay where they are."""
    folder = Path(out)
    (folder / "data").mkdir(parents=True, exist_ok=True)  # the importer wants it; filepaths are absolute
    table = fiftyone_rows(frame, root)

    def write(tmp: Path) -> None:
        table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)

    write_atomic(folder / "labels.csv", write)
    return folder


def fiftyone_fields() -> dict[str, Any]:
    """Column parsers for FiftyOne's CSV importer: labels become ``fo.Classification``, numbers and flags
    typed (an empty cell leaves the field unset)."""
    import fiftyone as fo

    def flag(value: str) -> bool:
        return value == "True"

    return {
        "path": None,
        "ground_truth": lambda v: fo.Classification(label=v),
        "suggested": lambda v: fo.Classification(label=v),
        "p_predicted": float,
        "p_clean": float,
        "is_flagged": flag,
        "withheld": flag,
        "flag_reason": None,
        "duplicate_group": int,
        "is_outlier": flag,
    }


def load_fiftyone(folder: str | os.PathLike[str], *, name: str | None = None) -> Any:
    """A FiftyOne dataset of a :func:`write_fiftyone` folder (needs ``pip install 'deft-clean[fiftyone]'`` and
    the database FiftyOne runs)."""
    try:
        import fiftyone as fo
    except ImportError:
        raise UsageError("FiftyOne is not installed: pip install 'deft-clean[fiftyone]'") from None
    return fo.Dataset.from_dir(
        dataset_dir=str(folder), dataset_type=fo.types.CSVDataset, fields=fiftyone_fields(), name=name
    )
