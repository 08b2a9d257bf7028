"""A pandas DataFrame of image paths as a dataset: ``deft_clean.detect(frame, image_col=..., label_col=...)``.

Paths are absolute, or relative to ``root``. The frame is validated here (types, relative paths without a
root), then listed exactly like a CSV/Parquet table (:func:`deft_clean.inputs.readers.files._list_table`),
so the same rules apply: no empty labels, every file exists, no path leaves the root. Messages number rows by
position (``frame.iloc[row]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ...run.errors import DataError, UsageError

NAME = "DataFrame"  # how messages name the input


def list_frame(
    frame: pd.DataFrame, *, path_col: str, label_col: str, root: str | os.PathLike[str] | None
) -> tuple[Path, list[str], list[str]]:
    """``(root, paths relative to root, labels)`` of a DataFrame with an image-path and a label column.

    Without ``root`` every path must be absolute, and the root is their deepest common folder.
    """
    from .files import _list_table, require_columns

    require_columns(
        frame,
        (path_col, label_col),
        f"{NAME}: no column(s)",
        "name them with image_col=/label_col=",
        empty=f"{NAME}: the frame has no rows",
    )
    values = frame[path_col].tolist()
    for row, value in enumerate(values):
        if not isinstance(value, (str, os.PathLike)) and not pd.isna(value):
            raise DataError(
                f"{NAME}: column {path_col!r} must hold image file paths (str or Path), "
                f"but row {row} holds a {type(value).__name__}"
            )
    paths = ["" if pd.isna(v) else os.fspath(v) for v in values]  # byte for byte, never stripped
    if root is None:
        relative = [p for p in paths if p and not os.path.isabs(p)]
        if relative:
            raise UsageError(
                f"{NAME}: {len(relative)} relative path(s) in {path_col!r}, e.g. {relative[:3]}; "
                "pass root= (the folder they are relative to) or make them absolute"
            )
        folders = [os.path.dirname(os.path.abspath(p)) for p in paths if p]
        base = Path(os.path.commonpath(folders)) if folders else Path.cwd()
    else:
        base = Path(root)
        if not base.is_dir():
            raise UsageError(f"root {base} is not a folder")
    table = pd.DataFrame({path_col: paths, label_col: frame[label_col].tolist()})
    return _list_table(Path(NAME), path_col=path_col, label_col=label_col, frame=table, root=base, row0=0)
