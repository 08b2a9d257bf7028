"""One eval-mode pass without augmentation over every sample of a listing, sharded over torchrun ranks.

Phase 1 scores with it (image features, the learned prompts' scores); batches, loaders and mixed precision
come from :mod:`deft_clean.run.engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..inputs.cache import CachedImages
from ..inputs.data import STATUS_OK, ImageDataset, Listing
from ..inputs.transforms import eval_transform
from ..run.distributed import Dist
from ..run.engine import Progressish, amp_for, make_loader, usable_mask, usable_on_device
from ..run.runstate import StopOnSignal

BatchFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@torch.no_grad()
def eval_pass(
    batch_fn: BatchFn,
    columns: dict[str, tuple[int, ...]],
    listing: Listing,
    *,
    batch_size: int,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    num_workers: int,
    progress: Progressish | None = None,
    stop: StopOnSignal | None = None,
    ranks: Dist = Dist(),
    cache: CachedImages | None = None,
    task: str | None = None,
    device_transforms: bool = False,
    rows: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """One eval-mode pass without augmentation over every sample of ``listing``.

    ``batch_fn(images [B, 3, H, W], labels [B])`` returns per-sample tensors, one per name of ``columns``
    (``columns[name]`` is the shape after the batch dimension). Returns float32 arrays ``[N, *shape]``
    (NaN for unusable files) and the failures (sample index -> status). ``stop`` is checked after each
    batch; with several ``ranks`` each handles samples ``rank::world`` and every rank gets the merged arrays.
    ``task`` names the pass on the progress display (default: the scoring pass). With ``device_transforms``
    batches travel as uint8 and are normalised on ``device`` (:mod:`deft_clean.accel`). ``rows``: only these.
    """
    from ..inputs.accel import DeviceTransform, uint8_transform

    on_device = DeviceTransform(mean, std, train=False)
    visited = np.arange(len(listing)) if rows is None else np.asarray(rows, dtype=np.int64)
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        uint8_transform(image_size) if device_transforms else eval_transform(image_size, mean, std),
        image_size=image_size,
        blank_dtype=torch.uint8 if device_transforms else torch.float32,
        indices=visited[ranks.rank :: ranks.world] if ranks.active else visited,
        cache=cache,
        images=listing.images,
    )
    loader = make_loader(
        dataset, batch_size=batch_size, sampler=None, generator=None, num_workers=num_workers, device=device
    )
    n = len(listing)
    arrays = {name: np.full((n, *shape), np.nan, dtype=np.float32) for name, shape in columns.items()}
    failures: dict[int, str] = {}  # only failures are kept: memory stays O(N) numbers, not N objects
    autocast = amp_for(device).autocast
    if progress is not None:
        if task is None:
            progress.start_scoring(len(visited))
        else:
            progress.start_task(task, len(visited))
    for images, labels, indices, batch_status in loader:
        idx = indices.numpy()
        for i, s in zip(idx, batch_status, strict=True):
            if s != STATUS_OK:
                failures[int(i)] = s
        usable = usable_mask(batch_status)
        if usable.any():
            images, lab = usable_on_device(images, labels, usable, device)
            images = on_device(images)  # uint8 -> normalised float; a float batch passes unchanged
            with autocast():
                values = batch_fn(images, lab)
            keep = idx[usable.numpy()]
            for name, value in values.items():
                arrays[name][keep] = value.float().cpu().numpy()
        if progress is not None:
            progress.advance(len(batch_status))
        if stop is not None and not ranks.active:  # with ranks, all check together below
            stop.check()
    if ranks.active:
        _merge_ranks(arrays, failures, dataset.indices, ranks)
        if stop is not None and ranks.any(stop.requested, device):
            stop.follow()
            stop.check()
    return arrays, failures


def _merge_ranks(arrays: dict[str, np.ndarray], failures: dict[int, str], mine: Any, ranks: Dist) -> None:
    """Fill ``arrays`` and ``failures`` with every rank's part, in place."""
    parts = ranks.all_gather((mine, {name: a[mine] for name, a in arrays.items()}, failures))
    for index, part, part_failures in parts:  # type: ignore[misc]
        for name, values in part.items():
            arrays[name][index] = values
        failures.update(part_failures)
