"""The samples table of every phase: list a dataset through its reader, derive classes, validate.

A :class:`Listing` is what every phase works on: a row identifier per sample (a path relative to the
dataset root for files; see :mod:`deft_clean.inputs.readers` for the other inputs), its raw label, the class list,
the text each class gets in prompts, and the :class:`~deft_clean.inputs.readers.base.ImageSource` that opens each
row's image. Validation happens here, at the boundary; everything downstream assumes a valid listing.
No torch import: a bad path is refused in a fraction of a second.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..run.errors import DataError, UsageError, option
from ..run.options import ReadOptions
from ..run.safety import read_file
from .readers import read_rows
from .readers.base import TABLE_EXTENSIONS, FileImages, ImageSource

__all__ = ["DatasetSpec", "Listing", "dataset_root", "list_dataset"]


PACKED_KINDS = ("hf", "webdataset")  # rows are not image files: no export, no file cache, thumbnails relist
LISTED_KINDS = ("table", "dataframe", "files")  # every row names its own file, which is an input to protect
FOLDER_KINDS = ("folder", "hf", "webdataset")  # the dataset is a folder of its own: nothing is written inside
KIND_NAMES = {"hf": "Hugging Face dataset", "webdataset": "WebDataset"}


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset was read: its source kind, where it is and the reader options that list it again.

    A listing carries one (:attr:`Listing.spec`); detect records it once in the results' metadata
    (``source``, ``dataset``, ``reader``), and export, report, train and the thumbnails read it back with
    :meth:`of`. This class (with the readers, which produce the kinds) is the only code that knows what
    each source kind allows; everything else asks it.
    """

    kind: str | None  # "folder", "table", "dataframe", "files", "hf" or "webdataset"; None: not recorded
    location: str = ""  # the metadata's "dataset": a folder, a table, a Hugging Face dataset, shard patterns
    reader: dict[str, Any] = field(default_factory=dict)  # reader options that list it again

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> DatasetSpec:
        """The spec a results file recorded (its metadata)."""
        return cls(metadata.get("source"), str(metadata.get("dataset") or ""), dict(metadata.get("reader") or {}))

    def to_metadata(self) -> dict[str, Any]:
        """What detect writes into the results' metadata."""
        return {"dataset": self.location, "source": self.kind, "reader": self.reader}

    @property
    def packed(self) -> bool:
        """Rows are samples inside the dataset, not image files (Hugging Face, WebDataset)."""
        return self.kind in PACKED_KINDS

    @property
    def folder(self) -> bool:
        """An image folder (results that record no kind are from an image folder)."""
        return self.kind in (None, "folder")

    @property
    def table(self) -> bool:
        """A CSV/Parquet table file: the table itself is an input."""
        return self.kind == "table"

    @property
    def listed_files(self) -> bool:
        """Every row names its own image file (table, DataFrame, loose files): each is an input."""
        return self.kind in LISTED_KINDS

    @property
    def dataset_folder(self) -> bool:
        """The dataset is a folder of its own (image folder, saved Hugging Face dataset, shards' folder)."""
        return self.kind in FOLDER_KINDS

    @property
    def name(self) -> str:
        """The kind in a message: "Hugging Face dataset", "WebDataset", "table", ..."""
        return KIND_NAMES.get(self.kind or "folder", self.kind or "folder")

    def export_refusal(self) -> str | None:
        """Why export cannot write this dataset as image files; None when it can."""
        if self.kind == "hf":
            return (
                "export writes image folders; keep a Hugging Face dataset in its format instead: "
                "ds.select(frame.index[frame.is_clean]) in Python (rows are hf://<index>; see README, Inputs)"
            )
        if self.kind == "webdataset":
            return (
                "export writes image folders; for WebDataset shards train on them directly "
                "(deft-clean train SHARDS --results ... --clean-only) or filter keys in Python (see README, Inputs)"
            )
        return None

    def relist_target(self) -> str | list[str]:
        """What to list again: the location, or the WebDataset shard patterns it joins with ","."""
        return self.location.split(",") if self.kind == "webdataset" else self.location

    def root(self, dataset: str | os.PathLike[str] | None = None) -> Path:
        """The folder that the results' ``path`` column is relative to.

        ``dataset`` overrides the recorded location (for a dataset that moved): an image folder, or a table
        file whose folder is the root.

        Raises:
            UsageError: ``dataset`` is given but does not exist.
            DataError: the recorded dataset is unknown or no longer exists.
        """
        if dataset is not None:
            path = Path(dataset)
            if not path.exists():
                raise UsageError(f"{option('dataset')} not found: {path}")
            return (path if path.is_dir() else path.parent).resolve()
        if not self.location:
            raise DataError(f"the results do not record where the dataset is; pass {option('dataset')}")
        path = Path(self.location.split(",")[0])  # WebDataset: the shards' (first) pattern
        if self.kind == "webdataset":
            path = path.parent  # a pattern such as /data/shards-{000..009}.tar: its folder holds the shards
        is_table = self.kind == "table" or (self.kind is None and path.suffix.lower() in TABLE_EXTENSIONS)
        root = path.parent if is_table else path
        if not root.is_dir():
            raise DataError(
                f"dataset {path} (recorded by detect) no longer exists; pass {option('dataset')} to locate it"
            )
        return root.resolve()


@dataclass(frozen=True)
class Listing:
    """A validated dataset: one entry per sample, in listing order."""

    root: Path  # dataset root; every file path is relative to it
    paths: list[str]  # row identifiers as listed: file paths relative to root with forward slashes, or
    # "hf://<index>" (Hugging Face) and "<shard>#<key>" (WebDataset)
    labels: list[str]  # raw label of each sample
    classes: list[str]  # raw class labels, in class-index order
    prompt_names: list[str]  # text used for each class in prompts, aligned with classes
    label_indices: np.ndarray  # int64 [N], index into classes
    kind: str  # the source kind: "folder", "table", "dataframe", "hf" or "webdataset"
    images: ImageSource | None = None  # opens row i's image; None: files at root / paths[i]
    location: str = ""  # where the dataset is (the Parquet metadata's "dataset")
    reader: dict[str, Any] = field(default_factory=dict)  # reader options that list it again (train, export)

    def __post_init__(self) -> None:
        if self.images is None:
            object.__setattr__(self, "images", FileImages(self.root, self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def spec(self) -> DatasetSpec:
        """How this dataset was read (what detect records in the results)."""
        return DatasetSpec(self.kind, self.location, self.reader)


def natural_sorted(values: Sequence[str]) -> list[str]:
    """Sort labels so that "2" comes before "10" and "class_2" before "class_10"."""

    def key(value: str) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", value)]

    return sorted(set(values), key=key)


def default_prompt_name(label: str) -> str:
    """The text a raw label becomes in a prompt: underscores and hyphens read as spaces."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


CLASS_NAMES_BYTES = 64 << 20  # a class-names file is read whole; a bigger one is refused


def load_class_names(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a raw-label -> prompt-text mapping from a JSON object or a two-column CSV.

    A CSV header row is harmless: it becomes one more mapping that no label uses.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{option('class_names')} file not found: {file}")
    if file.suffix.lower() == ".json":
        try:
            mapping = json.loads(read_file(file, limit=CLASS_NAMES_BYTES).decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except (UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{file}: not a UTF-8 JSON object of class names ({type(exc).__name__})") from None
        except OSError as exc:  # a FIFO or a file over the limit, swapped in after the check above
            raise DataError(f"{option('class_names')} {exc}") from None
        if not isinstance(mapping, dict):
            raise DataError(f"{file}: expected a JSON object mapping labels to class names")
        return {str(k): str(v) for k, v in mapping.items()}
    mapping = {}
    try:
        text = read_file(file, limit=CLASS_NAMES_BYTES).decode("utf-8")
        for line_no, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{file}:{line_no}: expected two columns (label, class name), got {len(row)}")
            mapping[row[0].strip()] = row[1].strip()
    except OSError as exc:  # a FIFO or a file over the limit, swapped in after the check above
        raise DataError(f"{option('class_names')} {exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary file: invalid UTF-8, NUL bytes, huge fields
        raise DataError(
            f"{file}: not a UTF-8 CSV of (label, class name) rows ({type(exc).__name__}); pass a text file"
        ) from None
    return mapping


def list_dataset(dataset: Any, reading: ReadOptions | None = None, **keywords: Any) -> Listing:
    """List and validate a dataset.

    Args:
        dataset: an image folder (``DATASET/<class>/<image>``, nested folders allowed inside a class)
            or a ``.csv`` / ``.parquet`` table with a path and a label column; table paths are relative
            to the table's folder; or a pandas DataFrame of image paths (see :mod:`deft_clean.inputs.readers.frame`);
            or a Hugging Face dataset (saved folder, ``Dataset`` or ``DatasetDict``); or WebDataset
            ``.tar`` shards (a path, a brace pattern or a list). See :mod:`deft_clean.inputs.readers`.
        path_col, label_col: column names in a table or DataFrame; in a Hugging Face dataset the image
            and label columns (defaults: its ``Image`` and ``ClassLabel`` columns).
        root: for a DataFrame, the folder its relative paths are relative to; for a Hugging Face dataset
            object, the folder its path-only rows (no bytes) may be read from (none without it).
        class_names: a mapping (or a JSON/CSV file of one) from raw label to prompt text.
        split: the split of a Hugging Face ``DatasetDict`` (default ``train``).
        label_key: WebDataset: the member holding the label (``cls``), or ``json:FIELD``.
        id_col: Hugging Face: a column whose value joins the row index in the ``path`` (``hf://<index>#<id>``).

    These come as one :class:`~deft_clean.run.options.ReadOptions` (``reading``) or as its fields (``keywords``).

    Raises:
        UsageError: the path is missing or not a dataset deft-clean reads.
        DataError: the dataset's content is invalid (fewer than 2 classes, an empty class, missing
            columns or labels, listed files that are missing or outside the dataset root, ...).
    """
    reading = reading or ReadOptions(**keywords)
    rows = read_rows(dataset, reading)
    class_names = reading.class_names
    labels = rows.labels
    classes = natural_sorted(labels)
    if len(classes) < 2:
        name = "DataFrame" if isinstance(dataset, pd.DataFrame) else rows.location if rows.kind == "hf" else dataset
        raise DataError(f"{name}: found {len(classes)} class(es) {classes}; detection needs at least 2")
    mapping = load_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else class_names
    if mapping is not None:
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise DataError(
                f"{len(missing)} label(s) missing from {option('class_names')}, e.g. {missing[:5]}; "
                "add them to the file"
            )
        prompt_names = [mapping[c] for c in classes]
    else:
        prompt_names = [default_prompt_name(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    label_indices = np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
    return Listing(
        rows.root,
        rows.paths,
        labels,
        classes,
        prompt_names,
        label_indices,
        rows.kind,
        images=rows.images,
        location=rows.location,
        reader=rows.reader,
    )


def relist(dataset: Any, metadata: dict[str, Any]) -> Listing:
    """List ``dataset`` again the way detect listed it, from the results' metadata (train, thumbnails)."""
    reader = dict(metadata.get("reader") or {})
    path_col = reader.pop("path_col", metadata.get("path_col", "path"))
    label_col = reader.pop("label_col", metadata.get("label_col", "label"))
    root = metadata.get("dataset") if isinstance(dataset, pd.DataFrame) else None
    return list_dataset(dataset, ReadOptions(path_col=path_col, label_col=label_col, root=root, **reader))


def dataset_root(metadata: dict[str, Any], dataset: str | os.PathLike[str] | None = None) -> Path:
    """The folder that the results' ``path`` column is relative to (see :meth:`DatasetSpec.root`)."""
    return DatasetSpec.of(metadata).root(dataset)
