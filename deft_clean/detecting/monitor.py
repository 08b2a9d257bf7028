"""Prompt training that stops when it has learned: an image budget per epoch, and a judgement every epoch.

The prompts are a few thousand numbers shared by K classes: they need every class covered each epoch, not
every image. ``images_per_epoch="auto"`` trains each epoch on a fresh stratified sample of
``min(N, max(IMAGES_PER_CLASS * K, MIN_EPOCH_IMAGES))`` rows, so the cost of prompt training stops growing
with N once the classes are covered (datasets below the budget train on every row, as before).

After every epoch :class:`TrainingMonitor` reads what the training passes already computed (no extra pass):
  agreement     the positive prompts' top-1 equals the label on rows where zero-shot does (the seed rows);
                below ``MIN_PROMPT_AGREEMENT`` and no higher than the epoch before, the prompts collapsed:
                training stops at once and says so (at epoch 2 at the latest for prompts collapsed from the start);
  clean change  the share of this epoch's rows whose dual-prompt clean flag differs from their last one;
                when it stays below ``STILL_CHANGE`` and the agreement moves less than ``STILL_AGREEMENT``
                (both after the warm-up), nothing is being learned any more and training stops early.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..run.distributed import Dist
from .selection import MIN_PROMPT_AGREEMENT

IMAGES_PER_CLASS = 50  # auto budget: rows per class and epoch
MIN_EPOCH_IMAGES = 2048  # auto budget: rows per epoch at least (small datasets: every row)
STILL_CHANGE = 0.04  # clean flags that changed since a row's last visit, below which the set stands still
STILL_AGREEMENT = 0.01  # agreement moving less than this (absolute) between epochs: no progress either
STOP_COLLAPSE, STOP_STILL = "collapse", "still"  # EpochStats.stop: why training ended after this epoch


def epoch_budget(images_per_epoch: int | str, labels: np.ndarray, n_classes: int) -> int | None:
    """Rows one epoch trains on; None = every row (``"all"``, or a budget at least N)."""
    n = len(labels)
    if images_per_epoch == "all":
        return None
    if images_per_epoch == "auto":
        budget = max(IMAGES_PER_CLASS * n_classes, MIN_EPOCH_IMAGES)
    else:
        budget = int(images_per_epoch)
    return None if budget >= n else budget


def stratified_order(labels: np.ndarray, budget: int, n_classes: int, generator: torch.Generator) -> list[int]:
    """A random order of ~``budget`` rows, each class sampled in proportion to its size but at least
    ``min(its rows, budget / 2K)`` rows (rare classes stay covered). Drawn from ``generator`` only, so a
    resumed run redraws the same sample."""
    n = len(labels)
    perm = torch.randperm(n, generator=generator).numpy()  # [N]
    counts = np.bincount(labels, minlength=n_classes)  # [K]
    quota = np.maximum(np.ceil(budget * counts / max(n, 1)), budget // (2 * max(n_classes, 1)))
    quota = np.minimum(quota, counts).astype(np.int64)
    drawn = labels[perm]  # [N] class of each drawn position
    grouped = np.argsort(drawn, kind="stable")  # positions grouped by class, random order inside a class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [K]
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - starts[drawn[grouped]]  # [N] rank of each position within its class
    keep = np.flatnonzero(rank < quota[drawn])  # positions in draw order
    return perm[keep].tolist()


@dataclass
class EpochCheck:
    """What the monitor found in one epoch (stored in detector.EpochStats)."""

    agreement: float | None  # learned top-1 == label on seed rows (None: no seed row seen)
    clean_change: float | None  # clean flags changed since the rows' last visit (None: none seen before)
    stop: str  # "" (go on), STOP_COLLAPSE or STOP_STILL


def collapsed(agreement: float | None, previous: EpochCheck | None) -> bool:
    """Below ``MIN_PROMPT_AGREEMENT`` and not recovering: the epoch before was no better. The first epoch is
    never judged alone: its running agreement includes the first batches of prompts that start random."""
    if agreement is None or agreement >= MIN_PROMPT_AGREEMENT or previous is None or previous.agreement is None:
        return False
    return agreement <= previous.agreement


class TrainingMonitor:
    """Collects the training passes' predictions and clean flags per row, judges each finished epoch.

    ``labels`` [N] are the given labels; ``anchor`` (bool [N]) marks the rows whose zero-shot prediction
    equals the label (None: no judgement of collapse). With ``early_stop`` off, only a collapse stops
    training. Per-batch tensors stay on the device until the epoch ends (no synchronisation per step).
    """

    def __init__(
        self, labels: np.ndarray, anchor: np.ndarray | None, *, warmup_epochs: int, early_stop: bool, ranks: Dist
    ) -> None:
        self.labels, self.anchor = labels, anchor
        self.warmup_epochs, self.early_stop, self.ranks = warmup_epochs, early_stop, ranks
        self.last_clean = np.full(len(labels), -1, dtype=np.int8)  # [N] clean flag at the last visit, -1 never
        self.rows: torch.Tensor | None = None
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def see_rows(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def record(self, predicted: torch.Tensor, clean: torch.Tensor) -> None:
        """The batch's positive-prompt top-1 [B] and clean mask [B] (rows from the last :meth:`see_rows`)."""
        if self.rows is not None and len(self.rows) == len(predicted):
            self.batches.append((self.rows, predicted.detach(), clean.detach()))

    def judge(self, epoch: int, previous: EpochCheck | None, device: torch.device) -> EpochCheck:
        """Judge the finished ``epoch`` (1-based) from its batches; ``previous`` is the last epoch's check."""
        counts = self._counts()
        anchor_seen, agree, revisited, changed = self.ranks.sum(counts, device)
        self.batches = []
        agreement = agree / anchor_seen if anchor_seen else None
        change = changed / revisited if revisited else None
        stop = ""
        if collapsed(agreement, previous):
            stop = STOP_COLLAPSE
        elif self.early_stop and epoch > self.warmup_epochs and previous is not None:
            steady = (
                agreement is None or previous.agreement is None or abs(agreement - previous.agreement) < STILL_AGREEMENT
            )
            if change is not None and change < STILL_CHANGE and steady:
                stop = STOP_STILL
        return EpochCheck(agreement, change, stop)

    def _counts(self) -> list[float]:
        """[seed rows seen, of them learned top-1 == label, rows seen before, of them clean flag changed]."""
        if not self.batches:
            return [0.0, 0.0, 0.0, 0.0]
        rows = torch.cat([b[0] for b in self.batches]).numpy()
        predicted = torch.cat([b[1] for b in self.batches]).cpu().numpy()
        clean = torch.cat([b[2] for b in self.batches]).cpu().numpy().astype(np.int8)
        anchor_seen = agree = 0.0
        if self.anchor is not None:
            on_anchor = self.anchor[rows]
            anchor_seen = float(on_anchor.sum())
            agree = float((predicted[on_anchor] == self.labels[rows][on_anchor]).sum())
        before = self.last_clean[rows]
        seen = before >= 0
        changed = float((before[seen] != clean[seen]).sum())
        self.last_clean[rows] = clean
        return [anchor_seen, agree, float(seen.sum()), changed]


def agreement_line(epoch: int, agreement: float) -> str:
    """The warning of a collapse found during training."""
    return (
        f"the learned prompts collapsed in epoch {epoch} (they agree with only {100 * agreement:.0f}% of the "
        "labels that zero-shot prompts confirm); training stopped there and zero-shot prompts were used "
        "instead (try a lower lr or --ctx-init)"
    )
