"""When the class names tell CLIP nothing: the test for it, code-like names, and a seed from the images alone.

Many datasets name their classes with codes (WordNet ids ``n01440764``, SKUs, bare integers). CLIP's text
side then knows nothing of the classes, while the images may be perfectly clear. The fused rule's seed (rows
whose zero-shot prediction agrees with the label) is then a random draw, and judging learned prompts by their
agreement with zero-shot sees a collapse that is not there. So:

- :func:`text_view_test` measures whether the zero-shot prompts agree with the given labels beyond chance
  (Cohen's kappa and its one-sided test; under 60% symmetric noise a text view that knows the classes still
  agrees at kappa ~0.35, names CLIP cannot read at ~0);
- where they do not, :func:`image_seed` draws the seed from the image evidence alone: a probe fitted on all
  rows, cross-fitted (:func:`image_probabilities`), and the rows whose confident-learning class is their label
  (what cleanlab would keep, stricter), from which the usual rounds grow the clean set; the learned prompts are
  judged against that seed;
- :func:`code_like_names` finds the names that look like codes, for the warning's ``--class-names`` advice.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .evidence_check import ALPHA, ViewAgreement, agreement

MIN_TEXT_KAPPA = 0.1  # zero-shot agreement with the labels beyond chance below which the text view is uninformative
MIN_IMAGE_SEED_SHARE = 0.1  # every class seeds at least this share of its rows (its most image-like ones)
_CODE = re.compile(r"^[A-Za-z]{0,4}[\W_]?\d[\d\W_]*[A-Za-z]?$")  # n01440764, 7, SKU-1203, 00012_b


def text_view_test(labels: np.ndarray, zero_shot: np.ndarray, usable: np.ndarray, n_classes: int) -> ViewAgreement:
    """Agreement of the zero-shot prediction (argmax of ``zero_shot`` [N, K]) with the given labels [N] on
    the usable rows: observed, chance, kappa and the one-sided p-value of "no better than chance"."""
    rows = np.flatnonzero(usable)
    return agreement(labels[rows], zero_shot[rows].argmax(axis=1), n_classes)


def text_informative(test: ViewAgreement) -> bool:
    """The text view knows the classes: it agrees with the labels beyond chance (p < ALPHA) at kappa >=
    MIN_TEXT_KAPPA. Too few rows to tell count as informative (the text seed is the default)."""
    if test.rows < 2:
        return True
    return test.p_value < ALPHA and test.kappa >= MIN_TEXT_KAPPA


def code_like_names(names: list[str]) -> list[str]:
    """The names that look like codes rather than words (WordNet ids, SKUs, integers), in order."""
    return [n for n in names if _CODE.match(n.strip())]


def text_view_warning(test: ViewAgreement, classes: list[str], prompt_names: list[str]) -> str:
    """The warning line of a run whose text view is uninformative, with a ``--class-names`` example."""
    codes = code_like_names(prompt_names)
    head = (
        f"the text view is uninformative (zero-shot prompts agree with {100 * test.observed:.0f}% of the labels "
        f"where chance is {100 * test.chance:.0f}%): the seed and the clean set come from the image evidence alone"
    )
    if codes:
        raw = classes[prompt_names.index(codes[0])]
        head += (
            f"; names like {codes[0]!r} look like codes: give the words with --class-names names.csv "
            f"(two columns, e.g. a line '{raw},tench')"
        )
    else:
        head += "; if CLIP does not know these class names, give better ones with --class-names names.csv"
    return head


ANCHOR_ROWS, ANCHOR_ROWS_PER_CLASS = 20_000, 100  # the prompts' yardstick probe fits on at most max() of these


def image_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    usable: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    device: Any = None,
    max_rows: int | None = None,
) -> np.ndarray:
    """float32 [N, K]: out-of-sample class probabilities of a probe on the frozen image features alone, fitted on
    all usable rows' given labels (cross-fitted as the selection's, the same probe family); NaN rows unusable.
    Neither text view enters it: it is the image evidence both are judged against.

    ``max_rows``: the linear probe fits on a stratified sample of at most this many usable rows (its rows get
    their held-out fold's probabilities, the others the mean of the folds, which never saw them either): a
    yardstick needs no more, and its cost then stops growing with N (100k rows: ~5x less)."""
    import torch

    from . import probes as ev

    rows = np.flatnonzero(usable)
    y = labels[rows]
    x = ev.prepare_features(torch.as_tensor(features[rows], device=device))
    target = torch.as_tensor(y, device=x.device, dtype=torch.long)
    if ev.choose_probe(y, n_classes) == "linear":
        fit: Any = ev.CrossFit(x, target, n_classes, folds=ev.FOLDS, seed=seed + 3, max_rows=max_rows)
    else:
        fit = ev.ClassMeans(x, target, n_classes)
    probs = np.full((len(labels), n_classes), np.nan, dtype=np.float32)
    probs[rows] = fit(np.ones(len(rows), dtype=bool)).cpu().numpy()  # [M, K] out of sample
    return probs


def image_seed(probs: np.ndarray, labels: np.ndarray, usable: np.ndarray, n_classes: int) -> np.ndarray:
    """bool [N]: the seed from the image evidence alone, for when the text view is uninformative.

    ``probs`` [N, K] are :func:`image_probabilities`; the seed is the rows whose confident-learning class
    (:func:`confident.confident_class`) is their label. A class with fewer than MIN_IMAGE_SEED_SHARE of its rows
    there gets its rows with the highest probability of the label, so that the next probe can learn every class."""
    from .confident import class_thresholds, confident_class

    rows = np.flatnonzero(usable)
    y, probs = labels[rows], probs[rows]
    chosen = confident_class(probs, class_thresholds(probs, y, n_classes)) == y
    own = probs[np.arange(len(rows)), y]
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        wanted = int(np.ceil(MIN_IMAGE_SEED_SHARE * len(members)))
        if chosen[members].sum() < wanted:
            chosen[members[np.argsort(-own[members], kind="stable")[:wanted]]] = True
    mask = np.zeros(len(labels), dtype=bool)
    mask[rows] = chosen
    return mask


def judge_text_view(evidence: Any, labels: np.ndarray, n_classes: int) -> None:
    """Set ``evidence.text_test`` and ``evidence.text_informative`` (an :class:`evidence.Evidence`)."""
    evidence.text_test = text_view_test(labels, evidence.zero_shot, evidence.usable, n_classes)
    evidence.text_informative = text_informative(evidence.text_test)


def probs_from_images(evidence: Any, labels: np.ndarray, n_classes: int, *, seed: int, device: Any) -> np.ndarray:
    """``evidence.image_probs`` (:func:`image_probabilities`), made on first use (the prompts' judge and the
    image seed share it)."""
    if evidence.image_probs is None:
        features, usable = evidence.features, evidence.usable
        evidence.image_probs = image_probabilities(features, labels, usable, n_classes, seed=seed, device=device)
    return evidence.image_probs


def seed_from_images(evidence: Any, labels: np.ndarray, n_classes: int, *, seed: int, device: Any) -> np.ndarray:
    """``evidence.image_seed``, made on first use (the collapse check and the selection share it)."""
    if evidence.image_seed is None:
        probs = probs_from_images(evidence, labels, n_classes, seed=seed, device=device)
        evidence.image_seed = image_seed(probs, labels, evidence.usable, n_classes)
    return evidence.image_seed


def collapse_anchor(evidence: Any, labels: np.ndarray, n_classes: int, *, seed: int, device: Any) -> np.ndarray:
    """int [N]: the class the image evidence gives each row, what learned prompts are judged against
    (:mod:`deft_clean.detecting.early_stop`, ``selection.judge_prompts``), -1 where it gives none. Where the text
    view is informative: the image probe's top-1 on every usable row (the same yardstick for the zero-shot and
    the learned prompts, so neither is judged on rows the other chose); else the label on the image seed's rows
    (zero-shot on names CLIP cannot read confirms nothing, so every learned prompt would look collapsed)."""
    if evidence.text_informative:  # a yardstick only: fitted on a sample of at most ANCHOR_ROWS (or 100 a class)
        limit = max(ANCHOR_ROWS, ANCHOR_ROWS_PER_CLASS * n_classes)
        usable = evidence.usable
        probs = image_probabilities(
            evidence.features, labels, usable, n_classes, seed=seed, device=device, max_rows=limit
        )
        return np.where(usable, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    return np.where(seed_from_images(evidence, labels, n_classes, seed=seed, device=device), labels, -1)
