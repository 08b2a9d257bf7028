"""Which rows are clean: the fused rule (default) and the paper's dual-prompt rule, and the decision they give.

The fused rule (see :mod:`deft_clean.detecting.probes`): a seed of rows whose text evidence agrees with the given
label, visual evidence learned from selected rows only (cross-fitted linear probes grown over rounds, with
per-class confident-learning thresholds), fused with the text posterior. ``p_clean`` is the probability that
the given label is right: the fused posterior (from probes that did not train on the row) as the prior of its
true class, and how often labels are wrong, class by class, fitted to the labels by EM
(:func:`deft_clean.detecting.confident.label_posterior`); a row is flagged when ``p_clean < 0.5``.

The DeFT rule: ``p_clean = sigmoid(scale * (cos(I, T+_y) - cos(I, T-_y)))`` (the negative prompt is a
learned per-sample threshold), clean when ``p_clean > 0.5`` and, with ``threshold+argmax``, when the
positive prompts' top-1 class is the given label.

The rules that later steps apply to a results table (usable, flagged, kept, relabelled) live in
:mod:`deft_clean.outputs.results`. This module imports no torch (the fused rule loads it when it runs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .confident import CHUNK
from .evidence_check import MIN_CLASS_ROWS

if TYPE_CHECKING:
    import torch

    from ..inputs.listing import Listing
    from ..run.options import DetectConfig
    from .passes import Evidence


# Learned prompts must keep agreeing with the label where zero-shot already does (~99% clean rows);
# below this agreement they are treated as collapsed and zero-shot prompts are used instead.
MIN_PROMPT_AGREEMENT = 0.8
# Learned prompts agreeing with the image evidence on less than this share of the zero-shot prompts' agreement
# have collapsed (the failure seen: 1-4 classes predicted of 10, agreement a third of zero-shot's); prompts still
# learning under 60% symmetric noise sit near 0.9 of it in epoch 2 and pass it by the end.
COLLAPSE_SHARE = 0.6

# What a collapse warning tells the user to try. Where the visual prompt tokens crowd the image's own patch tokens
# (a tiny stand-in's 16 patches against 20 prompt tokens a layer), lr and --ctx-init do not help: on the Eva stand-in
# the prompts collapsed at lr 0.03, 0.01 and 0.003 and with --ctx-init, and learned with 4 tokens (79% -> 85-89%).
LOWER_LR = "try a lower lr or --ctx-init"

MOST_OF_A_CLASS = 0.8  # a class with more than this fraction flagged gets a warning
FUSION_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0)  # exponents of the text posterior tried by fuse()
FLAG_BELOW = 0.5  # a row is flagged when P(its label is right) is below this: more likely wrong than right
MIN_SEED_SHARE = 0.1  # every class seeds at least this fraction of its rows (its most text-like ones)


def collapse_advice(patches: int | None, vpt_tokens: int) -> str:
    """The advice of a collapse warning: fewer visual prompt tokens where ``vpt_tokens`` is more than half the
    tower's ``patches`` (patch tokens at its image size; None: unknown), else :data:`LOWER_LR`."""
    if patches and vpt_tokens * 2 > patches:
        crowd = f"{vpt_tokens} prompt tokens a layer crowd this model's {patches} image patches"
        return f"try --vpt-tokens {max(1, patches // 4)}: {crowd}"
    return LOWER_LR


class TooFewRows(ValueError):
    """Too few rows to fit the visual evidence on; the caller decides on the text evidence alone."""


@dataclass
class Decision:
    """Which rows are clean and why, aligned with the listing; unusable rows are False / NaN / -1. The fused
    rule fills the first six fields; :func:`select` adds the scores, the reasons and the evidence check's part."""

    is_clean: np.ndarray  # bool [N]
    p_clean: np.ndarray  # float32 [N], higher = more likely clean
    suggested: np.ndarray  # int64 [N] the class the evidence points to (-1 unusable)
    p_suggested: np.ndarray  # float32 [N] its probability
    visual: np.ndarray | None = None  # float32 [N, K] cross-fitted probe probabilities (fused rule only)
    info: dict[str, Any] = field(default_factory=dict)  # seed size, rounds, ... for the metadata
    text_score: np.ndarray | None = None  # float32 [N] text posterior of the given label
    visual_score: np.ndarray | None = None  # float32 [N] cross-fitted visual probability of the given label
    reason: list[str | None] | None = None  # why flagged
    warnings: list[str] = field(default_factory=list)
    withheld: np.ndarray | None = None  # bool [N] flags the evidence check withheld (kept, see evidence_check)


def deft_rule(
    p_clean: np.ndarray, predicted: np.ndarray, labels: np.ndarray, usable: np.ndarray, rule: str
) -> np.ndarray:
    """The paper's rule on scores: bool [N]. ``rule`` is "threshold" or "threshold+argmax"."""
    from ..models.deft import dual_prompt_clean

    return usable & dual_prompt_clean(np.nan_to_num(p_clean, nan=0.0), predicted, labels, rule)


def prompt_agreement(
    learned_pred: np.ndarray, zero_shot_pred: np.ndarray, labels: np.ndarray, usable: np.ndarray
) -> float:
    """Fraction of rows where zero-shot agrees with the label on which the learned prompts agree too."""
    anchor = usable & (zero_shot_pred == labels)
    if not anchor.any():
        return 1.0
    return float(np.mean(learned_pred[anchor] == labels[anchor]))


@dataclass(frozen=True)
class PromptJudgement:
    """Learned prompts against zero-shot, both measured on the image evidence (:func:`judge_prompts`)."""

    keep: bool  # use the learned prompts' evidence
    reason: str  # why not ("" when kept)
    collapsed: bool  # not kept because they collapsed (a failure, warned about), not merely because zero-shot won
    numbers: dict[str, float]  # what the judgement measured (the metadata's "prompts" entry shows them)


def judge_prompts(
    scores: Any,
    zero_shot: np.ndarray,
    anchor: np.ndarray,
    labels: np.ndarray,
    usable: np.ndarray,
    clean_rule: str,
    advice: str = LOWER_LR,
) -> PromptJudgement:
    """Whether the learned prompts beat zero-shot where the fused rule uses them, judged on ``anchor`` (int [N],
    the class a cross-fitted image probe gives each row, -1 none; :func:`opaque_names.collapse_anchor`).

    Prompts whose top-1 agrees with the image evidence on less than ``early_stop.COLLAPSE_SHARE`` of zero-shot's
    agreement have collapsed. Otherwise, the fused rule takes two things from the learned prompts: their top-1
    (and posterior), and the rows their dual-prompt rule confirms, added to the seed. So they are kept when
    (1) their top-1 agrees with the image evidence at least as often as zero-shot's does on the same rows, or
    (2) the rows they add to the seed are confirmed by the image evidence at least as often as the rows
    zero-shot confirms: a learned confirmation is then as good as a zero-shot one. Neither text view chose the
    rows they are judged on (the image probe is cross-fitted and never saw either), unlike the old yardstick,
    the rows zero-shot confirms. ``advice``: what a collapse warning tells the user to try
    (:func:`collapse_advice`)."""
    judged = usable & (anchor >= 0)
    if not judged.any():
        return PromptJudgement(True, "", False, {})
    clean = deft_rule(scores.p_clean, scores.predicted_index, labels, usable, clean_rule)
    counts = prompt_counts(scores.predicted_index, clean, zero_shot.argmax(axis=1), anchor, labels, judged)
    numbers = counts.numbers()
    learned, zero = counts.learned, counts.zero
    if learned < COLLAPSE_SHARE * zero:
        reason = (
            f"the learned prompts collapsed (they agree with the image evidence on only {100 * learned:.0f}% of the "
            f"rows, where zero-shot prompts agree on {100 * zero:.0f}%); zero-shot prompts used instead ({advice})"
        )
        return PromptJudgement(False, reason, True, numbers)
    if counts.learned_win():
        return PromptJudgement(True, "", False, numbers)
    return PromptJudgement(False, f"they {counts.line('the rows')}", False, numbers)


@dataclass(frozen=True)
class PromptCounts:
    """The two counts the learned prompts are judged on against zero-shot (:func:`judge_prompts` on every row,
    the training monitor's *behind* check on its watched rows), with the per-row hits behind the first."""

    learned_hit: np.ndarray  # bool [M] judged rows whose learned top-1 is the image evidence's class
    zero_hit: np.ndarray  # bool [M] the same for zero-shot's top-1
    seed_rows: int  # judged rows zero-shot confirms (its top-1 is the label)
    seed_confirmed: float  # of those, the share whose label the image evidence confirms
    added_rows: int  # judged rows the learned prompts' rule keeps that zero-shot does not confirm
    added_confirmed: float  # of those, the share whose label the image evidence confirms (0 when none)

    @property
    def learned(self) -> float:
        return float(self.learned_hit.mean())

    @property
    def zero(self) -> float:
        return float(self.zero_hit.mean())

    def numbers(self) -> dict[str, float | int]:
        return {
            "learned_agreement": round(self.learned, 4),
            "zero_shot_agreement": round(self.zero, 4),
            "seed_confirmed": round(self.seed_confirmed, 4),
            "added_rows": self.added_rows,
            "added_confirmed": round(self.added_confirmed, 4),
        }

    def learned_win(self) -> bool:
        """:func:`judge_prompts`'s test for keeping the learned prompts (once they did not collapse): their top-1
        agrees with the image evidence at least as often as zero-shot's, or the rows they add to the seed are
        confirmed at least as often as zero-shot's seed rows."""
        return self.learned >= self.zero or bool(self.added_rows and self.added_confirmed >= self.seed_confirmed)

    def line(self, rows: str) -> str:
        """ "agree with the image evidence on ... of ``rows`` ..., and the image evidence confirms ..."."""
        return (
            f"agree with the image evidence on {100 * self.learned:.0f}% of {rows} where zero-shot prompts agree on "
            f"{100 * self.zero:.0f}%, and the image evidence confirms {100 * self.added_confirmed:.0f}% of the "
            f"{self.added_rows} rows they would add to the seed where it confirms {100 * self.seed_confirmed:.0f}% "
            "of zero-shot's"
        )


def prompt_counts(
    predicted: np.ndarray,
    clean: np.ndarray,
    zero_top1: np.ndarray,
    anchor: np.ndarray,
    labels: np.ndarray,
    judged: np.ndarray,
) -> PromptCounts:
    """:class:`PromptCounts` of rows ``judged`` (bool, at least one), from the learned prompts' top-1 and clean
    flags, zero-shot's top-1, the image evidence's class ``anchor`` and the given labels (all aligned)."""
    seed = judged & (zero_top1 == labels)
    added = judged & clean & ~seed
    confirmed = anchor == labels
    return PromptCounts(
        learned_hit=(predicted == anchor)[judged],
        zero_hit=(zero_top1 == anchor)[judged],
        seed_rows=int(seed.sum()),
        seed_confirmed=float(confirmed[seed].mean()) if seed.any() else 1.0,
        added_rows=int(added.sum()),
        added_confirmed=float(confirmed[added].mean()) if added.any() else 0.0,
    )


def text_seed(
    usable: np.ndarray, labels: np.ndarray, zero_shot: np.ndarray, scores: object | None, clean_rule: str
) -> np.ndarray:
    """The fused rule's seed, bool [N]: rows whose text evidence agrees with the given label.

    Zero-shot agreement is high-precision but misses the classes a domain shift hides from it; the learned
    prompts (DeFT's dual-prompt selection) see those classes. The seed is the union of both. A class that
    neither confirms for at least ``MIN_SEED_SHARE`` of its rows gets its rows with the highest text
    probability of the label, so that the probe can learn every class.
    """
    seed = usable & (zero_shot.argmax(axis=1) == labels)
    text_p = zero_shot[np.arange(len(labels)), labels]
    if scores is not None:
        seed |= deft_rule(scores.p_clean, scores.predicted_index, labels, usable, clean_rule)
        text_p = np.fmax(text_p, scores.p_label)
    for k in np.unique(labels[usable]):
        rows = np.flatnonzero(usable & (labels == k))
        wanted = int(np.ceil(MIN_SEED_SHARE * len(rows)))
        if seed[rows].sum() < wanted:
            top = rows[np.argsort(-np.nan_to_num(text_p[rows], nan=-1.0), kind="stable")[:wanted]]
            seed[top] = True
    return seed


def fused_seed(cfg: DetectConfig, listing: Listing, evidence: Evidence, *, device: Any) -> np.ndarray:
    """The fused rule's seed, bool [N]: :func:`text_seed` where the zero-shot prompts know the classes, else the
    rows the image evidence alone confirms (:func:`deft_clean.detecting.opaque_names.image_seed`)."""
    labels, usable = listing.label_indices, evidence.usable
    if evidence.text_informative:
        return text_seed(usable, labels, evidence.zero_shot, evidence.scores, cfg.clean_rule)
    from .opaque_names import seed_from_images

    return seed_from_images(evidence, labels, len(listing.classes), seed=cfg.seed, device=device)


def fuse(visual: np.ndarray, text: np.ndarray, labels: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, float]:
    """Product of experts ``P ~ visual * text^a``, with ``a`` chosen by the data: ([M, K] posterior, a).

    ``a`` maximises the mean log-probability of the given label over ``kept`` (the rows the image evidence
    alone keeps; their labels are nearly all right). The image probabilities there are cross-fitted, so this
    is a held-out likelihood: text evidence gets weight only where it sharpens correct labels. Measured on the
    shifted benchmark it lifts the ROC-AUC of pair noise (the text side keeps flipped labels unlikely) and
    chooses ~0 where the text side is weak.
    """
    step = max(1, CHUNK // max(visual.shape[1], 1))  # [B, K] float64 blocks, never [N, K] ones
    totals = np.zeros(len(FUSION_WEIGHTS))
    for start in range(0, len(labels), step):
        part = slice(start, start + step)
        rows, keep = np.arange(len(labels[part])), kept[part]
        log_v = np.log(np.clip(visual[part], 1e-12, 1.0))
        log_t = np.log(np.clip(text[part], 1e-12, 1.0))
        for i, weight in enumerate(FUSION_WEIGHTS):
            posterior = _posterior(log_v, log_t, weight)
            totals[i] += np.log(np.clip(posterior[rows, labels[part]][keep], 1e-12, 1.0)).sum()
    best_weight, best_ll = 0.0, -np.inf
    for weight, total in zip(FUSION_WEIGHTS, totals, strict=True):
        ll = float(total / kept.sum()) if kept.any() else 0.0
        if ll > best_ll + 1e-9:
            best_weight, best_ll = weight, ll
    fused = np.empty(visual.shape, dtype=np.float32)
    for start in range(0, len(labels), step):
        part = slice(start, start + step)
        log_v, log_t = np.log(np.clip(visual[part], 1e-12, 1.0)), np.log(np.clip(text[part], 1e-12, 1.0))
        fused[part] = _posterior(log_v, log_t, best_weight)
    return fused, best_weight


def _posterior(log_v: np.ndarray, log_t: np.ndarray, weight: float) -> np.ndarray:
    """softmax(log_v + weight * log_t) over classes, float64 [B, K]."""
    logits = log_v + weight * log_t
    logits -= logits.max(axis=1, keepdims=True)
    posterior = np.exp(logits)
    posterior /= posterior.sum(axis=1, keepdims=True)
    return posterior


def fused_rule(
    features: np.ndarray,
    labels: np.ndarray,
    usable: np.ndarray,
    seed_mask: np.ndarray,
    text: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    device: torch.device | None = None,
) -> Decision:
    """Grow visual evidence from ``seed_mask``, fuse it with the text posterior, flag the labels more likely
    wrong than right.

    Args:
        features: [N, D] frozen image features (rows of unusable files are ignored).
        labels: [N] given labels; usable, seed_mask: bool [N].
        text: [N, K] text posterior (learned positive prompts, or zero-shot prompts).
    Returns:
        a :class:`Decision`: ``p_clean`` is the probability that the given label is right under a noise model
        fitted to the labels (:func:`deft_clean.detecting.confident.label_posterior`) with the fused posterior
        as each row's prior; rows with ``p_clean < FLAG_BELOW`` are flagged.
    """
    n = len(labels)
    rows = np.flatnonzero(usable)
    if int(seed_mask[rows].sum()) < 2 * n_classes:
        raise TooFewRows(f"{int(seed_mask[rows].sum())} seed rows for {n_classes} classes")
    import torch

    from .confident import flag_by_class, label_posterior
    from .probes import grow_clean_set

    everything = len(rows) == n
    take = slice(None) if everything else rows  # a view, not an [N, D] / [N, K] copy, when every row is usable
    x = torch.as_tensor(features[take], device=device)
    evidence = grow_clean_set(
        x,
        labels[take],
        seed_mask[take],
        n_classes,
        seed=seed,
    )
    probs = evidence.probs  # [M, K] cross-fitted image evidence
    y = labels[rows]
    m = np.arange(len(rows))
    posterior, weight = fuse(probs, text[take], y, ~flag_by_class(probs, y, n_classes))
    right, noise_rate, other = label_posterior(posterior, y, n_classes)  # [M] P(label right), noise model
    del posterior  # one [M, K] at a time
    flagged_part = right < FLAG_BELOW
    suggested_part = probs.argmax(axis=1)  # the class the image evidence points to
    # a flag never suggests its own label: where the probe's top class is the label but the posterior puts
    # most of the mass elsewhere, the likeliest other class (the quality runs: ~1 flag in 600 on MNIST, which
    # the pair check then called "cannot tell 'four'/'four' apart")
    own = flagged_part & (suggested_part == y)
    suggested_part[own] = other[own]

    is_clean = np.zeros(n, dtype=bool)
    is_clean[rows] = ~flagged_part
    p_clean = np.full(n, np.nan, dtype=np.float32)
    p_clean[rows] = right
    suggested = np.full(n, -1, dtype=np.int64)
    suggested[rows] = suggested_part
    p_suggested = np.full(n, np.nan, dtype=np.float32)
    p_suggested[rows] = probs[m, suggested_part]
    if everything:
        visual = probs
    else:
        visual = np.full((n, n_classes), np.nan, dtype=np.float32)
        visual[rows] = probs
    info = {
        "seed_size": evidence.seed_size,
        "clean_set_by_round": evidence.rounds,
        "text_weight": weight,
        "estimated_noise": round(noise_rate, 4),
        "clean_set_converged": evidence.converged,
        "probe": evidence.probe,
    }
    return Decision(is_clean, p_clean, suggested, p_suggested, visual, info)


def class_warnings(is_clean: np.ndarray, labels: np.ndarray, usable: np.ndarray, classes: list[str]) -> list[str]:
    """One line per class with most of its usable rows flagged, and one when most of the dataset is."""
    lines = []
    for k, name in enumerate(classes):
        rows = usable & (labels == k)
        if rows.sum() >= MIN_CLASS_ROWS:
            flagged = 1.0 - float(is_clean[rows].mean())
            if flagged > MOST_OF_A_CLASS:
                lines.append(
                    f"class {name!r}: {100 * flagged:.0f}% of its {int(rows.sum())} rows flagged; check its "
                    "class name and a few of its images before deleting anything"
                )
    if usable.any() and 1.0 - float(is_clean[usable].mean()) > MOST_OF_A_CLASS:
        lines.append(f"{100 * (1 - float(is_clean[usable].mean())):.0f}% of all usable rows flagged")
    return lines


def select(cfg: DetectConfig, listing: Listing, evidence: Evidence, *, device: Any) -> Decision:
    """Apply the configured selection rule to the evidence (see :mod:`deft_clean.detecting.selection`)."""

    labels, usable, n = listing.label_indices, evidence.usable, len(listing)
    rows = np.arange(n)
    scores = evidence.scores
    if scores is not None:
        text_pred, text_score = scores.predicted_index, scores.p_label
    else:
        text_pred = np.where(usable, evidence.zero_shot.argmax(axis=1), -1)
        text_score = evidence.zero_shot[rows, labels]
    text_score = np.where(usable, text_score, np.nan).astype(np.float32)
    classes = listing.classes
    if cfg.selection == "deft" and scores is not None:
        is_clean = deft_rule(scores.p_clean, scores.predicted_index, labels, usable, cfg.clean_rule)
        reason: list[str | None] = [None] * n
        for i in np.flatnonzero(usable & ~is_clean):
            reason[i] = (
                f"the negative prompt of {classes[labels[i]]!r} is closer than its positive prompt"
                if scores.p_clean[i] <= 0.5
                else f"the prompts point to {classes[scores.predicted_index[i]]!r}"
            )
        p_clean = np.where(usable, scores.p_clean, np.nan).astype(np.float32)
        nan = np.full(n, np.nan, dtype=np.float32)
        decision = Decision(
            is_clean,
            p_clean,
            scores.predicted_index,
            scores.p_predicted,
            info={"seed_size": None},
            text_score=text_score,
            visual_score=nan,
            reason=reason,
        )
    else:
        seed_mask = fused_seed(cfg, listing, evidence, device=device)
        try:
            text = scores.probs if scores is not None else evidence.zero_shot  # [N, K]
            fused = fused_rule(
                evidence.features, labels, usable, seed_mask, text, len(classes), seed=cfg.seed, device=device
            )
        except TooFewRows as exc:
            decision = text_only(listing, usable, text_pred, text_score, f"{exc}: decided on the text evidence alone")
            return withhold_unsupported(cfg, listing, evidence, decision, device=device)
        visual_score = fused.visual[rows, labels]  # [N] NaN for unusable rows
        reason = [None] * n
        for i in np.flatnonzero(usable & ~fused.is_clean):
            text_note = (
                "the text evidence agrees with the label"
                if text_pred[i] == labels[i]
                else f"text evidence: {classes[text_pred[i]]!r}"
            )
            reason[i] = (
                f"looks like {classes[fused.suggested[i]]!r} (image evidence {fused.p_suggested[i]:.2f}, "
                f"{classes[labels[i]]!r} {visual_score[i]:.2f}); {text_note}"
            )
        decision = dataclasses.replace(
            fused,
            info={**fused.info, "text_evidence": evidence.text_source},
            text_score=text_score,
            visual_score=visual_score,
            reason=reason,
        )
        if cfg.selection == "deft":
            decision.warnings.append("--selection deft needs learned prompts; the fused rule was used instead")
    decision = withhold_unsupported(cfg, listing, evidence, decision, device=device)
    decision.warnings += class_warnings(decision.is_clean, labels, usable, classes)
    return decision


def withhold_unsupported(
    cfg: DetectConfig, listing: Listing, evidence: Evidence, decision: Decision, *, device: Any
) -> Decision:
    """Run the evidence check (:mod:`deft_clean.detecting.evidence_check`) and keep the flags it cannot support.

    Withheld rows are kept (``is_clean``), marked ``withheld``, and say why in ``flag_reason``; the check's
    figures go to ``info["evidence"]`` and its one-line summary to the warnings.
    """
    from .evidence_check import check_evidence

    labels, usable = listing.label_indices, evidence.usable
    check, withheld, cleared = check_evidence(
        evidence.features,
        labels,
        usable,
        evidence.zero_shot,
        decision.is_clean,
        decision.suggested,
        listing.classes,
        rounds=decision.info.get("clean_set_by_round"),
        random_weights=cfg.pretrained.strip().lower() in ("none", ""),
        seed=cfg.seed,
        device=device,
        text_informative=evidence.text_informative,
    )
    decision.is_clean = decision.is_clean | withheld | cleared
    decision.withheld = withheld
    for i in np.flatnonzero(withheld):
        decision.reason[i] = f"withheld (the evidence cannot support it): {decision.reason[i]}"
    for i in np.flatnonzero(cleared):
        decision.reason[i] = f"cleared (a hard case between classes, not a wrong label): {decision.reason[i]}"
    if not evidence.text_informative:
        from .opaque_names import code_like_names, text_view_warning

        note = text_view_warning(evidence.text_test, listing.classes, listing.prompt_names)
        decision.warnings.insert(0, note)
        if not check.reliable and not check.advice and code_like_names(listing.prompt_names):
            check.advice = "give CLIP the classes' names with --class-names, or try a model that can see them"
    decision.info["evidence"] = check.to_metadata()
    line = check.warning()
    if line:
        decision.warnings.insert(0, line)
    return decision


def text_only(
    listing: Listing, usable: np.ndarray, text_pred: np.ndarray, text_score: np.ndarray, note: str
) -> Decision:
    """Decision from the text evidence alone (too few rows for image evidence): clean iff it agrees."""

    labels, classes = listing.label_indices, listing.classes
    is_clean = usable & (text_pred == labels)
    reason: list[str | None] = [None] * len(listing)
    for i in np.flatnonzero(usable & ~is_clean):
        reason[i] = f"the text evidence points to {classes[text_pred[i]]!r}"
    nan = np.full(len(listing), np.nan, dtype=np.float32)
    decision = Decision(
        is_clean,
        text_score,
        text_pred,
        nan,
        info={"note": note},
        text_score=text_score,
        visual_score=nan,
        reason=reason,
        warnings=[note],
    )
    decision.warnings += class_warnings(is_clean, labels, usable, classes)
    return decision
