"""Phase 1's passes over every sample and what they find.

:func:`eval_pass` is one eval-mode pass without augmentation over a listing, sharded over torchrun ranks
(batches, loaders and mixed precision come from :mod:`deft_clean.run.engine`). On it run the frozen feature
pass (:func:`image_features`, the zero-shot evidence) and the learned prompts' scoring pass
(:func:`score_samples`, :class:`Scores`). :class:`Evidence` holds what the passes found for selection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs.dataset import ImageDataset, ReadingDataset
from ..inputs.image_cache import MemoryImages
from ..inputs.listing import Listing
from ..inputs.pixel_similarity import THUMB
from ..inputs.transforms import eval_transform
from ..models.clip import encode_image
from ..models.deft import DeftModel
from ..models.towers import embed_width
from ..run.distributed import Dist
from ..run.engine import amp_for, make_loader, usable_mask, usable_on_device
from ..run.errors import STATUS_OK
from ..run.options import PassOptions


@dataclass
class Scores:
    """Per-sample output of the scoring pass; arrays are aligned with the listing."""

    p_clean: np.ndarray  # float32 [N], NaN for unusable files
    sim_pos: np.ndarray  # float32 [N] cosine(image, positive prompt of the given label)
    sim_neg: np.ndarray  # float32 [N] cosine(image, negative prompt of the given label)
    predicted_index: np.ndarray  # int64 [N], -1 for unusable files
    p_predicted: np.ndarray  # float32 [N] softmax over positive prompts at the prediction
    p_label: np.ndarray  # float32 [N] softmax over positive prompts at the given label
    failures: dict[int, str]  # sample index -> why its file could not be used; usable files are absent
    probs: np.ndarray | None = None  # float32 [N, K] softmax over the positive prompts (the text posterior)


@dataclass
class Kept:
    """What the reading pass keeps of every row besides the model's outputs, so that no later stage opens its
    file again: the thumbnail and content hash health needs, and (when they fit) the decoded pixels the
    training and scoring passes read back."""

    thumbnails: np.ndarray  # uint8 [N, THUMB, THUMB] (pixel_similarity.gray_thumbnail; blurred where compared)
    made: np.ndarray  # bool [N] rows that have a thumbnail (decoded)
    hashes: list[str | None]  # sha256 of each row's bytes; None where they could not be read
    memory: MemoryImages | None  # the decoded pixels, or None where they do not fit MEMORY_PIXELS

    @classmethod
    def for_listing(cls, n: int, image_size: int, *, pixels: bool = True) -> Kept:
        """Room for ``n`` rows; ``pixels=False`` (a run with no later pass over the images, ``--quick``): no
        decoded pixels are kept."""
        memory = MemoryImages(n, image_size) if pixels and MemoryImages.fits(n, image_size) else None
        return cls(np.zeros((n, THUMB, THUMB), np.uint8), np.zeros(n, bool), [None] * n, memory)

    def add(self, indices: np.ndarray, images: torch.Tensor, statuses: list[str], extra: list[Any]) -> None:
        thumbs, digests, hashed = extra  # [B, T, T] uint8, [B, 32] uint8, [B] bool
        ok = np.array([s == STATUS_OK for s in statuses], dtype=bool)
        self.thumbnails[indices[ok]] = thumbs.numpy()[ok]
        self.made[indices[ok]] = True
        for index, digest, has in zip(indices.tolist(), digests.numpy(), hashed.tolist(), strict=True):
            self.hashes[index] = digest.tobytes().hex() if has else None
        if self.memory is not None:
            self.memory.put(indices, images, list(statuses))


def reading_wanted(passes: PassOptions) -> bool:
    """The frozen pass reads each row once for every later stage (:class:`Kept`), except with a decoded-image
    cache (nothing is decoded then; health decodes its candidates) or torchrun ranks (health runs on one)."""
    return passes.cache is None and not (passes.ranks is not None and passes.ranks.active)


def image_features(
    clip: nn.Module,
    listing: Listing,
    passes: PassOptions,
    *,
    clock: StageClock | None = None,
    keep: Kept | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Frozen, L2-normalised image features of every sample: ([N, E] float32, NaN rows for unusable files;
    failures). With ``keep``, the pass is the run's one reading of the images: it fills ``keep``."""
    clip.eval()
    width = embed_width(clip, passes.image_size)  # E

    def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": encode_image(clip, images)}

    columns = {"features": (width,)}
    arrays, failures = eval_pass(batch_fn, columns, listing, passes, task="image features", clock=clock, kept=keep)
    return arrays["features"], failures


def score_samples(
    model: DeftModel, listing: Listing, passes: PassOptions, *, clock: StageClock | None = None
) -> Scores:
    """Eval-mode pass without augmentation over every sample: p_clean, similarities, prediction."""
    model.eval()
    autocast = amp_for(passes.device).autocast
    scale = float(model.scale())
    with torch.no_grad(), autocast():
        text = model.text_features()
    positive_text, negative_text = text.positive.float(), text.negative.float()

    def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = model.image_features(images).float()  # [B, E]
        cos_pos = features @ positive_text.t()  # [B, K]
        cos_neg = features @ negative_text.t()  # [B, K]
        rows = torch.arange(cos_pos.shape[0], device=cos_pos.device)
        probs = (scale * cos_pos).softmax(dim=1)
        top_p, top_i = probs.max(dim=1)
        return {
            "sim_pos": cos_pos[rows, labels],
            "sim_neg": cos_neg[rows, labels],
            "predicted": top_i,
            "p_predicted": top_p,
            "p_label": probs[rows, labels],
            "probs": probs,
        }

    names = ("sim_pos", "sim_neg", "predicted", "p_predicted", "p_label")
    columns: dict[str, tuple[int, ...]] = {name: () for name in names}
    columns["probs"] = (positive_text.shape[0],)
    arrays, failures = eval_pass(batch_fn, columns, listing, passes, clock=clock)
    sim_pos, sim_neg = arrays["sim_pos"], arrays["sim_neg"]
    predicted = np.where(np.isnan(arrays["predicted"]), -1, arrays["predicted"]).astype(np.int64)
    p_clean = 1.0 / (1.0 + np.exp(-scale * (sim_pos.astype(np.float64) - sim_neg)))
    return Scores(
        p_clean=p_clean.astype(np.float32),
        sim_pos=sim_pos,
        sim_neg=sim_neg,
        predicted_index=predicted,
        p_predicted=arrays["p_predicted"],
        p_label=arrays["p_label"],
        failures=failures,
        probs=arrays["probs"],
    )


BatchFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
STAGES = ("decode", "forward", "training", "selection", "health")  # the metadata's "timings" keys, in run order


class StageClock:
    """Wall seconds a run spends per stage (:data:`STAGES`), summed over its passes: the metadata's "timings".

    ``decode`` is the time a pass waits for its next batch (reading, decoding and transforming the images; with
    loader workers, only what they did not hide), ``forward`` the model's time on the batches; ``training``
    includes the training passes' own decoding."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def table(self) -> dict[str, float]:
        """Seconds per stage, every stage of :data:`STAGES` present (0.0 where it did not run), rounded to ms."""
        stages = (*STAGES, *sorted(set(self.seconds) - set(STAGES)))
        return {stage: round(self.seconds.get(stage, 0.0), 3) for stage in stages}


def _start(progress: Any, task: str | None, n: int) -> None:
    """Show a pass over ``n`` rows on the progress display: the scoring pass, or ``task``."""
    if progress is not None:
        if task is None:
            progress.start_scoring(n)
        else:
            progress.start_task(task, n)


@torch.no_grad()
def eval_pass(
    batch_fn: BatchFn,
    columns: dict[str, tuple[int, ...]],
    listing: Listing,
    passes: PassOptions,
    *,
    task: str | None = None,
    rows: np.ndarray | None = None,
    clock: StageClock | None = None,
    kept: Kept | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """One eval-mode pass without augmentation over every sample of ``listing``.

    ``batch_fn(images [B, 3, H, W], labels [B])`` returns per-sample tensors, one per name of ``columns``
    (``columns[name]`` is the shape after the batch dimension). Returns float32 arrays ``[N, *shape]``
    (NaN for unusable files) and the failures (sample index -> status). ``passes.stop`` is checked after each
    batch; with several ``passes.ranks`` each handles samples ``rank::world`` and every rank gets the merged
    arrays. ``task`` names the pass on the progress display (default: the scoring pass). With
    ``passes.device_transforms`` batches travel as uint8 and are normalised on the device
    (:mod:`deft_clean.inputs.device_transforms`). ``rows``: only these. ``clock`` gets the pass's decode and
    forward seconds. ``kept``: read each row through :class:`deft_clean.inputs.dataset.ReadingDataset` (bytes
    hashed, thumbnail, uint8 square) and fill ``kept`` (one process only).
    """
    from ..inputs.device_transforms import DeviceTransform, uint8_transform

    image_size, mean, std, device = passes.image_size, passes.mean, passes.std, passes.device
    progress, stop, ranks = passes.progress, passes.stop, passes.ranks or Dist()
    device_transforms = passes.device_transforms

    on_device = DeviceTransform(mean, std, train=False)
    visited = np.arange(len(listing)) if rows is None else np.asarray(rows, dtype=np.int64)
    uint8 = device_transforms or kept is not None  # the reading pass keeps uint8 pixels, normalised below
    dataset = (ReadingDataset if kept is not None else ImageDataset)(
        listing.root,
        listing.paths,
        listing.label_indices,
        uint8_transform(image_size) if uint8 else eval_transform(image_size, mean, std),
        image_size=image_size,
        blank_dtype=torch.uint8 if uint8 else torch.float32,
        indices=visited[ranks.rank :: ranks.world] if ranks.active else visited,
        cache=passes.cache,
        images=listing.images,
    )
    loader = make_loader(
        dataset,
        batch_size=passes.batch_size,
        sampler=None,
        generator=None,
        num_workers=passes.num_workers,
        device=device,
    )
    n = len(listing)
    arrays = {name: np.full((n, *shape), np.nan, dtype=np.float32) for name, shape in columns.items()}
    failures: dict[int, str] = {}  # only failures are kept: memory stays O(N) numbers, not N objects
    autocast = amp_for(device).autocast
    _start(progress, task, len(visited))
    clock = clock if clock is not None else StageClock()
    batches, waited = iter(loader), time.perf_counter()
    for images, labels, indices, batch_status, *extra in batches:
        computed = time.perf_counter()
        clock.add("decode", computed - waited)
        idx = indices.numpy()
        if kept is not None:
            kept.add(idx, images, batch_status, extra)
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
        waited = time.perf_counter()
        clock.add("forward", waited - computed)
        if progress is not None:
            progress.advance(len(batch_status))
        if stop is not None and not ranks.active:  # with ranks, all check together below
            stop.check()
    if ranks.active:
        _merge_ranks(arrays, failures, dataset.indices, ranks)
        if stop is not None:
            stop.check_ranks(ranks, device)
    return arrays, failures


def _merge_ranks(arrays: dict[str, np.ndarray], failures: dict[int, str], mine: Any, ranks: Dist) -> None:
    """Fill ``arrays`` and ``failures`` with every rank's part, in place."""
    parts = ranks.all_gather((mine, {name: a[mine] for name, a in arrays.items()}, failures))
    for index, part, part_failures in parts:  # type: ignore[misc]
        for name, values in part.items():
            arrays[name][index] = values
        failures.update(part_failures)


@dataclass
class Evidence:
    """What the passes over the images found, aligned with the listing."""

    features: np.ndarray  # float32 [N, E] frozen image features (NaN rows: unusable files)
    zero_shot: np.ndarray  # float32 [N, K] zero-shot posterior ("a photo of a {class}.")
    prompts: np.ndarray  # float32 [K, E] the zero-shot prompts' text features
    failures: dict[int, str]  # sample index -> why its file could not be used
    kept: Kept | None = None  # thumbnails, hashes and pixels of the run's one reading pass (None: not read so)
    scores: Scores | None = None  # the learned prompts' scores; None in quick mode or after a fallback
    history: list = field(default_factory=list)  # prompt_training.EpochStats per epoch
    text_source: str = "zero-shot"  # "learned prompts" or "zero-shot" (quick mode, or the fallback)
    warnings: list[str] = field(default_factory=list)
    text_test: Any = None  # evidence_check.ViewAgreement of zero-shot vs the labels (opaque_names.text_view_test)
    text_informative: bool = True  # the zero-shot prompts know the classes (opaque_names.text_informative)
    image_seed: np.ndarray | None = None  # bool [N] the image-only seed, made once where the text is uninformative
    image_probs: np.ndarray | None = None  # float32 [N, K] cross-fitted image-probe probabilities, made on first use
    # what became of the learned prompts (the metadata's "prompts"): outcome "learned", "fallback" or "quick",
    # reason ("" when learned), epochs trained, adaptation (DeftModel.adaptation, "none" for --quick)
    prompt_run: dict[str, Any] = field(default_factory=lambda: {"outcome": "quick", "reason": "", "epochs": 0})
    clock: StageClock = field(default_factory=StageClock)  # seconds per stage (the metadata's "timings")

    @property
    def usable(self) -> np.ndarray:
        usable = np.ones(len(self.features), dtype=bool)
        usable[list(self.failures)] = False
        return usable
