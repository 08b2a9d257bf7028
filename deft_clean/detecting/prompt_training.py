"""Phase 1: train dual prompts + visual prompts on the noisy labels, then score every sample.

Loss (after DeFT): ``L_sim`` is cross-entropy over the positive prompts (all usable samples during
warm-up, the selected clean ones after); ``L_dp`` asks each sample's given-label prompt pair to say
"yes" and a random other class's pair to say "no", with unselected samples' targets replaced by the
positive-prompt prediction after warm-up. As in the reference, ``L_dp`` trains only the negative
context (positive logits and image features are detached on that path).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs.dataset import ImageDataset
from ..inputs.listing import Listing
from ..inputs.transforms import train_transform
from ..models.deft import DeftModel, PromptFeatures, deft_loss, dual_prompt_clean
from ..run.distributed import Dist
from ..run.engine import EpochTotals, Phase, Run, amp_for, epoch_order, fit, steps_per_epoch
from ..run.options import DetectConfig, PassOptions
from .early_stop import EpochCheck, TrainingMonitor, stratified_order
from .passes import eval_pass


@dataclass
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean total loss over the epoch
    clean_fraction: float  # fraction of usable training samples selected as clean
    samples_per_second: float
    agreement: float | None = None  # learned top-1 == label on the rows zero-shot confirms (monitor)
    clean_change: float | None = None  # share of rows whose clean flag changed since their last visit
    stop: str = ""  # why training ended after this epoch: "collapse", "still" (nothing moved), "behind" or ""
    images: int = 0  # images the epoch trained on (its sample: see detecting.early_stop)


@dataclass
class TrainControl:
    """How :func:`train_prompts` checkpoints, resumes and stops; every field is optional (signals and
    torchrun ranks come with the pass options)."""

    save: Callable[[dict[str, Any]], None] | None = None  # persists a state dict (called on rank 0 only)
    resume: dict[str, Any] | None = None  # a state dict given to ``save`` by an earlier run
    every_steps: int = 0  # also save every this many steps inside an epoch; 0 = at epoch ends only
    monitor: TrainingMonitor | None = None  # judges every epoch: a collapse stops at once, a still set early
    budget: int | None = None  # rows per epoch (a stratified sample, redrawn each epoch); None = every row


def train_prompts(
    model: DeftModel,
    listing: Listing,
    cfg: DetectConfig,
    passes: PassOptions,
    *,
    generator: torch.Generator,
    control: TrainControl | None = None,
) -> list[EpochStats]:
    """Train the prompts in place on :mod:`deft_clean.run.engine`; return per-epoch statistics. The schedule
    (epochs, warm-up, batch size, SGD, clean rule, flips, gradient clipping) comes from ``cfg``; images,
    device, workers, cache, progress, signals and ranks from ``passes``. With ``control``, the training state
    (prompts, optimiser, scheduler, scaler, RNG states, position in the epoch) is handed to ``control.save``
    at the end of every epoch, every ``control.every_steps`` steps and when ``passes.stop`` was signalled;
    ``control.resume`` continues from such a state and, on CPU with no workers, ends with exactly the prompts
    of an uninterrupted run. With ``passes.device_transforms`` the crops, flips and normalisation run on the
    device (:mod:`deft_clean.inputs.device_transforms`; their random stream is seeded from ``generator`` but
    not checkpointed). ``control.budget`` / ``control.monitor``: see :mod:`deft_clean.detecting.early_stop`.
    """
    from ..inputs.device_transforms import DeviceTransform, uint8_transform

    control = control or TrainControl()
    ranks, device, size = passes.ranks or Dist(), passes.device, passes.image_size
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        uint8_transform(size)
        if passes.device_transforms
        else train_transform(size, passes.mean, passes.std, hflip=cfg.hflip),
        image_size=size,
        cache=passes.cache,
        images=listing.images,
        blank_dtype=torch.uint8 if passes.device_transforms else torch.float32,
    )
    augment = None
    if passes.device_transforms:
        stream = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        augment = DeviceTransform(passes.mean, passes.std, train=True, hflip=cfg.hflip, generator=stream)
    optimizer = torch.optim.SGD(
        model.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    total_steps = max(1, cfg.epochs * steps_per_epoch(control.budget or len(dataset), cfg.batch_size, ranks))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scale = model.scale().to(device)
    history: list[EpochStats] = []
    if control.resume is not None:
        model.load_trainable_state(control.resume["trainable"])
        history = [EpochStats(**h) for h in json.loads(control.resume["history"])]

    phase = _prompt_phase(
        model,
        dataset,
        optimizer,
        scheduler,
        history,
        scale=scale,
        cfg=cfg,
        generator=generator,
        augment=augment,
        control=control,
        look=watcher(model, listing, control, cfg.clean_rule, passes),
    )
    run = Run(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        device=device,
        generator=generator,
        num_workers=passes.num_workers,
        ranks=ranks,
        progress=passes.progress,
        stop=passes.stop,
        save=control.save,
        every_steps=control.every_steps,
        resume=control.resume,
    )
    fit(phase, run)
    return history


def _prompt_phase(
    model: DeftModel,
    dataset: ImageDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: list[EpochStats],
    *,
    scale: torch.Tensor,
    cfg: DetectConfig,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    control: TrainControl,
    look: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Phase:
    """Prompt training as the engine runs it: DeFT's loss, a frozen backbone, epoch statistics; ``augment``
    turns a uint8 batch on the device into an augmented, normalised one (device transforms). The epoch's
    rows and the judgement after it come from ``control.budget`` and ``control.monitor`` (which ``look``
    feeds: the watched rows' predictions and clean flags, scored in eval mode)."""
    monitor, budget = control.monitor, control.budget
    given = np.asarray(dataset.label_indices)  # [N]
    n_classes = int(model.prompts.prefix.shape[0])  # K

    def loss_step(forward: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Any:
        if augment is not None:
            images = augment(images)
        features, text = forward(images)
        features, text = features.float(), PromptFeatures(text.positive.float(), text.negative.float())
        return deft_loss(features, text, scale, labels, warmup=epoch < cfg.warmup_epochs, clean_rule=cfg.clean_rule)

    def train_mode() -> None:
        model.train()
        model.clip.eval()  # frozen backbone: keep dropout / norm statistics in inference mode

    def end_epoch(totals: EpochTotals) -> None:
        speed = totals.samples / totals.seconds
        check = EpochCheck(None, None, "")
        if monitor is not None:
            before = history[-1] if history else None
            previous = EpochCheck(before.agreement, before.clean_change, before.stop) if before else None
            check = monitor.judge(totals.epoch, previous, *look())
        history.append(
            EpochStats(
                totals.epoch,
                totals.loss,
                totals.clean_fraction,
                speed,
                check.agreement,
                check.clean_change,
                check.stop,
                totals.samples,
            )
        )

    def draw_order() -> list[int]:
        if budget is None:
            return epoch_order(len(dataset), generator)
        return stratified_order(given, budget, n_classes, generator)

    return Phase(
        name="prompt-training",
        model=model,
        dataset=dataset,
        optimizer=optimizer,
        scheduler=scheduler,
        loss=loss_step,
        draw_order=draw_order,
        state=lambda: {
            "trainable": model.trainable_state(),
            "history": json.dumps([dataclasses.asdict(h) for h in history]),
        },
        end_epoch=end_epoch,
        train_mode=train_mode,
        metrics=("loss", "clean"),
        grad_clip=cfg.grad_clip,
        parameters=model.trainable_parameters(),
        epoch_size=min(budget, len(dataset)) if budget is not None else None,
        finished=lambda: bool(history) and history[-1].stop != "",
    )


def watcher(
    model: DeftModel, listing: Listing, control: TrainControl, clean_rule: str, passes: PassOptions
) -> Callable[[], tuple[np.ndarray, np.ndarray]] | None:
    """The monitor's eyes: a function that scores ``control.monitor.watch`` in eval mode and returns their
    positive-prompt top-1 and dual-prompt clean flags ([M] each); None without a monitor."""
    monitor = control.monitor
    if monitor is None:
        return None
    quiet = dataclasses.replace(passes, progress=None, stop=None)  # a glance between epochs: no bar, no stop

    def look() -> tuple[np.ndarray, np.ndarray]:
        model.eval()  # the engine puts the model back in train mode at the next epoch's start
        scale = float(model.scale())
        with torch.no_grad(), amp_for(passes.device).autocast():
            text = model.text_features()
        positive_text, negative_text = text.positive.float(), text.negative.float()

        def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            features = model.image_features(images).float()  # [B, E]
            positive, negative = features @ positive_text.t(), features @ negative_text.t()  # [B, K]
            rows = torch.arange(labels.shape[0], device=labels.device)
            p_yes = torch.sigmoid(scale * (positive[rows, labels] - negative[rows, labels]))
            predicted = positive.argmax(dim=1)
            return {"predicted": predicted, "clean": dual_prompt_clean(p_yes, predicted, labels, clean_rule)}

        arrays, _ = eval_pass(batch_fn, {"predicted": (), "clean": ()}, listing, quiet, rows=monitor.watch)
        predicted, clean = arrays["predicted"][monitor.watch], arrays["clean"][monitor.watch]
        return np.nan_to_num(predicted, nan=-1).astype(np.int64), np.nan_to_num(clean, nan=0) > 0.5

    return look
