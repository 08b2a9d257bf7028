"""The samples table: list an image folder or a CSV/Parquet table, validate it, and load images.

A :class:`Listing` is what every phase works on: paths relative to a dataset root, their raw labels,
the class list and the text each class gets in prompts. Validation happens here, at the boundary;
everything downstream assumes a valid listing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .errors import DataError, UsageError
from .safety import check_name, check_regular_file, printable

if TYPE_CHECKING:
    from .cache import CachedImages

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})
STATUS_OK = "ok"


@dataclass(frozen=True)
class Listing:
    """A validated dataset: one entry per sample, in listing order."""

    root: Path  # dataset root; every path is relative to it
    paths: list[str]  # sample paths as listed, relative to root, with forward slashes
    labels: list[str]  # raw label of each sample
    classes: list[str]  # raw class labels, in class-index order
    prompt_names: list[str]  # text used for each class in prompts, aligned with classes
    label_indices: np.ndarray  # int64 [N], index into classes
    source: str  # "folder" or "table"

    def __len__(self) -> int:
        return len(self.paths)


def natural_sorted(values: Sequence[str]) -> list[str]:
    """Sort labels so that "2" comes before "10" and "class_2" before "class_10"."""

    def key(value: str) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", value)]

    return sorted(set(values), key=key)


def default_prompt_name(label: str) -> str:
    """The text a raw label becomes in a prompt: underscores and hyphens read as spaces."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def load_class_names(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a raw-label -> prompt-text mapping from a JSON object or a two-column CSV.

    A CSV header row is harmless: it becomes one more mapping that no label uses.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--class-names file not found: {file}")
    if file.suffix.lower() == ".json":
        try:
            mapping = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(mapping, dict):
            raise DataError(f"{file}: expected a JSON object mapping labels to class names")
        return {str(k): str(v) for k, v in mapping.items()}
    mapping = {}
    with file.open(newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{file}:{line_no}: expected two columns (label, class name), got {len(row)}")
            mapping[row[0].strip()] = row[1].strip()
    return mapping


def list_dataset(
    dataset: str | os.PathLike[str] | pd.DataFrame,
    *,
    path_col: str = "path",
    label_col: str = "label",
    class_names: str | os.PathLike[str] | dict[str, str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Listing:
    """List and validate a dataset.

    Args:
        dataset: an image folder (``DATASET/<class>/<image>``, nested folders allowed inside a class)
            or a ``.csv`` / ``.parquet`` table with a path and a label column; table paths are relative
            to the table's folder; or a pandas DataFrame of image paths (see :mod:`deft_clean.frames`).
        path_col, label_col: column names in a table.
        root: for a DataFrame, the folder its relative paths are relative to.
        class_names: a mapping (or a JSON/CSV file of one) from raw label to prompt text.

    Raises:
        UsageError: the path is missing or neither a folder nor a table.
        DataError: the dataset's content is invalid (fewer than 2 classes, an empty class, missing
            columns or labels, listed files that are missing or outside the dataset root, ...).
    """
    path = Path("DataFrame") if isinstance(dataset, pd.DataFrame) else Path(dataset)
    if isinstance(dataset, pd.DataFrame):
        from .frames import list_frame

        root, paths, labels = list_frame(dataset, path_col=path_col, label_col=label_col, root=root)
        source = "dataframe"
    elif not path.exists():
        raise UsageError(f"dataset not found: {path}")
    elif path.is_dir():
        root, paths, labels = _list_folder(path)
        source = "folder"
    elif path.suffix.lower() in TABLE_EXTENSIONS:
        root, paths, labels = _list_table(path, path_col=path_col, label_col=label_col)
        source = "table"
    else:
        raise UsageError(f"{path} is neither an image folder nor a .csv/.parquet table")

    classes = natural_sorted(labels)
    if len(classes) < 2:
        raise DataError(f"{path}: found {len(classes)} class(es) {classes}; detection needs at least 2")
    mapping = load_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else class_names
    if mapping is not None:
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise DataError(
                f"{len(missing)} label(s) missing from --class-names, e.g. {missing[:5]}; add them to the file"
            )
        prompt_names = [mapping[c] for c in classes]
    else:
        prompt_names = [default_prompt_name(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    label_indices = np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
    return Listing(root, paths, labels, classes, prompt_names, label_indices, source)


def _list_folder(root: Path) -> tuple[Path, list[str], list[str]]:
    resolved_root = root.resolve()
    entries = sorted(root.iterdir())
    for entry in entries:
        check_name(entry.name, root)
    class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected {root}/<class>/<image>")
    loose = [f for f in entries if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()]
    if loose:
        logging.getLogger("deft_clean").warning(
            "%d image(s) at the top level of %s are ignored (e.g. %s); put them in a class folder",
            len(loose),
            printable(root),
            printable(loose[0].name),
        )
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in class_dirs:
        # A linked class folder is treated like a linked file: fine inside the root, refused outside it.
        if class_dir.is_symlink() and not _inside(class_dir.resolve(), resolved_root):
            raise DataError(
                f"class folder {printable(class_dir)} links outside the dataset root {printable(root)}; "
                "refusing to read it (copy the folder in, or point detect at a folder that holds it)"
            )
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
            for name in dirnames:
                check_name(name, dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                check_name(name, dirpath)
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                file = Path(dirpath, name)
                if file.is_symlink() and not _inside(file.resolve(), resolved_root):
                    raise DataError(f"{printable(file)} links outside the dataset root {root}; refusing to read it")
                found.append(file.relative_to(root).as_posix())
        if not found:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths.extend(found)
        labels.extend([class_dir.name] * len(found))
    return root, paths, labels


def read_table(table: Path) -> pd.DataFrame:
    try:
        if table.suffix.lower() == ".csv":
            return pd.read_csv(table, dtype=str, keep_default_na=False)
        return pd.read_parquet(table)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{table}: cannot read table ({type(exc).__name__}: {exc})") from None


def _list_table(
    table: Path,
    *,
    path_col: str,
    label_col: str,
    frame: pd.DataFrame | None = None,
    root: Path | None = None,
    row0: int = 2,
) -> tuple[Path, list[str], list[str]]:
    """List a table; ``frame``/``root`` replace reading ``table`` (its name then only labels messages).

    ``row0`` is the number messages give the first row (2: the line after a CSV header).
    """
    frame = read_table(table) if frame is None else frame
    missing = [c for c in (path_col, label_col) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{table}: missing column(s) {missing}; columns are {list(frame.columns)} "
            "(choose others with --path-col/--label-col)"
        )
    if len(frame) == 0:
        raise DataError(f"{table}: the table has no rows")
    raw_labels = frame[label_col]
    labels = ["" if pd.isna(v) else str(v).strip() for v in raw_labels]
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise DataError(f"{table}: {len(empty)} row(s) with an empty {label_col!r}, first at row {empty[0] + row0}")
    root = table.parent if root is None else root
    resolved_root = root.resolve()
    paths = []
    real_paths = []
    missing_files = []
    for row, value in enumerate(frame[path_col]):
        text = "" if pd.isna(value) else str(value).strip()
        if not text:
            raise DataError(f"{table}: empty {path_col!r} at row {row + row0}")
        file = Path(text) if os.path.isabs(text) else root / text
        resolved = file.resolve()
        if not _inside(resolved, resolved_root):
            raise DataError(f"{table}: row {row + row0} path {text!r} resolves outside the dataset root {root}")
        if not resolved.is_file():
            missing_files.append(text)
        real_paths.append(str(resolved))
        paths.append(resolved.relative_to(resolved_root).as_posix() if os.path.isabs(text) else Path(text).as_posix())
    check_unique(real_paths, table, shown=paths)
    if missing_files:
        raise DataError(
            f"{table}: {len(missing_files)} listed file(s) do not exist, e.g. {missing_files[:3]} "
            f"(paths are relative to {root})"
        )
    return root, paths, labels


def check_unique(paths: Sequence[str], table: Path, *, shown: Sequence[str] | None = None) -> None:
    """Refuse a table that lists one file twice (it would be trained twice and exported once).

    ``paths`` are compared (pass real paths to catch ``a/../a/x.png``); ``shown`` is what the message names.
    """
    seen: dict[str, int] = {}
    for row, path in enumerate(paths):
        if path in seen:
            name = (shown or paths)[row]
            raise DataError(
                f"{table}: {printable(name)} is listed twice (rows {seen[path] + 2} and {row + 2}); "
                "remove the duplicate rows"
            )
        seen[path] = row


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# ----------------------------------------------------------------------------------------------------
# Images


def load_image(
    path: str | os.PathLike[str], *, draft_size: int | None = None, root: str | os.PathLike[str] | None = None
) -> Image.Image:
    """Open any image Pillow reads as RGB: EXIF orientation applied, first frame, alpha on white.

    ``draft_size`` lets JPEG decoding skip resolution that a later resize would throw away.
    Only a regular file is opened (a FIFO would block forever), and with ``root`` only one whose real
    path is inside it (a file swapped for a link after listing is not read).
    Raises whatever Pillow raises for unreadable files; callers turn that into a status.
    """
    path = check_regular_file(path, root=root)
    with warnings.catch_warnings():
        # A DecompressionBombWarning (between 1x and 2x the pixel limit) becomes an error: such a file is
        # an unusable row, not a reason to allocate gigabytes.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) to 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        if mode == "F" and top <= 1.0:
            values = values * 255.0
        elif top > 255.0:
            values = values / 257.0 if top <= 65535.0 else values * (255.0 / top)
        gray = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def describe_failure(exc: BaseException) -> str:
    """A short status string for a file that could not be used."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"unreadable: {type(exc).__name__}: {message}"[:200]


class CachedFailure(Exception):
    """A listed file that was unusable when it was cached; ``status`` is the row's status text."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class PackedStrings:
    """An immutable sequence of strings stored as one bytes buffer + int64 offsets (compact, fork-friendly)."""

    def __init__(self, values: Sequence[str]) -> None:
        encoded = [v.encode("utf-8", "surrogateescape") for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].tobytes().decode("utf-8", "surrogateescape")


class ImageDataset(Dataset):
    """Images of a listing, transformed; unusable files come back as zeros with a status string.

    Items are ``(image [3, H, W], label_index, sample_index, status)``; status is ``"ok"`` or why the
    file could not be used. A corrupt file never raises.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        label_indices: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        image_size: int,
        indices: Sequence[int] | None = None,
        cache: CachedImages | None = None,
    ) -> None:
        self.root = root
        self.cache = cache  # decoded pixels aligned to ``paths`` (see deft_clean.cache), or None
        # Paths as one UTF-8 buffer + offsets, indices as an array: no per-sample Python objects, so
        # DataLoader workers do not copy a list of N strings page by page (fork copy-on-write + refcounts).
        self.paths = PackedStrings(paths)
        self.label_indices = np.asarray(label_indices)
        self.transform = transform
        self.image_size = image_size
        self.indices = np.arange(len(paths)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int, str]:
        index = int(self.indices[item])
        label = int(self.label_indices[index])
        try:
            if self.cache is not None:
                image = self.cache.image(index)
            else:
                image = load_image(self.root / self.paths[index], draft_size=self.image_size, root=self.root)
            return self.transform(image), label, index, STATUS_OK
        except CachedFailure as failure:
            return torch.zeros(3, self.image_size, self.image_size), label, index, failure.status
        except Exception as exc:  # any decode failure is a status, never a crash
            return torch.zeros(3, self.image_size, self.image_size), label, index, describe_failure(exc)
