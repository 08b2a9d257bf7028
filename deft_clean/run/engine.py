"""The training engine both phases run on.

A phase (prompt training in :mod:`deft_clean.detecting.prompt_training`, fine-tuning in
:mod:`deft_clean.training.finetune`) gives
:func:`fit` a :class:`Phase`: its model, optimiser, schedule, training dataset, a loss step and the hooks
that draw an epoch's order and record an epoch. The engine owns what both need and must do alike: mixed
precision (chosen once, in :func:`amp_for`), the grad scaler, gradient sync between torchrun ranks
(DistributedDataParallel), batches whose files were all unusable, progress, divergence, periodic and
end-of-epoch checkpoints, resuming a checkpoint exactly, and stopping on SIGINT/SIGTERM. The loaders and
batch helpers here also serve the evaluation passes (:mod:`deft_clean.detecting.passes`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoints import StopOnSignal, optimizer_state, restore_optimizer_state
from .distributed import Dist
from .errors import STATUS_OK, DeftCleanError

REPORT_EVERY = 10  # steps between reads of the running loss (each read waits for the GPU)


class TrainingDiverged(DeftCleanError):
    """The training loss became NaN or infinite; the message says when."""


class Progressish:
    """What the engine reports to; :mod:`deft_clean.run.progress` renders it with rich."""

    def start_task(self, description: str, total: int) -> None: ...

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None: ...

    def start_scoring(self, total: int) -> None: ...

    def advance(self, n: int, **metrics: float) -> None: ...


class Amp(NamedTuple):
    """Mixed precision for one device: the autocast context factory and whether fp16 needs a grad scaler."""

    autocast: Callable[[], contextlib.AbstractContextManager]
    needs_scaler: bool

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.needs_scaler)


def amp_for(device: torch.device) -> Amp:
    """bf16 (or fp16 with a grad scaler, where bf16 is missing) autocast on CUDA; fp32 elsewhere."""
    if device.type != "cuda":
        return Amp(contextlib.nullcontext, False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Amp(lambda: torch.autocast("cuda", dtype=dtype), dtype == torch.float16)


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


def epoch_order(n: int, generator: torch.Generator) -> list[int]:
    """This epoch's sample order, drawn from ``generator`` (so that a resume can redraw it exactly)."""
    return torch.randperm(n, generator=generator).tolist()


def resolve_workers(num_workers: int | None, threads: int | None = None) -> int:
    """DataLoader workers: as given, or what fits the usable cores beside ``threads`` (see run.cores)."""
    from .cores import plan_cpu
    from .options import check_workers

    check_workers(num_workers)

    return plan_cpu(num_workers, threads)[0]


class EpochSums:
    """An epoch's running totals (loss x samples, clean count, samples), accumulated on the device.

    Reading them (:meth:`values`) waits for the GPU; the engine does so every ``REPORT_EVERY`` steps for
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
    """Whether the loop reads its running sums (and, with several ranks, polls for signals) at ``step``."""
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
    dataset: Dataset,
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


def usable_mask(status: Sequence[str]) -> torch.Tensor:
    """bool [B]: which samples of a batch could be read."""
    return torch.tensor([s == STATUS_OK for s in status])


# (model to call, images [B, 3, H, W] on the device, labels [B], epoch 0-based) -> (mean loss, clean [B] or None)
LossStep = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class EpochTotals:
    """One finished epoch, summed over ranks."""

    epoch: int  # 1-based
    loss: float  # mean loss per sample
    clean_fraction: float  # fraction of the samples the loss step called clean (0 when it says nothing)
    seconds: float
    samples: int  # samples the epoch visited (the epoch size)


@dataclass
class Phase:
    """What a training phase gives :func:`fit`; the engine does the rest."""

    name: str  # in messages, e.g. "prompt-training"
    model: nn.Module  # put in train mode each epoch (see ``train_mode``); wrapped in DDP with several ranks
    dataset: Dataset  # an inputs.dataset.ImageDataset: the training samples, with their training transform
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, stepped once per optimiser step
    loss: LossStep  # runs under autocast; the model it gets is the DDP wrapper when ranks are active
    draw_order: Callable[[], Sequence[int]]  # one epoch's positions into ``dataset``, from the run's generator
    state: Callable[[], dict[str, Any]]  # the phase's own part of a checkpoint (weights, history, ...)
    end_epoch: Callable[[EpochTotals], None]  # validation, history; runs on every rank before the checkpoint
    train_mode: Callable[[], None] | None = None  # default: ``model.train()``
    metrics: tuple[str, ...] = ("loss",)  # running means shown on the progress display ("loss", "clean")
    grad_clip: float | None = None  # max gradient norm (unscaled); None = no clipping
    parameters: list[nn.Parameter] | None = None  # the ones clipped; None = every parameter that requires grad
    epoch_size: int | None = None  # positions ``draw_order`` returns per epoch; None = the whole dataset
    finished: Callable[[], bool] | None = None  # checked before each epoch: True ends training early


@dataclass
class Run:
    """How :func:`fit` runs: sizes, devices, ranks, checkpoints and signals."""

    epochs: int
    batch_size: int
    device: torch.device
    generator: torch.Generator  # the run's data-order stream, seeded by the caller
    num_workers: int
    ranks: Dist = field(default_factory=Dist)  # torchrun processes: epoch order sharded, gradients averaged
    progress: Progressish | None = None
    stop: StopOnSignal | None = None  # checked after each step: save, then raise Interrupted
    save: Callable[[dict[str, Any]], None] | None = None  # persists a checkpoint; called on rank 0 only
    every_steps: int = 0  # also save every this many steps inside an epoch; 0 = at epoch ends only
    resume: dict[str, Any] | None = None  # a state given to ``save`` by an earlier run (phase part loaded already)


def steps_per_epoch(n_samples: int, batch_size: int, ranks: Dist) -> int:
    """Optimiser steps in one epoch of ``n_samples`` shared by the ranks (at least one)."""
    return max(1, math.ceil(math.ceil(n_samples / ranks.world) / batch_size))


class _Loop:
    """The state of one :func:`fit` call; its methods are the loop's parts."""

    def __init__(self, phase: Phase, run: Run) -> None:
        self.phase, self.run = phase, run
        self.amp = amp_for(run.device)
        self.scaler = self.amp.scaler()
        self.epoch_size = phase.epoch_size or len(phase.dataset)
        self.steps = steps_per_epoch(self.epoch_size, run.batch_size, run.ranks)
        self.parameters = phase.parameters or [p for p in phase.model.parameters() if p.requires_grad]
        self.start_epoch, self.skip_steps = 0, 0
        self.sums = EpochSums(run.device)
        if run.resume is not None:
            state = run.resume
            restore_optimizer_state(state, phase.optimizer, phase.scheduler, self.scaler, run.generator, run.device)
            self.start_epoch, self.skip_steps = int(state["epoch"]), int(state["step"])
            self.sums = EpochSums(run.device, json.loads(state["sums"]))
        # DDP averages the gradients during backward (bucketed, overlapped); it also starts every rank from
        # rank 0's weights. The wrapper is only used for the forward pass.
        self.forward: nn.Module = phase.model
        if run.ranks.active:
            ids = [run.device] if run.device.type == "cuda" else None
            self.forward = DistributedDataParallel(phase.model, device_ids=ids)
        self.visiting = EpochOrder()
        position = self.start_epoch * self.steps + self.skip_steps
        self.loader = make_loader(
            phase.dataset,
            batch_size=run.batch_size,
            sampler=self.visiting,
            generator=rank_streams(run.generator, run.ranks, position),
            num_workers=run.num_workers,
            device=run.device,
        )

    def snapshot(self, epoch: int, step: int, epoch_start: torch.Tensor) -> dict[str, Any]:
        """Everything needed to continue after ``step`` batches of ``epoch`` (0-based); step 0 = not begun."""
        phase, run = self.phase, self.run
        return {
            **phase.state(),
            **optimizer_state(phase.optimizer, phase.scheduler, self.scaler, epoch_start, run.device),
            "epoch": epoch,
            "step": step,
            "sums": json.dumps(self.sums.values()),
        }

    def step(self, images: torch.Tensor, labels: torch.Tensor, status: Sequence[str], epoch: int) -> None:
        """One optimiser step on a batch; a batch without usable files is skipped (with ranks, it joins
        the gradient average with zeros, as DDP needs every rank to run backward every step)."""
        phase, run = self.phase, self.run
        usable = usable_mask(status)
        empty = not usable.any()
        if empty and not run.ranks.active:
            return
        images, labels = usable_on_device(images, labels, torch.ones_like(usable) if empty else usable, run.device)
        with self.amp.autocast():
            loss, clean = phase.loss(self.forward, images, labels, epoch)
        n = int(labels.shape[0])
        if empty:
            loss, n, clean = loss * 0.0, 0, None
        phase.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if phase.grad_clip:
            self.scaler.unscale_(phase.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, phase.grad_clip)
        self.scaler.step(phase.optimizer)
        self.scaler.update()
        phase.scheduler.step()
        self.sums.add(loss, n, clean)

    def after_step(self, epoch: int, step: int, n: int, epoch_start: torch.Tensor) -> None:
        """Progress, divergence, periodic checkpoints and signals after ``step`` of ``epoch``."""
        run = self.run
        report = report_now(step, self.steps)
        if report and not math.isfinite(self.sums.values()["loss"]):
            raise TrainingDiverged(f"the {self.phase.name} loss became non-finite in epoch {epoch + 1}, step {step}")
        if run.progress is not None:
            means = self.sums.means() if report else {}
            run.progress.advance(n, **{k: v for k, v in means.items() if k in self.phase.metrics})
        stop = run.stop
        signalled = stop is not None and stop.requested
        stopping = run.ranks.any(signalled, run.device) if run.ranks.active and report else signalled
        if stopping and stop is not None:
            stop.follow()  # a signal that reached another rank stops this one too
        periodic = run.every_steps > 0 and step % run.every_steps == 0 and step < self.steps
        if stopping or periodic:
            self.save(self.snapshot(epoch, step, epoch_start))
        if stop is not None:
            stop.check()

    def save(self, state: dict[str, Any]) -> None:
        if self.run.save is not None and self.run.ranks.is_main:
            self.run.save(state)

    def epoch(self, epoch: int) -> None:
        """Train one epoch (the rest of it, when resuming inside it), record it, checkpoint it."""
        phase, run = self.phase, self.run
        (phase.train_mode or phase.model.train)()
        epoch_start = run.generator.get_state()
        order = run.ranks.shard(phase.draw_order())  # the same order on every rank, then this rank's part
        # A resumed epoch skips the batches already done without loading them; without workers the
        # loader draws its seed from the generator right after the order, as in the uninterrupted run.
        self.visiting.order = order[self.skip_steps * run.batch_size :]
        step, started = self.skip_steps, time.perf_counter()
        if self.skip_steps == 0:
            self.sums = EpochSums(run.device)
        if run.progress is not None:
            run.progress.start_epoch(epoch + 1, run.epochs, self.epoch_size)
            if self.skip_steps:
                run.progress.advance(min(self.skip_steps * run.batch_size, len(order)))
        for images, labels, _, status in self.loader:
            step += 1
            self.step(images, labels, status, epoch)
            self.after_step(epoch, step, len(status), epoch_start)
        self.skip_steps = 0
        elapsed = max(time.perf_counter() - started, 1e-9)
        totals = self.sums.values()
        loss, clean, seen = run.ranks.sum([totals["loss"], totals["clean"], totals["seen"]], run.device)
        seen = max(seen, 1)
        phase.end_epoch(EpochTotals(epoch + 1, loss / seen, clean / seen, elapsed, self.epoch_size))
        self.save(self.snapshot(epoch + 1, 0, run.generator.get_state()))
        if run.stop is not None:
            run.stop.check_ranks(run.ranks, run.device)


def fit(phase: Phase, run: Run) -> None:
    """Train ``phase`` for ``run.epochs`` epochs (from ``run.resume``'s position when given).

    With ``run.save``, the state (the phase's part, optimiser, schedule, scaler, RNG states, position in the
    epoch) is saved at the end of every epoch, every ``run.every_steps`` steps and when ``run.stop`` was
    signalled; resuming such a state ends, on CPU with ``num_workers=0``, with exactly the weights of an
    uninterrupted run. Raises :class:`TrainingDiverged` when the running loss is not finite.
    """
    loop = _Loop(phase, run)
    for epoch in range(loop.start_epoch, run.epochs):
        if phase.finished is not None and phase.finished():
            break  # early stop (also when resuming a run that had stopped: its last checkpoint says so)
        loop.epoch(epoch)
