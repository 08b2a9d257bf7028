"""Images of a results file whose rows are not files (Hugging Face rows, WebDataset samples), for thumbnails.

The results record where the dataset is and how it was read (metadata ``dataset``, ``source``, ``reader``);
listing it again gives each row path its image. File sources need none of this: their rows are paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
