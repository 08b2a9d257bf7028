"""Phase 1: train dual prompts + visual prompts on the noisy labels, then score every sample.

Loss (after DeFT): ``L_sim`` is cross-entropy over the positive prompts (all usable samples during
warm-up, the selected clean ones after); ``L_dp`` asks each sample's given-label prompt pair to say
"yes" and a random other class's pair to say "no", with unselected samples' targets replaced by the
positive-prompt prediction after warm-up. As in the reference, ``L_dp`` trains only the negative
context (positive logits and image features are detached on that path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .backbone import LoadedClip, TextEncoder, encode_image, freeze, logit_scale
from .cache import CachedImages
from .data import STATUS_OK, ImageDataset, Listing
from .distributed import Dist
from .prompts import DualPromptLearner, PromptFeatures
from .runstate import StopOnSignal, optimizer_state, restore_optimizer_state
from .transforms import eval_transform, train_transform
from .vpt import add_visual_prompts

P_MIN = 1e-5  # probabilities are clamped before log, as in the reference


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says when."""


@dataclass
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean total loss over the epoch
    clean_fraction: float  # fraction of usable training samples selected as clean
    samples_per_second: float


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

    @property
    def usable(self) -> np.ndarray:
        """bool [N]: the file could be read."""
        usable = np.ones(len(self.p_clean), dtype=bool)
        usable[list(self.failures)] = False
        return usable

    def status(self) -> list[str]:
        """Per-sample status strings ("ok" or the failure), built only when the output needs them."""
        status = [STATUS_OK] * len(self.p_clean)
        for index, reason in self.failures.items():
            status[index] = reason
        return status


class DeftModel(nn.Module):
    """CLIP with dual text prompts and visual prompt tokens; only the prompts train."""

    def __init__(
        self,
        loaded: LoadedClip,
        prompt_names: list[str],
        *,
        n_ctx: int,
        ctx_init: str | None,
        class_specific: bool,
        vpt_tokens: int,
        vpt_depth: int | None,
    ) -> None:
        super().__init__()
        self.clip = loaded.model
        freeze(self.clip)
        self.prompts = DualPromptLearner(
            TextEncoder(self.clip),
            loaded.tokenizer,
            prompt_names,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            class_specific=class_specific,
        )
        # VPT parameters live inside the wrapped vision blocks; keep a list for the optimiser.
        self.visual_prompts = add_visual_prompts(self.clip, vpt_tokens, vpt_depth)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompts.ctx_pos, self.prompts.ctx_neg, *self.visual_prompts]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors only (contexts and visual prompts), detached copies on CPU."""
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.trainable_parameters()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors saved by :meth:`trainable_state` back into the parameters."""
        parameters = dict(self.named_parameters())
        for name, value in state.items():
            parameters[name].copy_(value)

    def text_features(self) -> PromptFeatures:
        return self.prompts()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_image(self.clip, images)  # [B, E]

    def scale(self) -> torch.Tensor:
        return logit_scale(self.clip)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a generator for data order."""
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def rank_streams(generator: torch.Generator, ranks: Dist, position: int = 0) -> torch.Generator:
    """Per-rank random streams under torchrun; with one process, ``generator`` itself and nothing changes.

    Every rank must draw the same epoch orders from ``generator``, but augmentation and complementary labels
    (torch's global RNG) and DataLoader worker seeds should differ between ranks, or each rank would crop
    its samples with the same random numbers. This reseeds the global RNG from (seed, rank, ``position`` =
    steps done before a resume) and returns a generator for the DataLoader's worker seeds. Call it after
    the trainable parameters were broadcast from rank 0.
    """
    if not ranks.active:
        return generator
    seed = (generator.initial_seed() + 7919 * (ranks.rank + 1) + 104729 * position) % 2**63
    torch.manual_seed(seed)
    own = torch.Generator()
    own.manual_seed(seed)
    return own


def autocast_for(device: torch.device) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """The autocast context to use and whether fp16 needs a grad scaler: bf16/fp16 AMP on CUDA, fp32 on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext, False
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16


def resolve_workers(num_workers: int | None) -> int:
    return min(8, os.cpu_count() or 1) if num_workers is None else num_workers


REPORT_EVERY = 10  # steps between reads of the running loss (each read waits for the GPU)


class EpochSums:
    """An epoch's running totals (loss x samples, clean count, samples), accumulated on the device.

    Reading them (:meth:`values`) waits for the GPU; training loops do so every ``REPORT_EVERY`` steps for
    the progress display, for checkpoints and at the epoch's end, so that the CPU queues the next step
    while the GPU still runs this one (a read every step cost ~15% of a ViT-B/16 epoch on an H100).
    """

    def __init__(self, device: torch.device, values: dict[str, float] | None = None) -> None:
        values = values or {}
        self.loss = torch.tensor(float(values.get("loss", 0.0)), dtype=torch.float64, device=device)
        self.clean = torch.tensor(int(values.get("clean", 0)), dtype=torch.int64, device=device)
        self.seen = int(values.get("seen", 0))

    def add(self, loss: torch.Tensor, n: int, clean: torch.Tensor | None = None) -> None:
        """Add a batch: its mean ``loss`` over ``n`` samples and (detect) its boolean ``clean`` mask."""
        self.loss += loss.detach().double() * n
        if clean is not None:
            self.clean += clean.sum()
        self.seen += n

    def values(self) -> dict[str, float]:
        return {"loss": float(self.loss), "clean": int(self.clean), "seen": self.seen}

    def means(self) -> dict[str, float]:
        """Running mean loss and clean fraction, for the progress display."""
        seen = max(self.seen, 1)
        return {"loss": float(self.loss) / seen, "clean": int(self.clean) / seen}


def report_now(step: int, steps: int) -> bool:
    """Whether a loop reads its running sums (and, with several ranks, polls for signals) at ``step``."""
    return step % REPORT_EVERY == 0 or step >= steps


class EpochOrder(Sampler[int]):
    """The dataset positions one epoch visits, in order; set ``order`` before each epoch.

    One DataLoader over it serves every epoch, so its worker processes persist between epochs instead of
    being forked (and re-importing, re-opening memory maps) each time.
    """

    def __init__(self) -> None:
        self.order: Sequence[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    sampler: Sequence[int] | Sampler[int] | None,
    generator: torch.Generator | None,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """A loader over ``sampler`` (positions in the dataset, in order; None = all, in order).

    Workers persist across iterations (see :class:`EpochOrder`); batches go to pinned memory on CUDA so
    that the copies to the device are asynchronous.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        drop_last=False,
    )


def usable_on_device(
    images: torch.Tensor, labels: torch.Tensor, usable: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a batch to the device, then drop unusable samples there.

    Indexing on the host first would copy the pinned batch into pageable memory and make the transfer
    synchronous; on an H100 that cost ~40% of a ViT-B/16 epoch.
    """
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if bool(usable.all()):
        return images, labels
    keep = usable.to(device, non_blocking=True)
    return images[keep], labels[keep]


def select_clean(
    p_yes_at_label: torch.Tensor, positive_logits: torch.Tensor, labels: torch.Tensor, rule: str
) -> torch.Tensor:
    """Boolean [B]: p_clean > 0.5, and with ``threshold+argmax`` also top-1 positive prediction == label."""
    clean = p_yes_at_label > 0.5
    if rule == "threshold+argmax":
        clean = clean & (positive_logits.argmax(dim=1) == labels)
    return clean


def deft_loss(
    image_features: torch.Tensor,
    text: PromptFeatures,
    scale: torch.Tensor,
    labels: torch.Tensor,
    *,
    warmup: bool,
    clean_rule: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeFT's L_sim + L_dp for one batch of usable samples.

    Args:
        image_features: [B, E] normalised, with gradient to the visual prompts.
        text: positive/negative prompt features, [K, E] each.
        labels: [B] given labels.
    Returns:
        (loss scalar, clean mask [B]); the loss is finite even when no sample is selected.
    """
    n_classes = text.positive.shape[0]
    positive = scale * image_features @ text.positive.t()  # [B, K]; grads: VPT, positive context
    negative = scale * image_features.detach() @ text.negative.t()  # [B, K]; grads: negative context
    p_yes = torch.sigmoid(positive.detach() - negative)  # [B, K] = softmax([pos, neg])[0] per class
    rows = torch.arange(labels.shape[0], device=labels.device)

    if warmup:
        clean = torch.ones_like(labels, dtype=torch.bool)
        target = labels
    else:
        clean = select_clean(p_yes.detach()[rows, labels], positive.detach(), labels, clean_rule)
        target = torch.where(clean, labels, positive.detach().argmax(dim=1))

    # complementary label: any class but the target, uniformly
    complementary = (target + torch.randint(1, n_classes, target.shape, device=target.device)) % n_classes
    loss_dp = -(
        p_yes[rows, target].clamp(P_MIN, 1.0).log() + (1 - p_yes[rows, complementary]).clamp(P_MIN, 1.0).log()
    ).mean()

    ce = F.cross_entropy(positive, labels, reduction="none")  # [B]
    loss_sim = (ce * clean).sum() / clean.sum().clamp(min=1)
    return loss_sim + loss_dp, clean


@dataclass
class TrainControl:
    """How :func:`train_prompts` checkpoints, resumes and stops; every field is optional."""

    save: Callable[[dict[str, Any]], None] | None = None  # persists a state dict (see train_prompts)
    resume: dict[str, Any] | None = None  # a state dict given to ``save`` by an earlier run
    every_steps: int = 0  # also save every this many steps inside an epoch; 0 = at epoch ends only
    stop: StopOnSignal | None = None  # checked after each step: save, then raise Interrupted
    ranks: Dist = Dist()  # torchrun processes: epoch order sharded, gradients averaged


def epoch_order(n: int, generator: torch.Generator) -> list[int]:
    """This epoch's sample order, drawn from ``generator`` (so that a resume can redraw it exactly)."""
    return torch.randperm(n, generator=generator).tolist()


def train_prompts(
    model: DeftModel,
    listing: Listing,
    *,
    epochs: int,
    warmup_epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    clean_rule: str,
    hflip: bool,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    generator: torch.Generator,
    num_workers: int,
    progress: Progressish | None = None,
    grad_clip: float | None = None,
    control: TrainControl | None = None,
    cache: CachedImages | None = None,
) -> list[EpochStats]:
    """Train the prompts in place; return per-epoch statistics.

    With ``control``, the training state (prompts, optimiser, scheduler, scaler, RNG states, position in
    the epoch) is handed to ``control.save`` at the end of every epoch, every ``control.every_steps``
    steps and when ``control.stop`` was signalled; ``control.resume`` continues from such a state and,
    on CPU with ``num_workers=0``, ends with exactly the prompts of an uninterrupted run.
    """
    control = control or TrainControl()
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        train_transform(image_size, mean, std, hflip=hflip),
        image_size=image_size,
        cache=cache,
        images=listing.images,
    )
    ranks = control.ranks
    steps_per_epoch = max(1, math.ceil(math.ceil(len(dataset) / ranks.world) / batch_size))
    parameters = model.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = max(1, epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    autocast, needs_scaler = autocast_for(device)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)
    scale = model.scale().to(device)

    history: list[EpochStats] = []
    start_epoch, skip_steps, sums = 0, 0, EpochSums(device)
    if control.resume is not None:
        state = control.resume
        model.load_trainable_state(state["trainable"])
        restore_optimizer_state(state, optimizer, scheduler, scaler, generator, device)
        history = [EpochStats(**h) for h in json.loads(state["history"])]
        start_epoch, skip_steps = int(state["epoch"]), int(state["step"])
        sums = EpochSums(device, json.loads(state["sums"]))
    ranks.broadcast_parameters(parameters)
    visiting = EpochOrder()
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        sampler=visiting,
        generator=rank_streams(generator, ranks, start_epoch * steps_per_epoch + skip_steps),
        num_workers=num_workers,
        device=device,
    )

    def snapshot(epoch: int, step: int, epoch_start: torch.Tensor) -> dict[str, Any]:
        """Everything needed to continue after ``step`` batches of ``epoch`` (0-based)."""
        return {
            "trainable": model.trainable_state(),
            **optimizer_state(optimizer, scheduler, scaler, epoch_start, device),
            "epoch": epoch,
            "step": step,
            "history": json.dumps([dataclasses.asdict(h) for h in history]),
            "sums": json.dumps(sums.values()),
        }

    for epoch in range(start_epoch, epochs):
        warmup = epoch < warmup_epochs
        model.train()
        model.clip.eval()  # frozen backbone: keep dropout / norm statistics in inference mode
        epoch_start = generator.get_state()
        order = ranks.shard(epoch_order(len(dataset), generator))  # same order on every rank, then sharded
        # A resumed epoch skips the batches already done without loading them; without workers the
        # loader draws its seed from the generator right after the order, as in the uninterrupted run.
        visiting.order = order[skip_steps * batch_size :]
        step, started = skip_steps, time.perf_counter()
        if skip_steps == 0:
            sums = EpochSums(device)
        if progress is not None:
            progress.start_epoch(epoch + 1, epochs, len(dataset))
            if skip_steps:
                progress.advance(min(skip_steps * batch_size, len(dataset)))
        for images, labels, _, status in loader:
            step += 1
            usable = torch.tensor([s == STATUS_OK for s in status])
            if not usable.any():
                optimizer.zero_grad(set_to_none=True)  # other ranks may have data: average zeros in
            else:
                images, labels = usable_on_device(images, labels, usable, device)
                with autocast():
                    text = model.text_features()
                    features = model.image_features(images)
                    loss, clean = deft_loss(
                        features.float(),
                        PromptFeatures(text.positive.float(), text.negative.float()),
                        scale,
                        labels,
                        warmup=warmup,
                        clean_rule=clean_rule,
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                sums.add(loss, int(labels.shape[0]), clean)
            if usable.any() or ranks.active:
                ranks.all_reduce_gradients(parameters)  # before unscaling: every rank sees the same inf/nan
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            report = report_now(step, steps_per_epoch)
            if report and not math.isfinite(sums.values()["loss"]):
                raise TrainingDiverged(f"the prompt-training loss became non-finite in epoch {epoch + 1}, step {step}")
            if progress is not None:
                progress.advance(len(status), **(sums.means() if report else {}))
            signalled = control.stop is not None and control.stop.requested
            stopping = ranks.any(signalled, device) if ranks.active and report else signalled
            if stopping and control.stop is not None:
                control.stop.follow()  # a signal that reached another rank stops this one too
            periodic = control.every_steps > 0 and step % control.every_steps == 0 and step < steps_per_epoch
            if control.save is not None and (stopping or periodic):
                control.save(snapshot(epoch, step, epoch_start))
            if control.stop is not None:
                control.stop.check()
        skip_steps = 0
        elapsed = max(time.perf_counter() - started, 1e-9)
        totals = sums.values()
        loss_sum, clean_sum, seen = ranks.sum([totals["loss"], totals["clean"], totals["seen"]], device)
        seen = max(seen, 1)
        history.append(EpochStats(epoch + 1, loss_sum / seen, clean_sum / seen, len(dataset) / elapsed))
        if control.save is not None:
            control.save(snapshot(epoch + 1, 0, generator.get_state()))
        if control.stop is not None:
            control.stop.check()
    return history


BatchFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def image_features(clip: nn.Module, listing: Listing, **loader: Any) -> tuple[np.ndarray, dict[int, str]]:
    """Frozen, L2-normalised image features of every sample: ([N, E] float32, NaN rows for unusable files;
    failures). ``loader`` takes :func:`eval_pass`'s keyword options."""
    clip.eval()
    width = int(getattr(clip.visual, "output_dim", 0) or clip.embed_dim)  # E

    def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": encode_image(clip, images)}

    arrays, failures = eval_pass(batch_fn, {"features": (width,)}, listing, task="image features", **loader)
    return arrays["features"], failures


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
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """One eval-mode pass without augmentation over every sample of ``listing``.

    ``batch_fn(images [B, 3, H, W], labels [B])`` returns per-sample tensors, one per name of ``columns``
    (``columns[name]`` is the shape after the batch dimension). Returns float32 arrays ``[N, *shape]``
    (NaN for unusable files) and the failures (sample index -> status). ``stop`` is checked after each
    batch; with several ``ranks`` each handles samples ``rank::world`` and every rank gets the merged arrays.
    ``task`` names the pass on the progress display (default: the scoring pass).
    """
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        eval_transform(image_size, mean, std),
        image_size=image_size,
        indices=np.arange(ranks.rank, len(listing), ranks.world) if ranks.active else None,
        cache=cache,
        images=listing.images,
    )
    loader = make_loader(
        dataset, batch_size=batch_size, sampler=None, generator=None, num_workers=num_workers, device=device
    )
    n = len(listing)
    arrays = {name: np.full((n, *shape), np.nan, dtype=np.float32) for name, shape in columns.items()}
    failures: dict[int, str] = {}  # only failures are kept: memory stays O(N) numbers, not N objects
    autocast, _ = autocast_for(device)
    if progress is not None:
        if task is None:
            progress.start_scoring(n)
        else:
            progress.start_task(task, n)
    for images, labels, indices, batch_status in loader:
        idx = indices.numpy()
        for i, s in zip(idx, batch_status, strict=True):
            if s != STATUS_OK:
                failures[int(i)] = s
        usable = torch.tensor([s == STATUS_OK for s in batch_status])
        if usable.any():
            images, lab = usable_on_device(images, labels, usable, device)
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
        mine = dataset.indices
        parts = ranks.all_gather((mine, {name: a[mine] for name, a in arrays.items()}, failures))
        for index, part, part_failures in parts:  # type: ignore[misc]
            for name, values in part.items():
                arrays[name][index] = values
            failures.update(part_failures)
        if stop is not None and ranks.any(stop.requested, device):
            stop.follow()
            stop.check()
    return arrays, failures


def score_samples(model: DeftModel, listing: Listing, **loader: Any) -> Scores:
    """Eval-mode pass without augmentation over every sample: p_clean, similarities, prediction.

    ``loader`` takes :func:`eval_pass`'s keyword options (batch size, image size, device, ranks, ...).
    """
    model.eval()
    autocast, _ = autocast_for(loader["device"])
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
    arrays, failures = eval_pass(batch_fn, columns, listing, **loader)
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


class Progressish:
    """What the training loop reports to; :mod:`deft_clean.progress` renders it with rich."""

    def start_task(self, description: str, total: int) -> None: ...

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None: ...

    def start_scoring(self, total: int) -> None: ...

    def advance(self, n: int, **metrics: float) -> None: ...
