"""Phase 2's starting point: a stratified hold-out of the kept rows and a linear probe that initialises the head.

Fine-tuning a whole tower from a random head first spends its steps (and, with a large learning rate, the
pretrained features) on fitting that head. Fitting the head as a logistic regression on frozen features
first (LP-FT, Kumar et al. 2022) makes fine-tuning start where a linear probe ends, and choosing the best
epoch on validation, the probe included, means the exported model is never worse than the probe there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..inputs.dataset import ImageDataset
from ..run.engine import usable_mask

if TYPE_CHECKING:
    from ..run.checkpoints import StopOnSignal
    from ..run.engine import Progressish

HOLDOUT_CAP = 2000  # at most this many held-out rows: enough for a +-1 point estimate, no more
MIRROR_DROP = 0.1  # flips stay off when the probe loses this much accuracy on mirrored training images
STALL_RATIO = 0.95  # warn when the last epoch's mean loss is above this fraction of the first's


class Features(NamedTuple):
    features: torch.Tensor  # [N, E] float32
    labels: torch.Tensor  # [N] int64
    mirrored: torch.Tensor  # [N, E] features of the horizontally flipped images; [0, E] when not asked for


@dataclass(frozen=True)
class HeadParts:
    """A classifier seen as frozen-feature extractor + linear head."""

    features: Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] -> features [B, E]
    head: nn.Linear  # features [B, E] -> logits [B, K]


def stratified_holdout(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Positions (into ``labels``) to hold out: ``fraction`` of each class, seeded.

    Every class with at least two rows gives at least one row, so that no class is validated on nothing;
    a class with a single row keeps it for training. The total is capped at ``HOLDOUT_CAP``.
    Returns a sorted int64 array, empty when ``fraction`` is 0 or nothing can be held out.
    """
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    scale = min(fraction, HOLDOUT_CAP / len(labels))
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(scale * len(members))))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, *, n_classes: int, iterations: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on frozen features, as weights of a linear layer on the raw features.

    Args:
        features: [N, E] float features.
        labels: [N] int64 class indices in ``[0, n_classes)``.

    Returns ``(weight [K, E], bias [K])`` for ``logits = features @ weight.T + bias``. The fit runs on
    standardised features (full-batch L-BFGS, L2 penalty as scikit-learn's C=1: 0.5 * |W|^2 / N); the
    standardisation is folded into the returned weight and bias.
    """
    x = features.double()
    mean = x.mean(0)  # [E]
    std = x.std(0, unbiased=False).clamp_min(1e-6)  # [E]
    z = (x - mean) / std  # [N, E]
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )
    penalty = 0.5 / max(len(labels), 1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.t() + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        folded = weight / std  # [K, E]
        return folded.float(), (bias - folded @ mean).float()


def head_parts(model: nn.Module) -> HeadParts | None:
    """Split a phase-2 classifier into features + linear head; None when its head is not a Linear layer."""
    head = getattr(model, "head", None)
    visual = getattr(model, "visual", None)
    if isinstance(head, nn.Linear) and isinstance(visual, nn.Module):  # ClipClassifier
        return HeadParts(getattr(model, "features", visual), head)
    get_classifier = getattr(model, "get_classifier", None)  # timm
    if get_classifier is not None and hasattr(model, "forward_head"):
        classifier = get_classifier()
        if isinstance(classifier, nn.Linear):
            return HeadParts(lambda x: model.forward_head(model.forward_features(x), pre_logits=True), classifier)
    return None


@torch.no_grad()
def extract_features(
    parts: HeadParts,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[str]]],
    *,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    mirrored: bool = False,
) -> Features:
    """Frozen features (float32, on ``device``) and labels of the usable images in ``batches``.

    ``batches`` yields ``(images, labels, indices, status)`` as :class:`deft_clean.inputs.dataset.ImageDataset` does;
    with ``mirrored`` the features of the horizontally flipped images come too.
    """
    features, labels, flipped = [], [], []
    for images, targets, _, status in batches:
        usable = usable_mask(status)
        if not usable.any():
            continue
        batch = images[usable].to(device)  # [b, 3, H, W]
        with autocast():
            features.append(parts.features(batch).float())  # [b, E]
            if mirrored:
                flipped.append(parts.features(batch.flip(3)).float())
        labels.append(targets[usable].to(device))
    width = parts.head.in_features
    empty = torch.zeros(0, width, device=device)
    if not features:
        return Features(empty, torch.zeros(0, dtype=torch.int64, device=device), empty)
    return Features(torch.cat(features), torch.cat(labels), torch.cat(flipped) if flipped else empty)


def fit_probe_head(
    model: nn.Module,
    parts: HeadParts,
    dataset: ImageDataset,
    *,
    n_classes: int,
    device: torch.device,
    workers: int,
    autocast: Callable[[], Any],
    progress: Progressish,
    mirrored: bool,
    stop: StopOnSignal | None = None,
) -> dict[str, Any]:
    """Fit ``parts.head`` as a logistic regression on the frozen features of ``dataset`` (eval transform).

    ``stop`` (a :class:`~deft_clean.run.checkpoints.StopOnSignal`) is checked after each batch.

    Returns the probe's record for metrics.json: ``train_accuracy``, ``n`` (rows fitted), ``seconds`` and,
    with ``mirrored``, ``mirrored_accuracy``: the probe's accuracy on the same images flipped horizontally.
    """
    started = time.perf_counter()
    model.eval()
    progress.start_task("linear probe", len(dataset))
    loader = DataLoader(dataset, batch_size=128, num_workers=workers)

    def counted() -> Iterator[Any]:
        for batch in loader:
            yield batch
            progress.advance(len(batch[3]))
            if stop is not None:
                stop.check()

    found = extract_features(parts, counted(), device=device, autocast=autocast, mirrored=mirrored)
    features, labels = found.features, found.labels  # [N, E], [N]
    weight, bias = fit_linear_probe(features, labels, n_classes=n_classes)
    with torch.no_grad():
        parts.head.weight.copy_(weight)
        parts.head.bias.copy_(bias)

        def accuracy(x: torch.Tensor) -> float | None:
            return float(((x @ weight.t() + bias).argmax(1) == labels).float().mean()) if len(labels) else None

        record = {"train_accuracy": accuracy(features), "n": int(len(labels))}
        if mirrored:
            record["mirrored_accuracy"] = accuracy(found.mirrored)
    model.train()
    return {**record, "seconds": time.perf_counter() - started}


def choose_hflip(requested: bool | None, probe: dict[str, Any], note: Callable[[str], None]) -> bool:
    """Flips as asked; if not asked, on unless mirroring the training images costs the probe MIRROR_DROP."""
    if requested is not None:
        return requested
    plain, mirrored = probe.get("train_accuracy"), probe.get("mirrored_accuracy")
    if plain is None or mirrored is None or mirrored >= plain - MIRROR_DROP:
        return True
    note(
        f"random flips off: the linear probe's accuracy falls from {plain:.2f} to {mirrored:.2f} on the mirrored "
        "training images, so a mirror changes these classes (digits, text, ...); pass --hflip to force them"
    )
    return False


def run_warnings(history: list[dict[str, Any]], probe: dict[str, Any], best_epoch: int | None) -> list[str]:
    """What a user should hear about a finished run: a loss that did not move, a probe that was not beaten."""
    messages = []
    if len(history) >= 2 and history[-1]["loss"] > STALL_RATIO * history[0]["loss"]:
        messages.append(
            f"the training loss barely moved ({history[0]['loss']:.3f} in epoch 1, {history[-1]['loss']:.3f} in "
            f"epoch {history[-1]['epoch']}): fine-tuning hardly changed the model; try a larger --lr or more --epochs"
        )
    tuned = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
    if probe.get("val_accuracy") is not None and best_epoch == 0 and tuned and max(tuned) < probe["val_accuracy"]:
        messages.append(
            f"no fine-tuned epoch beat the linear probe on validation (best {max(tuned):.3f} < probe "
            f"{probe['val_accuracy']:.3f}); the exported model is the probe-initialised one (epoch 0); "
            "a smaller --lr may help"
        )
    return messages


def probe_clearly_better(probe_right: np.ndarray, tuned_right: np.ndarray, *, alpha: float = 0.05) -> bool:
    """Whether the probe beats a fine-tuned model on the same validation rows beyond chance.

    An exact one-sided McNemar test: of the rows exactly one of the two gets right, the probe must win so many
    that a fair coin would give that few to fine-tuning with probability below ``alpha``. Held-out kept rows are
    the easy ones, so the two models usually disagree on a handful of rows; a row or two is noise, and then the
    fine-tuned model, which improves the features the probe reads, should be exported.

    Args:
        probe_right, tuned_right: [N] bool, whether each model's prediction of each validation row is right.
    """
    probe_right, tuned_right = np.asarray(probe_right, dtype=bool), np.asarray(tuned_right, dtype=bool)
    wins = int(np.sum(probe_right & ~tuned_right))
    losses = int(np.sum(~probe_right & tuned_right))
    trials = wins + losses
    if wins <= losses:
        return False
    from math import comb

    tail = sum(comb(trials, k) for k in range(wins, trials + 1)) / 2.0**trials  # P(X >= wins), X ~ Bin(n, 1/2)
    return tail < alpha
