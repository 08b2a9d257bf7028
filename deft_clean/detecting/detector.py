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
import torch.nn.functional as F
from torch import nn

from ..inputs.cache import CachedImages
from ..inputs.data import STATUS_OK, ImageDataset, Listing
from ..inputs.transforms import train_transform
from ..run.backbone import LoadedClip, TextEncoder, encode_image, freeze, logit_scale
from ..run.distributed import Dist
from ..run.engine import (
    EpochTotals,
    Phase,
    Progressish,
    Run,
    amp_for,
    epoch_order,
    fit,
    steps_per_epoch,
)
from ..run.runstate import StopOnSignal
from .evaluation import eval_pass
from .monitor import EpochCheck, TrainingMonitor, stratified_order
from .prompts import DualPromptLearner, PromptFeatures
from .selection import dual_prompt_clean
from .vpt import add_visual_prompts

P_MIN = 1e-5  # probabilities are clamped before log, as in the reference


@dataclass
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean total loss over the epoch
    clean_fraction: float  # fraction of usable training samples selected as clean
    samples_per_second: float
    agreement: float | None = None  # learned top-1 == label on the rows zero-shot confirms (monitor)
    clean_change: float | None = None  # share of rows whose clean flag changed since their last visit
    stop: str = ""  # why training ended after this epoch: "collapse", "still" (nothing moved) or ""
    images: int = 0  # images the epoch trained on (its sample: see detecting.monitor)


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

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, PromptFeatures]:
        """Image features [B, E] and the prompts' text features (one training step's forward pass)."""
        return self.image_features(images), self.text_features()


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
        clean = dual_prompt_clean(p_yes.detach()[rows, labels], positive.detach().argmax(dim=1), labels, clean_rule)
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

    save: Callable[[dict[str, Any]], None] | None = None  # persists a state dict (called on rank 0 only)
    resume: dict[str, Any] | None = None  # a state dict given to ``save`` by an earlier run
    every_steps: int = 0  # also save every this many steps inside an epoch; 0 = at epoch ends only
    stop: StopOnSignal | None = None  # checked after each step: save, then raise Interrupted
    ranks: Dist = Dist()  # torchrun processes: epoch order sharded, gradients averaged
    monitor: TrainingMonitor | None = None  # judges every epoch: a collapse stops at once, a still set early
    budget: int | None = None  # rows per epoch (a stratified sample, redrawn each epoch); None = every row


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
    device_transforms: bool = False,
) -> list[EpochStats]:
    """Train the prompts in place on :mod:`deft_clean.run.engine`; return per-epoch statistics. With
    ``control``, the training state (prompts, optimiser, scheduler, scaler, RNG states, position in the epoch)
    is handed to ``control.save`` at the end of every epoch, every ``control.every_steps`` steps and when
    ``control.stop`` was signalled; ``control.resume`` continues from such a state and, on CPU with
    ``num_workers=0``, ends with exactly the prompts of an uninterrupted run. With ``device_transforms`` the
    crops, flips and normalisation run on ``device`` (:mod:`deft_clean.accel`; their random stream is seeded
    from ``generator`` but not checkpointed). ``control.budget`` / ``control.monitor``: see detecting.monitor.
    """
    from ..inputs.accel import DeviceTransform, uint8_transform

    control = control or TrainControl()
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        uint8_transform(image_size) if device_transforms else train_transform(image_size, mean, std, hflip=hflip),
        image_size=image_size,
        cache=cache,
        images=listing.images,
        blank_dtype=torch.uint8 if device_transforms else torch.float32,
    )
    augment = None
    if device_transforms:
        stream = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        augment = DeviceTransform(mean, std, train=True, hflip=hflip, generator=stream)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = max(1, epochs * steps_per_epoch(control.budget or len(dataset), batch_size, control.ranks))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scale = model.scale().to(device)
    history: list[EpochStats] = []
    if control.resume is not None:
        model.load_trainable_state(control.resume["trainable"])
        history = [EpochStats(**h) for h in json.loads(control.resume["history"])]

    phase = _prompt_phase(
        model, dataset, optimizer, scheduler, history, scale=scale, warmup_epochs=warmup_epochs,
        clean_rule=clean_rule, grad_clip=grad_clip, generator=generator, augment=augment, control=control,
        look=watcher(model, listing, control, clean_rule=clean_rule, batch_size=batch_size * 2, cache=cache,
                     image_size=image_size, mean=mean, std=std, device=device, num_workers=num_workers,
                     device_transforms=device_transforms),
    )  # fmt: skip
    run = Run(
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        generator=generator,
        num_workers=num_workers,
        ranks=control.ranks,
        progress=progress,
        stop=control.stop,
        save=control.save,
        every_steps=control.every_steps,
        resume=control.resume,
    )
    fit(phase, run)
    return history


def _prompt_phase(
    model: DeftModel, dataset: ImageDataset, optimizer: torch.optim.Optimizer, scheduler: Any,
    history: list[EpochStats], *, scale: torch.Tensor, warmup_epochs: int, clean_rule: str,
    grad_clip: float | None, generator: torch.Generator, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    control: TrainControl, look: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Phase:  # fmt: skip
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
        return deft_loss(features, text, scale, labels, warmup=epoch < warmup_epochs, clean_rule=clean_rule)

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
            EpochStats(totals.epoch, totals.loss, totals.clean_fraction, speed, check.agreement, check.clean_change,
                       check.stop, totals.samples)
        )  # fmt: skip

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
        grad_clip=grad_clip,
        parameters=model.trainable_parameters(),
        epoch_size=min(budget, len(dataset)) if budget is not None else None,
        finished=lambda: bool(history) and history[-1].stop != "",
    )


def watcher(
    model: DeftModel, listing: Listing, control: TrainControl, *, clean_rule: str, **loader: Any
) -> Callable[[], tuple[np.ndarray, np.ndarray]] | None:
    """The monitor's eyes: a function that scores ``control.monitor.watch`` in eval mode and returns their
    positive-prompt top-1 and dual-prompt clean flags ([M] each); None without a monitor."""
    monitor = control.monitor
    if monitor is None:
        return None

    def look() -> tuple[np.ndarray, np.ndarray]:
        model.eval()  # the engine puts the model back in train mode at the next epoch's start
        scale = float(model.scale())
        with torch.no_grad(), amp_for(loader["device"]).autocast():
            text = model.text_features()
        positive_text, negative_text = text.positive.float(), text.negative.float()

        def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            features = model.image_features(images).float()  # [B, E]
            positive, negative = features @ positive_text.t(), features @ negative_text.t()  # [B, K]
            rows = torch.arange(labels.shape[0], device=labels.device)
            p_yes = torch.sigmoid(scale * (positive[rows, labels] - negative[rows, labels]))
            predicted = positive.argmax(dim=1)
            return {"predicted": predicted, "clean": dual_prompt_clean(p_yes, predicted, labels, clean_rule)}

        arrays, _ = eval_pass(
            batch_fn, {"predicted": (), "clean": ()}, listing, rows=monitor.watch, ranks=control.ranks, **loader
        )
        predicted, clean = arrays["predicted"][monitor.watch], arrays["clean"][monitor.watch]
        return np.nan_to_num(predicted, nan=-1).astype(np.int64), np.nan_to_num(clean, nan=0) > 0.5

    return look


def image_features(clip: nn.Module, listing: Listing, **loader: Any) -> tuple[np.ndarray, dict[int, str]]:
    """Frozen, L2-normalised image features of every sample: ([N, E] float32, NaN rows for unusable files;
    failures). ``loader`` takes :func:`eval_pass`'s keyword options."""
    clip.eval()
    width = int(getattr(clip.visual, "output_dim", 0) or clip.embed_dim)  # E

    def batch_fn(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": encode_image(clip, images)}

    arrays, failures = eval_pass(batch_fn, {"features": (width,)}, listing, task="image features", **loader)
    return arrays["features"], failures


def score_samples(model: DeftModel, listing: Listing, **loader: Any) -> Scores:
    """Eval-mode pass without augmentation over every sample: p_clean, similarities, prediction.

    ``loader`` takes :func:`eval_pass`'s keyword options (batch size, image size, device, ranks, ...).
    """
    model.eval()
    autocast = amp_for(loader["device"]).autocast
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
