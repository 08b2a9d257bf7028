"""Prompt training that stops when it has learned: an image budget per epoch, and a judgement every epoch.

The prompts are a few thousand numbers shared by K classes: they need every class covered each epoch, not
every image. ``images_per_epoch="auto"`` trains each epoch on a fresh stratified sample of
``min(N, max(IMAGES_PER_CLASS * K, MIN_EPOCH_IMAGES))`` rows, so the cost of prompt training stops growing
with N once the classes are covered (datasets below the budget train on every row, as before).

After every epoch :class:`TrainingMonitor` scores a fixed stratified set of ``WATCH_ROWS`` rows in eval mode:
  agreement     the positive prompts' top-1 equals the class the image evidence gives the row (a cross-fitted
                probe on the frozen features, :func:`deft_clean.detecting.opaque_names.collapse_anchor`); below
                ``COLLAPSE_SHARE`` of the zero-shot prompts' agreement on the same rows and no higher than the
                epoch before, the prompts collapsed: training stops at once and says so (at epoch 2 at the latest
                for prompts collapsed from the start). Where the text view is uninformative the rows are the
                image seed's, the class their label, and the floor ``MIN_PROMPT_AGREEMENT``. (The yardstick
                was once the rows zero-shot confirms: prompts were then judged on the rows their rival chose,
                and at 60% symmetric noise prompts that end 2.5 F1 points better than zero-shot looked collapsed
                at 67% in epoch 2);
  clean change  the share of watched rows whose dual-prompt clean flag changed during the epoch;
                when it stays below ``STILL_CHANGE`` and the agreement moves less than ``STILL_AGREEMENT``
                (both after the warm-up), nothing is being learned any more and training stops early (where the
                watched rows' counts below then fail the end-of-run test, detect skips the scoring pass too);
  behind        the end-of-run judgement (:func:`deft_clean.detecting.selection.judge_prompts`) asked early, on
                the watched rows: when the learned prompts trail zero-shot by ``BEHIND_Z`` standard errors on
                both of its counts (top-1 agreement with the image evidence, and how often the image evidence
                confirms the rows they would add to the seed), and even their last epoch's gain kept up over
                the epochs left would not close the first gap, zero-shot would be chosen anyway: training stops
                and the scoring pass is skipped (measured: the learned prompts never caught up on the
                unshifted 10k cost data, 80% vs 87% after 10 epochs, and the scoring pass cost as much as the
                feature pass). Judged from the second epoch after the warm-up on: the first one moves little
                (digits-8x8 at 40% noise: 44-50% against zero-shot's 69-71% there, 70-75% by epoch 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .probes import stratified_order  # the epoch budget and the watched rows; the probes sample with it too
from .selection import COLLAPSE_SHARE, LOWER_LR, MIN_PROMPT_AGREEMENT, PromptCounts, prompt_counts

IMAGES_PER_CLASS = 50  # auto budget: rows per class and epoch
MIN_EPOCH_IMAGES = 512  # auto budget: rows per epoch at least (smaller datasets: every row); 1,024 until
# issue 39: at 10 classes that was 2x the 50-a-class share and the 10k default run spent more on its 4-5 training
# epochs (4.7 s) than on its one reading pass (3.3 s); 512 rows (8 steps) an epoch stop "behind" at epoch 3 there
WATCH_ROWS, WATCH_PER_CLASS = 512, 4  # rows scored after every epoch: max(these, 4 a class), at most N
STILL_CHANGE = 0.06  # watched rows whose clean flag changed in an epoch, below which the set stands still
STILL_AGREEMENT = 0.02  # agreement moving less than this (absolute) between epochs: no progress either
STOP_COLLAPSE, STOP_STILL, STOP_BEHIND = "collapse", "still", "behind"  # EpochStats.stop: why training ended
BEHIND_FROM = 3  # the first epoch the "behind" judgement may stop training: two epochs after the warm-up's end
BEHIND_Z = 2.0  # standard errors by which the learned prompts must trail zero-shot on both counts to stop


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


@dataclass
class EpochCheck:
    """What the monitor found in one epoch (stored in prompt_training.EpochStats)."""

    agreement: float | None  # learned top-1 == the image evidence's class on watched rows (None: none has one)
    clean_change: float | None  # clean flags changed since the rows' last visit (None: none seen before)
    stop: str  # "" (go on), STOP_COLLAPSE or STOP_STILL


def collapsed(agreement: float | None, previous: EpochCheck | None, floor: float = MIN_PROMPT_AGREEMENT) -> bool:
    """Below ``floor`` and not recovering: the epoch before was no better. The first epoch is never judged
    alone: its running agreement includes the first batches of prompts that start random."""
    if agreement is None or agreement >= floor or previous is None or previous.agreement is None:
        return False
    return agreement <= previous.agreement


class TrainingMonitor:
    """Judges each finished epoch on a fixed, stratified set of watched rows, scored in eval mode.

    ``labels`` [N] are the given labels, ``usable`` bool [N]; ``anchor`` (int [N], -1 for none) is the class the
    image evidence gives each row (None: no judgement of collapse) and ``zero_shot`` (int [N]) the zero-shot
    top-1, whose agreement with ``anchor`` on the watched rows times ``COLLAPSE_SHARE`` is the collapse floor
    (None: the fixed ``MIN_PROMPT_AGREEMENT``, for an anchor of image-seed labels). The training passes cannot be
    used for this: their random crops and flips (digits flipped are other digits) put the prompts' agreement
    at ~50% where an eval pass of the same prompts gives >80%. With ``early_stop`` off, only a collapse stops
    training.
    """

    def __init__(
        self,
        labels: np.ndarray,
        usable: np.ndarray,
        anchor: np.ndarray | None,
        zero_shot: np.ndarray | None = None,
        *,
        warmup_epochs: int,
        early_stop: bool,
        seed: int,
        epochs: int | None = None,
        behind_stop: bool = False,
    ) -> None:
        self.labels, self.anchor, self.zero_shot = labels, anchor, zero_shot
        self.warmup_epochs, self.early_stop = warmup_epochs, early_stop
        self.epochs = epochs  # the schedule's last epoch (for the "behind" projection)
        self.behind_stop = behind_stop and early_stop and anchor is not None and zero_shot is not None
        self.behind: dict[str, float] = {}  # the "behind" judgement's numbers, last epoch
        self.counts: PromptCounts | None = None  # and its counts (selection.prompt_counts)
        n_classes = int(labels.max()) + 1 if len(labels) else 1
        rows = np.flatnonzero(usable)
        size = max(WATCH_PER_CLASS * n_classes, WATCH_ROWS)
        if size < len(rows):
            order = stratified_order(labels[rows], size, n_classes, torch.Generator().manual_seed(seed))
            rows = np.sort(rows[order])
        self.watch = rows  # int64 [M] listing rows scored after every epoch
        self.floor = MIN_PROMPT_AGREEMENT  # agreement below which (and not rising) the prompts collapsed
        if anchor is not None and zero_shot is not None:
            judged = anchor[rows] >= 0
            if judged.any():
                self.floor = COLLAPSE_SHARE * float(np.mean(zero_shot[rows][judged] == anchor[rows][judged]))
        self.last_clean: np.ndarray | None = None  # bool [M] their clean flags after the last epoch

    def judge(self, epoch: int, previous: EpochCheck | None, predicted: np.ndarray, clean: np.ndarray) -> EpochCheck:
        """Judge the finished ``epoch`` (1-based) from the watched rows' positive-prompt top-1 and dual-prompt
        clean flag (both [M], aligned with ``watch``); ``previous`` is the last epoch's check."""
        agreement = None
        if self.anchor is not None:
            anchor = self.anchor[self.watch]
            judged = anchor >= 0
            if judged.any():
                agreement = float(np.mean(predicted[judged] == anchor[judged]))
        change = None if self.last_clean is None else float(np.mean(self.last_clean != clean))
        self.last_clean = clean.copy()
        stop = ""
        if collapsed(agreement, previous, self.floor):
            stop = STOP_COLLAPSE
        elif self.early_stop and epoch > self.warmup_epochs and previous is not None:
            steady = (
                agreement is None or previous.agreement is None or abs(agreement - previous.agreement) < STILL_AGREEMENT
            )
            if change is not None and change < STILL_CHANGE and steady:
                stop = STOP_STILL
        # judged once the gain between two selective epochs is known: the first epoch after the warm-up moves
        # little (4 of 6 shifted 40%-noise runs trailed there by 20 points, then overtook zero-shot by epoch 5)
        if self.behind_stop and epoch >= max(BEHIND_FROM, self.warmup_epochs + 2) and stop != STOP_COLLAPSE:
            self.behind = self.trailing(predicted, clean, previous, epoch)
            if self.behind.get("behind"):
                # as far behind as the end-of-run judgement calls collapsed: said as a collapse
                stop = STOP_COLLAPSE if self.behind["learned_agreement"] < self.floor else STOP_BEHIND
        return EpochCheck(agreement, change, stop)

    def trailing(self, predicted: np.ndarray, clean: np.ndarray, previous: EpochCheck | None, epoch: int) -> dict:
        """The end-of-run judgement's two counts on the watched rows (:func:`selection.prompt_counts`), learned
        vs zero-shot, with their standard errors, and ``behind`` (1.0 / 0.0): both trail by ``BEHIND_Z`` errors
        and the first gap would not close at the last epoch's gain (see the module docstring). The counts are
        kept in ``self.counts`` for the reason detect gives."""
        assert self.anchor is not None and self.zero_shot is not None
        anchor, labels, zero = self.anchor[self.watch], self.labels[self.watch], self.zero_shot[self.watch]
        judged = anchor >= 0
        m = int(judged.sum())
        if m == 0:
            return {}
        counts = self.counts = prompt_counts(predicted, clean, zero, anchor, labels, judged)
        learned, zero_rate = counts.learned, counts.zero
        gap_error = float(np.std(counts.learned_hit.astype(float) - counts.zero_hit) / np.sqrt(m))
        n_added, added_rate, seed_rate = counts.added_rows, counts.added_confirmed, counts.seed_confirmed
        # a Wilson-like variance (+1 / +2) so that a handful of rows, all confirmed or none, is not certain
        shrunk = (added_rate * n_added + 1) / (n_added + 2)
        seed_n = max(counts.seed_rows, 1)
        added_error = float(np.sqrt(shrunk * (1 - shrunk) / (n_added + 2) + seed_rate * (1 - seed_rate) / seed_n))
        gain = max(0.0, learned - previous.agreement) if previous is not None and previous.agreement is not None else 0
        left = max(0, (self.epochs or epoch) - epoch)
        first_lost = learned + gain * left < zero_rate - BEHIND_Z * gap_error
        second_lost = n_added == 0 or added_rate < seed_rate - BEHIND_Z * added_error
        return {**counts.numbers(), "watched_rows": m, "behind": float(first_lost and second_lost)}


def agreement_line(
    epoch: int, agreement: float, text_informative: bool = True, floor: float | None = None, advice: str = LOWER_LR
) -> str:
    """The warning of a collapse found during training: against the image evidence (``floor``: the share of it
    that zero-shot's agreement gives), or the image seed on opaque names; ``advice``: what to try
    (:func:`deft_clean.detecting.selection.collapse_advice`)."""
    if text_informative:
        what = f"collapsed in epoch {epoch} (they agree with the image evidence on only {100 * agreement:.0f}% of the"
        what += " rows" + (f", below {100 * floor:.0f}%)" if floor is not None else ")")
    else:  # names CLIP cannot read give the prompts nothing to start from: weak, not collapsed
        what = f"are weak in epoch {epoch} (they agree with only {100 * agreement:.0f}% of the labels that the image"
        what += " evidence confirms)"
    tail = f"training stopped there and zero-shot prompts were used instead ({advice})"
    return f"the learned prompts {what}; {tail}"
