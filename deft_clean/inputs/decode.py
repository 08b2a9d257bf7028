"""Decoding images to RGB, from a file or from bytes; no torch here (thumbnails and listing use it too)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ..run.safety import read_file


def describe_failure(exc: BaseException) -> str:
    """A short status string for a file that could not be used."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"unreadable: {type(exc).__name__}: {message}"[:200]


def load_image(
    path: str | os.PathLike[str],
    *,
    draft_size: int | None = None,
    root: str | os.PathLike[str] | None = None,
    real_root: Path | None = None,
) -> Image.Image:
    """Open any image Pillow reads as RGB: EXIF orientation applied, first frame, alpha on white.

    ``draft_size`` lets JPEG decoding skip resolution that a later resize would throw away.
    The bytes come from :func:`deft_clean.run.safety.read_file`: only a regular file of at most 1 GiB (a FIFO
    would block forever, a device never ends), and with ``root`` only one whose real path is inside it (a
    file swapped for a link after listing is not read).
    Raises whatever Pillow raises for unreadable files; callers turn that into a status.
    """
    data = read_file(path, root=root, real_root=real_root)  # real_root: see safety.check_regular_file
    try:
        return _decode(io.BytesIO(data), draft_size)
    except Image.UnidentifiedImageError:  # name the file, not the in-memory buffer (statuses stay stable)
        raise Image.UnidentifiedImageError(f"cannot identify image file {os.path.realpath(path)!r}") from None


def decode_image(data: bytes, *, draft_size: int | None = None) -> Image.Image:
    """:func:`load_image` for an image held in memory (a Hugging Face row, a WebDataset member)."""
    try:
        return _decode(io.BytesIO(data), draft_size)
    except Image.UnidentifiedImageError:  # the default message names the buffer's address: never the same twice
        raise Image.UnidentifiedImageError("cannot identify image file (bytes in memory)") from None


def decode_bytes(
    data: bytes, *, draft_size: int | None = None, name: str | Callable[[], str] | None = None
) -> Image.Image:
    """:func:`decode_image` of bytes already read (the reading pass hashes them first), with the statuses of
    :func:`load_image` when they came from the file ``name`` (or a function giving it, called only for a file
    that does not decode: building 100k paths cost ~1 s of a reading pass)."""
    if name is None:
        return decode_image(data, draft_size=draft_size)
    try:
        return _decode(io.BytesIO(data), draft_size)
    except Image.UnidentifiedImageError:
        file = name() if callable(name) else name
        raise Image.UnidentifiedImageError(f"cannot identify image file {os.path.realpath(file)!r}") from None


def _decode(file: str | os.PathLike[str] | BinaryIO, draft_size: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # A DecompressionBombWarning (between 1x and 2x the pixel limit) becomes an error: such a file is
        # an unusable row, not a reason to allocate gigabytes.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(file) as image:
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
