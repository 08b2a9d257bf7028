"""Hugging Face ``datasets``: a folder written by ``save_to_disk``, or a ``Dataset`` / ``DatasetDict`` object.

Rows are identified by their index in the (split of the) dataset: ``hf://<index>``, stable as long as the
saved dataset is. The image column is the dataset's ``Image`` feature; the label column is ``label`` if
there is one, else its ``ClassLabel`` feature (labels become the class names); options name others.
Images are read from the dataset's Arrow files as encoded bytes and decoded exactly like files, so a
Hugging Face copy of an image folder gets the verdicts of the folder. ``datasets`` is an optional
dependency (``pip install 'deft-clean[hf]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from ...run.errors import DataError, UsageError, option
from ...run.safety import read_file
from ..decode import decode_image
from .base import Rows

INSTALL = "pip install 'deft-clean[hf]'"
PREFIX = "hf://"
DEFAULT_SPLIT = "train"


def is_hf_object(dataset: Any) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict`` (checked without importing ``datasets``)."""
    return type(dataset).__module__.split(".")[0] == "datasets"


def is_saved_dataset(path: Path) -> bool:
    """A folder that ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk`` wrote."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"reading a Hugging Face dataset needs the datasets package: {INSTALL}") from None
    return datasets


def hf_rows(
    dataset: Any,
    *,
    split: str | None,
    image_col: str | None,
    label_col: str | None,
    id_col: str | None = None,
    labels_optional: bool = False,
    files_root: str | os.PathLike[str] | None = None,
) -> Rows:
    """The rows of a saved Hugging Face dataset folder or of a ``Dataset``/``DatasetDict`` object.

    Rows are ``hf://<index>``, or ``hf://<index>#<id>`` with ``id_col`` (the id is for people; the index
    opens the row). ``labels_optional`` (predict): a dataset without a label column lists with ``labels=None``.
    A row without bytes is read from its path only inside the saved dataset's folder, or, for a dataset
    object (e.g. ``load_dataset("imagefolder", ...)``, whose rows are paths), inside ``files_root``.
    """
    lib = _datasets()
    dataset_arg = dataset
    if isinstance(dataset, (str, os.PathLike)):
        name = str(dataset)
        try:
            dataset = lib.load_from_disk(name)
        except Exception as exc:  # datasets raises several types for a damaged folder
            raise DataError(f"{name}: cannot load the saved dataset ({type(exc).__name__}: {exc})") from None
        location, root = str(Path(name).resolve()), Path(name)
    else:
        location, root = _object_location(dataset)
        name = "the Hugging Face dataset"
    chosen = None
    if isinstance(dataset, lib.DatasetDict):
        chosen = split or DEFAULT_SPLIT
        if chosen not in dataset:
            raise UsageError(
                f"{name}: no split {chosen!r}; its splits are {list(dataset)} (choose one with {option('split')})"
            )
        dataset = dataset[chosen]
    elif split is not None:
        raise UsageError(f"{name} is one Dataset, not a DatasetDict of splits; drop {option('split', split)}")
    if len(dataset) == 0:
        raise DataError(f"{name}: the dataset has no rows")
    image_col = _image_column(dataset, image_col, name, lib)
    label_col, labels = _labels(dataset, label_col, name, lib, optional=labels_optional)
    paths = [f"{PREFIX}{i}" for i in range(len(dataset))]
    options = {"split": chosen, "path_col": image_col, "label_col": label_col}
    if id_col is not None:
        if id_col not in dataset.features:
            raise DataError(
                f"{name}: no column {id_col!r}; its columns are {list(dataset.features)} (see {option('id_col')})"
            )
        paths = [f"{path}#{value}" for path, value in zip(paths, dataset[id_col], strict=True)]
        options["id_col"] = id_col
    folder = root if is_saved_dataset(root) else None  # rows may name files only inside a saved dataset...
    if files_root is not None and not isinstance(dataset_arg, (str, os.PathLike)):
        folder = root = Path(files_root)  # ... or inside the folder the caller names for a dataset object
    return Rows(root, paths, labels, HFImages(dataset, image_col, folder), "hf", location, options)


def _object_location(dataset: Any) -> tuple[str, Path]:
    """Where a dataset object lives: the folder of its Arrow files (for a loaded DatasetDict, the folder
    holding its splits, so that listing it again picks the split), if it has any."""
    split_of_dict = hasattr(dataset, "values")
    first = next(iter(dataset.values())) if split_of_dict else dataset
    files = [f["filename"] for f in getattr(first, "cache_files", [])]
    if files:
        folder = Path(files[0]).parent
        if split_of_dict and (folder.parent / "dataset_dict.json").is_file():
            folder = folder.parent
        if is_saved_dataset(folder):
            return str(folder.resolve()), folder
    return "<in-memory Hugging Face dataset>", Path("<in-memory Hugging Face dataset>")


def _image_column(dataset: Any, named: str | None, name: str, lib: Any) -> str:
    features = dataset.features
    if named is not None:
        if named not in features:
            raise DataError(
                f"{name}: no column {named!r}; its columns are {list(features)} (see {option('image_col')})"
            )
        return named
    found = [c for c, f in features.items() if isinstance(f, lib.Image)]
    if len(found) != 1:
        raise DataError(
            f"{name}: {len(found)} Image columns {found} among {list(features)}; name one with {option('image_col')}"
        )
    return found[0]


def _labels(
    dataset: Any, named: str | None, name: str, lib: Any, *, optional: bool = False
) -> tuple[str | None, list[str] | None]:
    """The label column (named, else "label", else the one ClassLabel column) and its labels as text."""
    features = dataset.features
    if named is None and "label" in features:
        named = "label"
    elif named is None:
        found = [c for c, f in features.items() if isinstance(f, lib.ClassLabel)]
        if not found and optional:
            return None, None
        if len(found) != 1:
            raise DataError(
                f"{name}: no 'label' column and {len(found)} ClassLabel columns {found} among {list(features)}; "
                f"name the label column with {option('label_col')}"
            )
        named = found[0]
    elif named not in features:
        raise DataError(f"{name}: no column {named!r}; its columns are {list(features)} (see {option('label_col')})")
    feature = features[named]
    values = list(dataset[named])
    if isinstance(feature, lib.ClassLabel):
        labels = ["" if v is None or v < 0 else feature.names[v] for v in values]
    else:
        labels = ["" if v is None else str(v).strip() for v in values]
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise DataError(f"{name}: {len(empty)} row(s) without a {named!r} label, first at index {empty[0]}")
    return named, labels


class HFImages:
    """Opens row ``i``'s image from the Arrow data as encoded bytes, decoded like a file.

    A row that holds no bytes but a path is read only when ``folder`` (the saved dataset's folder) is
    known and the path (relative paths start there) lies inside it, through the reader's bounded read of
    regular files; any other path (absolute elsewhere, relative to the working directory, a FIFO, a
    device), a missing image or an empty one raises OSError, which makes the row unusable with a status.
    """

    def __init__(self, dataset: Any, column: str, folder: Path | None = None) -> None:
        lib = _datasets()
        self.column = column
        self.folder = folder  # None: an in-memory dataset, whose rows may name no file at all
        self.table = dataset.select_columns([column]).cast_column(column, lib.Image(decode=False))

    def read_bytes(self, index: int) -> bytes:
        item = self.table[int(index)][self.column]  # {"bytes": b"..." or None, "path": str or None}, or None
        if not isinstance(item, dict) or (item.get("bytes") is None and not item.get("path")):
            raise OSError(f"row {index} has no image (neither bytes nor a path)")
        if item.get("bytes") is not None:
            return bytes(item["bytes"])
        path = str(item["path"])
        if self.folder is None:
            raise OSError(f"row {index} names a file ({path}) but holds no bytes; pass root= its folder to read it")
        file = Path(path) if os.path.isabs(path) else self.folder / path
        return read_file(file, root=self.folder)

    def open(self, index: int, *, draft_size: int | None = None) -> Image.Image:
        return decode_image(self.read_bytes(index), draft_size=draft_size)
