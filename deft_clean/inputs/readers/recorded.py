"""Images of a results file's rows, for thumbnails: the one way the report and the notebook view open them.

The results record where the dataset is and how it was read (metadata ``dataset``, ``source``, ``reader``);
listing it again gives each row path of a Hugging Face dataset or WebDataset shards its image. File sources
are opened below the dataset root (the recorded one, or the ``--dataset`` that replaces it) through the
bounded, root-checked read, so a row path from the results never opens a file outside the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from ...run.errors import DeftCleanError

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
    from ..images import load_image

    def open_file(path: str, draft_size: int) -> Image.Image:
        return load_image(root / path, draft_size=draft_size, root=root)

    return open_file
