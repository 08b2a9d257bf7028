"""Phase 1: train dual prompts + visual prompts on the noisy labels, then score every sample.

Loss (after DeFT): ``L_sim`` is cross-entropy over the positive prompts (all usable samples during
warm-up, the selected clean ones after); ``L_dp`` asks each sample's given-label prompt pair to say
"yes" and a random other class's pair to say "no", with unselected samples' targets replaced by the
positive-prompt prediction after warm-up. As in the reference, ``L_dp`` trains only the negative
context (positive logits and image features are detached on that path).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .backbone import LoadedClip, TextEncoder, encode_image, freeze, logit_scale
from .data import STATUS_OK, ImageDataset, Listing
from .prompts import DualPromptLearner, PromptFeatures
from .transforms import eval_transform, train_transform
from .vpt import add_visual_prompts

P_MIN = 1e-5  # probabilities are clamped before log, as in the reference


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
    status: list[str]  # "ok" or why the file could not be used


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


def autocast_for(device: torch.device) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """The autocast context to use and whether fp16 needs a grad scaler: bf16/fp16 AMP on CUDA, fp32 on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext, False
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16


def resolve_workers(num_workers: int | None) -> int:
    return min(8, os.cpu_count() or 1) if num_workers is None else num_workers


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


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
) -> list[EpochStats]:
    """Train the prompts in place; return per-epoch statistics."""
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        train_transform(image_size, mean, std, hflip=hflip),
        image_size=image_size,
    )
    loader = make_loader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers, device=device
    )
    parameters = model.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    autocast, needs_scaler = autocast_for(device)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)
    scale = model.scale().to(device)

    history = []
    for epoch in range(epochs):
        warmup = epoch < warmup_epochs
        model.train()
        model.clip.eval()  # frozen backbone: keep dropout / norm statistics in inference mode
        loss_sum, clean_sum, seen, started = 0.0, 0, 0, time.perf_counter()
        if progress is not None:
            progress.start_epoch(epoch + 1, epochs, len(dataset))
        for images, labels, _, status in loader:
            usable = torch.tensor([s == STATUS_OK for s in status])
            if not usable.any():
                continue
            images = images[usable].to(device, non_blocking=True)
            labels = labels[usable].to(device, non_blocking=True)
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
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = int(labels.shape[0])
            loss_sum += float(loss.detach()) * n
            clean_sum += int(clean.sum())
            seen += n
            if progress is not None:
                progress.advance(len(status), loss=loss_sum / seen, clean=clean_sum / seen)
        elapsed = max(time.perf_counter() - started, 1e-9)
        history.append(EpochStats(epoch + 1, loss_sum / max(seen, 1), clean_sum / max(seen, 1), len(dataset) / elapsed))
    return history


@torch.no_grad()
def score_samples(
    model: DeftModel,
    listing: Listing,
    *,
    batch_size: int,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    num_workers: int,
    progress: Progressish | None = None,
) -> Scores:
    """Eval-mode pass without augmentation over every sample: p_clean, similarities, prediction."""
    model.eval()
    dataset = ImageDataset(
        listing.root, listing.paths, listing.label_indices, eval_transform(image_size, mean, std), image_size=image_size
    )
    loader = make_loader(
        dataset, batch_size=batch_size, shuffle=False, generator=None, num_workers=num_workers, device=device
    )
    n = len(listing)
    sim_pos = np.full(n, np.nan, dtype=np.float32)
    sim_neg = np.full(n, np.nan, dtype=np.float32)
    predicted = np.full(n, -1, dtype=np.int64)
    p_predicted = np.full(n, np.nan, dtype=np.float32)
    status = [STATUS_OK] * n
    autocast, _ = autocast_for(device)
    scale = float(model.scale())
    with autocast():
        text = model.text_features()
    positive_text, negative_text = text.positive.float(), text.negative.float()
    if progress is not None:
        progress.start_scoring(n)
    for images, labels, indices, batch_status in loader:
        idx = indices.numpy()
        for i, s in zip(idx, batch_status, strict=True):
            status[i] = s
        usable = torch.tensor([s == STATUS_OK for s in batch_status])
        if usable.any():
            with autocast():
                features = model.image_features(images[usable].to(device, non_blocking=True))
            features = features.float()
            cos_pos = features @ positive_text.t()  # [B, K]
            cos_neg = features @ negative_text.t()  # [B, K]
            rows = torch.arange(cos_pos.shape[0], device=cos_pos.device)
            lab = labels[usable].to(device)
            probs = (scale * cos_pos).softmax(dim=1)
            top_p, top_i = probs.max(dim=1)
            keep = idx[usable.numpy()]
            sim_pos[keep] = cos_pos[rows, lab].cpu().numpy()
            sim_neg[keep] = cos_neg[rows, lab].cpu().numpy()
            predicted[keep] = top_i.cpu().numpy()
            p_predicted[keep] = top_p.cpu().numpy()
        if progress is not None:
            progress.advance(len(batch_status))
    p_clean = 1.0 / (1.0 + np.exp(-scale * (sim_pos.astype(np.float64) - sim_neg)))
    return Scores(
        p_clean=p_clean.astype(np.float32),
        sim_pos=sim_pos,
        sim_neg=sim_neg,
        predicted_index=predicted,
        p_predicted=p_predicted,
        status=status,
    )


class Progressish:
    """What the training loop reports to; :mod:`deft_clean.progress` renders it with rich."""

    def start_epoch(self, epoch: int, epochs: int, total: int) -> None: ...

    def start_scoring(self, total: int) -> None: ...

    def advance(self, n: int, **metrics: float) -> None: ...
