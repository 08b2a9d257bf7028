"""Readers: one module per input kind, each listing :class:`~deft_clean.inputs.readers.base.Rows`.

=============  ===========================================  ==================================
input          rows are identified by (``path`` column)     images are read from
=============  ===========================================  ==================================
folder         path below the folder                        the files
table          path from the table, relative to its folder  the files
DataFrame      path relative to ``root``                    the files
Hugging Face   ``hf://<row index>``                         the dataset's Image column
WebDataset     ``<shard path>#<sample key>``                the shards, in place (never extracted)
=============  ===========================================  ==================================

:func:`read_rows` picks the reader; nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...run.errors import UsageError, option
from ...run.options import ReadOptions
from .base import TABLE_EXTENSIONS, Rows


def read_rows(dataset: Any, reading: ReadOptions) -> Rows:
    """List ``dataset`` with the reader for its kind (see the table above and ``listing.list_dataset``)."""
    from . import hf, wds

    path_col, label_col, root, split = reading.path_col, reading.label_col, reading.root, reading.split
    label_key, id_col = reading.label_key, reading.id_col

    if _is_dataframe(dataset):
        from .base import FileImages
        from .frame import list_frame

        base, paths, labels = list_frame(dataset, path_col=path_col, label_col=label_col, root=root)
        return Rows(base, paths, labels, FileImages(base, paths), "dataframe", str(base.resolve()))
    hf_options = {"split": split, "image_col": _named(path_col, "path"), "label_col": _named(label_col)}
    if hf.is_hf_object(dataset):
        return hf.hf_rows(dataset, **hf_options, id_col=id_col, files_root=root)
    if id_col is not None and not (isinstance(dataset, (str, os.PathLike)) and hf.is_saved_dataset(Path(dataset))):
        raise UsageError(f"{option('id_col')} is for Hugging Face datasets; {dataset} is not one")
    if wds.is_shards(dataset):
        return wds.wds_rows(dataset, label_key=label_key)
    if not isinstance(dataset, (str, os.PathLike)):
        raise UsageError(
            f"cannot read a {type(dataset).__name__} as a dataset; pass a folder, a .csv/.parquet table, "
            "a pandas DataFrame, a Hugging Face dataset or WebDataset .tar shards"
        )
    path = Path(dataset)
    if not path.exists():
        raise UsageError(f"dataset not found: {path}")
    if path.is_dir() and hf.is_saved_dataset(path):
        return hf.hf_rows(path, **hf_options, id_col=id_col)
    from .files import folder_rows, table_rows

    if path.is_dir():
        return folder_rows(path)
    if path.suffix.lower() in TABLE_EXTENSIONS:
        return table_rows(path, path_col=path_col, label_col=label_col)
    raise UsageError(f"{path} is neither an image folder nor a .csv/.parquet table")


def read_inputs(inputs: Any, reading: ReadOptions) -> Rows:
    """predict's inputs, labels optional: a folder, a table, image files, a Hugging Face dataset or shards."""
    from . import hf, wds
    from .files import loose_rows

    path_col, label_col, split, label_key = reading.path_col, reading.label_col, reading.split, reading.label_key

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) or hf.is_hf_object(inputs) else list(inputs)
    if not items:
        raise UsageError("no input given")
    one = items[0]
    hf_given = hf.is_hf_object(one) or (isinstance(one, (str, os.PathLike)) and hf.is_saved_dataset(Path(one)))
    if len(items) == 1 and hf_given:
        image_col = _named(path_col, "path")
        return hf.hf_rows(one, split=split, image_col=image_col, label_col=_named(label_col), labels_optional=True)
    if wds.is_shards(items):
        return wds.wds_rows(items, label_key=label_key, labels_optional=True)
    paths = [Path(p) for p in items]
    for path in paths:
        if not path.exists():
            raise UsageError(f"input not found: {path}")
    return loose_rows(paths, path_col=path_col, label_col=label_col)


def _named(column: str, default: str = "label") -> str | None:
    """A column the user named, or None for the default (the reader then finds it by its feature type)."""
    return None if column == default else column


def _is_dataframe(dataset: Any) -> bool:
    import pandas as pd

    return isinstance(dataset, pd.DataFrame)
