"""Images of a listing as a torch Dataset (listing itself lives in :mod:`deft_clean.inputs.listing`, torch-free)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..run.errors import STATUS_OK
from .decode import decode_bytes, describe_failure
from .image_cache import CachedFailure, CachedImages
from .pixel_similarity import THUMB, gray_thumbnail
from .readers.base import FileImages, ImageSource


class ImageDataset(Dataset):
    """Images of a listing, transformed; unusable files come back as zeros with a status string.

    Items are ``(image [3, H, W], label_index, sample_index, status)``; status is ``"ok"`` or why the
    file could not be used. A corrupt file never raises. Images come from ``images`` (the listing's
    reader, :attr:`deft_clean.inputs.listing.Listing.images`), or from ``cache``; without either, from the files
    ``root / paths[i]``.
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
        images: ImageSource | None = None,
        blank_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.root = root
        self.blank_dtype = blank_dtype  # of the zeros an unusable file gets: the transform's output dtype
        self.cache = cache  # decoded pixels aligned to ``paths`` (see deft_clean.inputs.image_cache), or None
        # Paths as one UTF-8 buffer + offsets, indices as an array: no per-sample Python objects, so
        # DataLoader workers do not copy a list of N strings page by page (fork copy-on-write + refcounts).
        self.images = images if images is not None else FileImages(root, paths)  # the listing's reader
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
                image = self.images.open(index, draft_size=self.image_size)
            return self.transform(image), label, index, STATUS_OK
        except CachedFailure as failure:
            return self.blank(), label, index, failure.status
        except Exception as exc:  # any decode failure is a status, never a crash
            return self.blank(), label, index, describe_failure(exc)

    def blank(self) -> torch.Tensor:
        """[3, S, S] zeros standing in for an unusable file (a batch must have one dtype)."""
        return torch.zeros(3, self.image_size, self.image_size, dtype=getattr(self, "blank_dtype", torch.float32))


class ReadingDataset(ImageDataset):
    """The one decode of a row: its bytes are read once, hashed (sha256, for exact duplicates), decoded, cut to
    a thumbnail (for near-duplicate confirmation) and to the model's square, so that no later stage opens the
    file again. Items are ``(image uint8 [3, S, S], label, index, status, thumbnail uint8 [T, T], digest
    uint8 [32], hashed)``: ``hashed`` is False when the bytes could not be read (the digest is then zeros), the
    thumbnail zeros when the image could not be decoded (``status`` says why). ``transform`` must give uint8."""

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int, str, torch.Tensor, torch.Tensor, bool]:  # type: ignore[override]
        index = int(self.indices[item])
        label = int(self.label_indices[index])
        thumb = torch.zeros(THUMB, THUMB, dtype=torch.uint8)
        digest, hashed = torch.zeros(32, dtype=torch.uint8), False
        try:
            data = self.images.read_bytes(index)
            digest, hashed = torch.frombuffer(bytearray(hashlib.sha256(data).digest()), dtype=torch.uint8), True
            file = getattr(self.images, "file", None)  # image files: statuses name the file, as load_image's do
            name = (lambda: str(file(index))) if file else None
            image = decode_bytes(data, draft_size=max(self.image_size, 2 * THUMB), name=name)
            thumb = torch.from_numpy(gray_thumbnail(image).copy())
            return self.transform(image), label, index, STATUS_OK, thumb, digest, hashed
        except Exception as exc:  # any read or decode failure is a status, never a crash
            return self.blank(), label, index, describe_failure(exc), thumb, digest, hashed
