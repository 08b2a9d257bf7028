"""Images of a results file's rows, for thumbnails: the one way the report and the notebook view open them.

The results record where the dataset is and how it was read (metadata ``dataset``, ``source``, ``reader``);
listing it again gives each row path of a Hugging Face dataset or WebDataset shards its image. File sources
are opened below the dataset root (the recorded one, or the ``--dataset`` that replaces it) through the
bounded, root-checked read, so a row path from the results never opens a file outside the dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ...run.errors import DataError, DeftCleanError
from ...run.safety import is_inside, printable, real

Opener = Callable[[str, int], Image.Image]  # (row path, draft size) -> RGB image


def recorded_opener(metadata: dict[str, Any]) -> Opener | None:
    """Opens a row's image by its ``path`` for Hugging Face / WebDataset results; None for file sources, or
    (with a warning) when the recorded dataset cannot be listed again."""
    from ..listing import DatasetSpec, relist

    spec = DatasetSpec.of(metadata)
    if not spec.packed or not spec.location:
        return None
    try:
        listing = relist(spec.relist_target(), metadata)
    except DeftCleanError as exc:
        logging.getLogger("deft_clean").warning("no thumbnails: %s", exc)
        return None
    index = {path: i for i, path in enumerate(listing.paths)}
    images = listing.images

    def open_row(path: str, draft_size: int) -> Image.Image:
        return images.open(index[path], draft_size=draft_size)

    return open_row


def row_opener(metadata: dict[str, Any], root: Path | None) -> Opener | None:
    """Opens any row's image by its ``path``: packed sources through :func:`recorded_opener`, file sources
    below ``root`` (None: no images; the caller shows placeholders)."""
    opener = recorded_opener(metadata)
    if opener is not None or root is None:
        return opener
    from ..decode import load_image

    def open_file(path: str, draft_size: int) -> Image.Image:
        return load_image(root / path, draft_size=draft_size, root=root)

    return open_file


def checked_root(metadata: dict[str, Any], paths: Sequence[str], dataset: Any = None) -> Path:
    """The dataset root of file-source results, once every row path in ``paths`` is one the recorded dataset's
    own reader lists again: a results file is data, not instructions, so its metadata cannot point export or
    the report at any other folder's files.

    An image folder or a table is listed again (``dataset`` replaces the recorded location, for a dataset that
    moved); rows of a DataFrame or loose files, which have no listing to repeat, must be plain relative paths
    to regular image files inside the root.

    Raises:
        DataError: a row does not list again, or the recorded dataset cannot be listed.
        UsageError: ``dataset`` does not exist.
    """
    from ..listing import DatasetSpec, relist
    from .base import IMAGE_EXTENSIONS

    spec = DatasetSpec.of(metadata)
    root = spec.root(dataset)
    target = _relist_target(spec, dataset)
    if target is not None:
        try:
            listed = set(relist(target, metadata).paths)
        except DeftCleanError as exc:
            raise DataError(f"cannot list the recorded dataset again to check the results' rows: {exc}") from None
        stray = [p for p in paths if p not in listed and _present(root, str(p))]  # missing: the caller says
        where = f"the {spec.name} {target}"
    else:
        real_root = real(root)
        stray = [
            p for p in paths if _present(root, str(p)) and not _plain_image(root, real_root, str(p), IMAGE_EXTENSIONS)
        ]
        where = f"{root} as image files"
    if stray:
        raise DataError(
            f"{len(stray)} row(s) of the results are not listed by {where}, e.g. {printable(str(stray[0]))!r}; "
            "the results were made for another dataset or edited: rerun detect"
        )
    return root


def _relist_target(spec: Any, dataset: Any) -> str | None:
    """What lists the rows again: the image folder or table (given or recorded); None for sources without one."""
    if dataset is not None:
        given = Path(dataset)
        if given.is_dir() and spec.folder:
            return str(given)
        return str(given) if spec.table and given.is_file() else None
    if spec.folder or spec.table:
        return spec.location or None
    return None


def _present(root: Path, path: str) -> bool:
    """Whether a row's file (or a link in its place) is there; a missing file is the caller's error to report."""
    try:
        return os.path.lexists(root / path)
    except (OSError, ValueError):
        return True


def _plain_image(root: Path, real_root: Path, path: str, extensions: frozenset[str]) -> bool:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        return False
    file = root.joinpath(*parts)
    if file.suffix.lower() not in extensions:
        return False
    resolved = real(file)
    return is_inside(resolved, real_root) and resolved.is_file()
