"""The reader seam: what every input kind (folder, table, DataFrame, Hugging Face, WebDataset) provides.

A reader lists its rows once, at the boundary, as :class:`Rows`: a stable row identifier per sample (the
``path`` column of the Parquet), the raw label, and an :class:`ImageSource` that opens row ``i``'s image.
Everything downstream (training, scoring, health hashes) reads images only through the source, so a
new input kind adds one module in this package and one branch in :func:`deft_clean.inputs.readers.read_rows`.
No torch here: listing a dataset (and refusing a bad one) stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ...run.safety import read_file, real
from ..decode import load_image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})


class ImageSource(Protocol):
    """Opens the image of listing row ``index`` (0-based, listing order). Must pickle (DataLoader workers)."""

    def open(self, index: int, *, draft_size: int | None = None) -> Image.Image:
        """The row's image as RGB; raises (any exception) when it cannot be decoded."""
        ...

    def read_bytes(self, index: int) -> bytes:
        """The row's encoded bytes (content hashes for duplicate detection); raises OSError if unreadable.

        Files are read only through :func:`deft_clean.run.safety.read_file` (regular, inside the root, bounded).
        """
        ...


@dataclass(frozen=True)
class Rows:
    """What a reader lists, before classes are derived (see :func:`deft_clean.inputs.listing.list_dataset`)."""

    root: Path  # folder the rows live in (outputs may not go inside it); relative file paths start here
    paths: list[str]  # row identifiers, the Parquet's ``path`` column: stable across listings
    labels: list[str] | None  # raw label of each row; None: unlabelled input (predict only)
    images: ImageSource  # opens row i's image
    kind: str  # the source kind: "folder", "table", "dataframe", "files", "hf" or "webdataset"
    location: str  # where the dataset is, as recorded in the Parquet metadata ("dataset")
    reader: dict[str, Any] = field(default_factory=dict)  # the reader options that list it again


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


class FileImages:
    """Images that are files below ``root`` (folders, tables, DataFrames); a file leaving ``root`` is refused."""

    def __init__(self, root: str | os.PathLike[str], paths: Sequence[str]) -> None:
        self.root = Path(root)
        self.paths = PackedStrings(paths)  # compact: DataLoader workers share it copy-on-write
        self.real_root: Path | None = None  # the root resolved once, at the first read (half the cost of a read)

    def file(self, index: int) -> Path:
        return self.root / self.paths[index]

    def open(self, index: int, *, draft_size: int | None = None) -> Image.Image:
        return load_image(self.file(index), draft_size=draft_size, root=self.root, real_root=self.resolved_root())

    def read_bytes(self, index: int) -> bytes:
        return read_file(self.file(index), root=self.root, real_root=self.resolved_root())

    def resolved_root(self) -> Path:
        if self.real_root is None:
            self.real_root = real(self.root)
        return self.real_root
