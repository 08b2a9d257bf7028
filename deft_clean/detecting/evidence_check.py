"""Can the evidence support a flag? An out-of-sample check run by every ``detect``, and the flags it withholds.

The detector grows a clean set from rows its own probes agree with. When the images carry little class
information this confirms itself: the probes become confident about a split the images do not support and
flag rows at random (a clean texture set lost 44% of its rows that way). This module measures the evidence
in a way that cannot confirm itself and withholds the flags it cannot support.

Three views of each row, none of which saw the row's own label:

- ``G``: the given label;
- ``I``: an image probe fitted on *all* rows (not a selection), cross-fitted, so each row is scored by a probe
  that never trained on it;
- ``T``: the zero-shot text prompts, which never see any label.

Agreement between two views beyond chance is Cohen's kappa. Under the model "a view is informed with
probability s and guesses from its marginal otherwise", kappa(u, v) ~ s_u * s_v, so three views give each
one's reliability (the triplet method of weak supervision): ``s_G = sqrt(k_GI * k_GT / k_IT)``. That tells
heavy noise apart from weak evidence: at 60% symmetric noise the labels agree with the images only 35% of the
time, yet the image and text views agree with each other far beyond chance; when the model cannot see the
classes, the image and text views agree with nothing. The share of wrong labels is then
``(1 - s_G) * (1 - chance)``. Divided by the flagged share (capped at 1) it bounds the precision of the flags
from above (every wrong label flagged); twice the share of flags that look like ordinary members of their
suggested class (:func:`typical_share`) bounds it from below at heavy noise. The expected flag precision shown
to users lies between the two (nearer the upper bound the noisier the labels), on the flags that stand (after
withholding and clearing), with the two as its range, widened to the 95% Wilson interval of that many flags
(:func:`flag_precision`; calibrated against planted truth by ``benchmarks/precision_calibration.py``).

Where the text view is uninformative (``k_IT`` below :data:`MIN_VIEW_KAPPA`, e.g. class names CLIP does
not know), one view cannot tell noise from weakness (``k_GI = s_G * s_I`` splits either way), so the image
view alone must agree with the labels at ``k_GI >= MIN_IMAGE_KAPPA``: it is then informed on at least that
share of rows, which weak evidence cannot reach at any noise level and strong evidence reaches up to ~25%
noise. Above that, flags are withheld unless the class names mean something to CLIP (``--class-names``).
The precision is then not estimated (``None``).

A class whose images the image view does not set apart from the others' (one-sided two-proportion test)
has its flags withheld. The same test runs per confused pair of classes, on the rows labelled either that
look like either, with image and text views reduced to "which of the two"; a pair neither view can tell
apart has its flags withheld and is named. A row stays flagged on otherwise withheld evidence only when both
sides are sure (:data:`BOTH_SURE`). Where the images are strong (``k_GI >= MIN_IMAGE_KAPPA``) and the flags would
still be right less than half of the time (a clean or nearly clean set: the doubts are hard images), the
flags whose image is not an ordinary member of its suggested class are cleared instead (:func:`_clear`).

Kappas share the CLIP image encoder between the image and text views, so their errors are correlated and
``s_G`` is slightly underestimated on clean data (a clean set reads as ~5% noise); this errs towards keeping
the flags of a clean, well-seen set, never towards trusting weak evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..outputs.summary import evidence_line

MIN_PRECISION = 0.5  # flags expected to be wrong more often than right are withheld
MIN_VIEW_KAPPA = 0.2  # image-text agreement beyond chance for the text view to count as independent evidence
MIN_IMAGE_KAPPA = 0.6  # image-label agreement beyond chance that the image view alone must reach
ALPHA = 1e-3  # one-sided significance for "beats chance"
BOTH_SURE = 0.9  # image and text probabilities of the suggested class at which a withheld row stays flagged
CHECK_FOLDS = 5  # folds of the all-rows probe
MAX_PAIRS = 2000  # confused pairs judged one by one (most flagged first); the rest follow the overall verdict
MIN_PAIR_ROWS = 50  # pairs with fewer rows labelled either follow the overall verdict (a test there is weak)
MIN_CLASS_ROWS = 5  # classes with fewer rows are not judged on their own
MIN_TYPICAL_FLAGS = 10  # fewer flags give no typicality estimate of their precision
# A precision range wider than this is shown as a range with no point. Narrower ranges held the point within 12.7
# points of planted truth (mean 3.4, results/precision_calibration.md); wider ones come from few flags or from the
# noise estimate's floor of ~5% on nearly clean labels, where the upper bound means little
PIN_WIDTH = 0.3
# The range reaches at least this far below the point: on the flags of the label posterior (p_clean < 0.5) the
# typical share errs high, the flags being sure ones that look like their suggested class whether right or wrong;
# measured 1-7 points above the planted truth in 35 of 95 runs, whose ranges then missed it (precision_calibration)
ESTIMATE_MARGIN = 0.07
SPLIT_PARTS = 3  # the split view: one probe per part, each row judged by the two probes of the other parts
# The split view's two probes must agree at this kappa for flags to stand on it: probes on the same image
# encoder share their mistakes on ambiguous images, which the triplet reads as label noise. Measured: dimly
# seen classes, clean labels 0.41-0.45; strong digits at 60% symmetric noise 0.51-0.66 (thin: see docs).
MIN_SPLIT_KAPPA = 0.5
SETTLED_FRACTION = 0.01  # the clean set has settled when its last round changed at most this share of rows


@dataclass
class ViewAgreement:
    """Agreement of two views over some rows: observed, expected by chance, and Cohen's kappa."""

    observed: float
    chance: float
    kappa: float
    p_value: float  # one-sided, observed agreement no better than chance
    rows: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


@dataclass
class EvidenceCheck:
    """What :func:`check_evidence` found; ``to_metadata`` is the documented ``evidence`` object."""

    reliable: bool  # flags on this evidence are expected to be mostly right overall
    image_accuracy: float  # all-rows image probe (out of sample) vs the given labels
    image_interval: tuple[float, float]  # its 95% Wilson interval
    text_accuracy: float  # zero-shot prompts vs the given labels
    chance: float  # accuracy of always answering the largest class
    image_p_value: float  # image accuracy no better than chance (one-sided)
    kappa_image_label: float
    kappa_text_label: float
    kappa_image_text: float
    label_noise: float | None  # estimated share of wrong labels (None: not estimable)
    expected_flag_precision: float | None  # expected share of the flags that stand whose label is wrong (None: unknown)
    flags_raised: int  # rows the selection flagged
    flags_withheld: int  # of those, rows not flagged because the evidence cannot support them
    settled: bool  # the clean set stopped changing before the round limit
    flags_cleared: int = 0  # of those raised, hard cases between classes returned to the clean set (not withheld)
    advice: str = ""  # what to do about withheld flags
    reasons: list[str] = field(default_factory=list)  # why flags were withheld, one line each
    per_class: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # judged confused pairs, most flagged first
    text_informative: bool = True  # the zero-shot prompts know the classes (else the split image view anchors)
    views: list[str] = field(default_factory=lambda: ["image", "text"])  # the label-free views judged
    kappa_image_split: float | None = None  # agreement of the two split-view probes (None: not computed)
    image_reliability: float | None = None  # share of rows a split-view probe is informed on (sqrt of that kappa)
    flag_precision_interval: list[float] | None = None  # plausible range [low, high] of expected_flag_precision

    def to_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_interval"] = list(self.image_interval)
        return _finite(data)

    def warning(self) -> str | None:
        """The one terminal line, or None when nothing was withheld and the evidence is reliable."""
        return evidence_line(self.to_metadata())


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (0, 1 for n == 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def above_chance_p(observed: float, chance: float, n: int) -> float:
    """One-sided p-value of an agreement rate ``observed`` over ``n`` rows against ``chance`` (normal approx.)."""
    if n <= 0 or chance >= 1.0:
        return 1.0
    sd = math.sqrt(max(chance * (1 - chance), 1e-12) / n)
    return 0.5 * math.erfc((observed - chance) / sd / math.sqrt(2))


def agreement(u: np.ndarray, v: np.ndarray, n_values: int) -> ViewAgreement:
    """Cohen's kappa of two label vectors (ints in [0, n_values))."""
    n = len(u)
    if n == 0:
        return ViewAgreement(float("nan"), float("nan"), 0.0, 1.0, 0)
    observed = float(np.mean(u == v))
    pu = np.bincount(u, minlength=n_values) / n
    pv = np.bincount(v, minlength=n_values) / n
    chance = float(np.dot(pu, pv))
    kappa = (observed - chance) / (1 - chance) if chance < 1 else 0.0
    return ViewAgreement(observed, chance, float(kappa), above_chance_p(observed, chance, n), n)


def label_reliability(gi: ViewAgreement, gt: ViewAgreement, it: ViewAgreement) -> float | None:
    """``s_G`` of the triplet method, or None when the text view cannot anchor it (see the module docstring)."""
    if not (it.significant and it.kappa >= MIN_VIEW_KAPPA):
        return None
    if gi.kappa <= 0 or gt.kappa <= 0:
        return 0.0
    return float(min(1.0, math.sqrt(gi.kappa * gt.kappa / it.kappa)))


def all_rows_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int, device: Any) -> np.ndarray:
    """[M, K] out-of-sample class probabilities from probes fitted on all rows (cross-fitted, no selection).

    The same probe family as the selection's (:func:`deft_clean.detecting.probes.choose_probe`): linear
    logistic regressions in CHECK_FOLDS folds, or, with many small classes or a large N x K, the leave-one-out
    nearest-class-mean probe (one matrix product)."""
    import torch

    from .probes import ClassMeans, CrossFit, choose_probe, prepare_features

    x = prepare_features(torch.as_tensor(features, device=device))
    y = torch.as_tensor(labels, device=x.device, dtype=torch.long)
    if choose_probe(labels, n_classes) == "linear":
        fit: Any = CrossFit(x, y, n_classes, folds=CHECK_FOLDS, seed=seed + 1)
    else:
        fit = ClassMeans(x, y, n_classes)
    return fit(np.ones(len(labels), dtype=bool)).cpu().numpy()


def split_views(
    features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int, device: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Two label-free image views of every row, from probes trained on disjoint rows: (int [M], int [M]).

    The rows fall into SPLIT_PARTS stratified parts; one probe (the selection's family) is fitted on each part's
    labels alone, and a row is judged by the probes of the two other parts, neither of which saw it or each
    other's rows. Their label-noise errors are then independent, so their agreement beyond chance estimates
    how often each is informed (kappa ~ s^2) with no text view and no trust in the labels: two probes trained
    on 60%-noisy thirds of strong images still agree; on images the model cannot see they agree by chance."""
    import torch

    from .probes import balance_weights, choose_probe, fit_probes, fold_ids, prepare_features

    x = prepare_features(torch.as_tensor(features, device=device))
    y = torch.as_tensor(labels, device=x.device, dtype=torch.long)
    part = fold_ids(labels, SPLIT_PARTS, seed + 2)
    parts = torch.as_tensor(part, device=x.device)
    predictions = []  # [N] per probe
    if choose_probe(labels, n_classes) == "linear":
        weights = torch.zeros(SPLIT_PARTS, len(labels), device=x.device)
        for p in range(SPLIT_PARTS):
            weights[p, parts == p] = balance_weights(y[parts == p], y, n_classes)
        w, b = fit_probes(x, y, n_classes, weights)
        predictions = [(x @ w[p] + b[p]).argmax(1).cpu().numpy() for p in range(SPLIT_PARTS)]
    else:  # nearest class mean of each part's rows
        z = torch.nn.functional.normalize(x, dim=1)
        step = max(1, (1 << 22) // max(n_classes, 1))
        for p in range(SPLIT_PARTS):
            sums = torch.zeros(n_classes, z.shape[1], device=z.device).index_add_(0, y[parts == p], z[parts == p])
            means = torch.nn.functional.normalize(sums, dim=1)  # [K, D]
            predictions.append(
                torch.cat([(z[i : i + step] @ means.t()).argmax(1) for i in range(0, len(z), step)]).cpu().numpy()
            )
    stacked = np.stack(predictions)  # [P, N]
    m = np.arange(len(labels))
    return stacked[(part + 1) % SPLIT_PARTS, m], stacked[(part + 2) % SPLIT_PARTS, m]


@dataclass
class _Views:
    """The three views over the usable rows (index m), and the flags raised there."""

    labels: np.ndarray  # int64 [M] G
    image: np.ndarray  # float32 [M, K] all-rows probe
    text: np.ndarray  # float32 [M, K] zero-shot posterior
    flagged: np.ndarray  # bool [M]
    suggested: np.ndarray  # int64 [M]
    n_classes: int
    split: tuple[np.ndarray, np.ndarray] | None = None  # two split-view predictions [M] (no text view to anchor)
    text_informative: bool = True  # the zero-shot prompts know the classes


def _pair_verdict(views: _Views, i: int, j: int, rows: np.ndarray, reliability: float) -> dict[str, Any]:
    """Can the views tell class i from class j on ``rows`` (labelled either, looking like either)? (binary views).

    Seen when the image and text views agree beyond chance, or when the image view alone agrees with the
    labels at MIN_IMAGE_KAPPA of what labels of this ``reliability`` (``s_G``) allow at all."""
    g = (views.labels[rows] == j).astype(np.int64)
    image = (views.image[rows, j] > views.image[rows, i]).astype(np.int64)
    text = (views.text[rows, j] > views.text[rows, i]).astype(np.int64)
    gi, it = agreement(g, image, 2), agreement(image, text, 2)
    seen = (it.significant and it.kappa >= MIN_VIEW_KAPPA) or (
        gi.significant and gi.kappa >= MIN_IMAGE_KAPPA * reliability
    )
    if views.split is not None:
        seen = seen or _split_tells_apart(views.split, i, j, rows)
    return {"kappa_image_label": gi.kappa, "kappa_image_text": it.kappa, "rows": int(len(rows)), "seen": bool(seen)}


def _split_tells_apart(split: tuple[np.ndarray, np.ndarray], i: int, j: int, rows: np.ndarray) -> bool:
    """The two split-view probes (trained on disjoint rows, neither on these) agree on "i or j?" beyond chance,
    on the ``rows`` both put in one of the two: the label-free stand-in for the image-text test of a pair."""
    a, b = split[0][rows], split[1][rows]
    both = np.isin(a, (i, j)) & np.isin(b, (i, j))
    ab = agreement((a[both] == j).astype(np.int64), (b[both] == j).astype(np.int64), 2)
    return bool(ab.significant and ab.kappa >= MIN_VIEW_KAPPA)


def judge_pairs(
    views: _Views, classes: list[str], reliability: float
) -> tuple[list[dict[str, Any]], set[tuple[int, int]]]:
    """Verdicts for the confused pairs with flags, most flagged first; and the unordered pairs not seen."""
    f = np.flatnonzero(views.flagged)
    a, b = np.minimum(views.labels[f], views.suggested[f]), np.maximum(views.labels[f], views.suggested[f])
    keys, counts = np.unique(a * views.n_classes + b, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:MAX_PAIRS]
    by_class = np.argsort(views.labels, kind="stable")
    bounds = np.searchsorted(views.labels[by_class], np.arange(views.n_classes + 1))
    verdicts, unseen = [], set()
    looks = views.image.argmax(1)
    for key, count in zip(keys[order], counts[order], strict=True):
        i, j = divmod(int(key), views.n_classes)
        rows = np.concatenate([by_class[bounds[i] : bounds[i + 1]], by_class[bounds[j] : bounds[j + 1]]])
        # only the rows that look like one of the two: at heavy noise most rows labelled i or j are other
        # classes, whose "i or j?" answers are arbitrary in both views and would dilute the test
        rows = rows[(looks[rows] == i) | (looks[rows] == j)]
        if len(rows) < MIN_PAIR_ROWS:
            continue
        verdict = {"classes": [classes[i], classes[j]], "flags": int(count)}
        verdict.update(_pair_verdict(views, i, j, rows, reliability))
        verdicts.append(verdict)
        if not verdict["seen"]:
            unseen.add((i, j))
    return verdicts, unseen


def sets_apart(reference: np.ndarray, picked: np.ndarray, k: int) -> np.ndarray:
    """bool [K]: ``picked`` (ints [M]) says class c for rows where ``reference`` says c more often than for the
    other rows (one-sided two-proportion test at ALPHA)."""
    counts = np.bincount(reference, minlength=k).astype(np.float64)
    hits = np.bincount(reference[picked == reference], minlength=k).astype(np.float64)
    elsewhere = np.bincount(picked[picked != reference], minlength=k).astype(np.float64)
    others = len(reference) - counts
    p1, p0 = hits / np.maximum(counts, 1), elsewhere / np.maximum(others, 1)
    pooled = (hits + elsewhere) / max(len(reference), 1)
    sd = np.sqrt(np.maximum(pooled * (1 - pooled), 1e-12) * (1 / np.maximum(counts, 1) + 1 / np.maximum(others, 1)))
    p_values = 0.5 * np.vectorize(math.erfc)((p1 - p0) / sd / math.sqrt(2))
    return (p_values < ALPHA) & (counts > 0)


def visible_classes(views: _Views, *, text_informative: bool) -> np.ndarray:
    """bool [K]: the model sets class k's images apart: the image view picks k for rows labelled k more often
    than for the other rows, or (when the text view is informative) the image and text views agree on k beyond
    chance, which needs no label at all (a rare class whose label most rows wear wrongly passes that way).
    Noise alone cannot hide a class from the first test (at 60% noise 40% of its rows are still its own,
    against ~7% elsewhere); a class whose images look like everyone else's fails both."""
    k = views.n_classes
    image = views.image.argmax(1)
    small = np.bincount(views.labels, minlength=k) < MIN_CLASS_ROWS  # too few rows to judge: not withheld
    visible = sets_apart(views.labels, image, k) | small
    if text_informative:
        visible |= sets_apart(views.text.argmax(1), image, k)
    return visible


def per_class(
    views: _Views, classes: list[str], noise: float | None, disagree: float, visible: np.ndarray
) -> list[dict[str, Any]]:
    """Per class: rows, image accuracy (with interval), whether the images set it apart, flags raised,
    estimated wrong-label share (with interval)."""
    out = []
    counts = np.bincount(views.labels, minlength=views.n_classes)
    hits = np.bincount(views.labels[views.image.argmax(1) == views.labels], minlength=views.n_classes)
    flags = np.bincount(views.labels[views.flagged], minlength=views.n_classes)
    for k, name in enumerate(classes):
        n = int(counts[k])
        low, high = wilson(float(hits[k]), n)
        entry: dict[str, Any] = {
            "class": name,
            "rows": n,
            "image_accuracy": float(hits[k] / n) if n else None,
            "image_interval": [low, high],
            "visible": bool(visible[k]),
            "flags": int(flags[k]),
            "noise": None,
            "noise_interval": None,
        }
        if noise is not None and n and disagree > 0:
            # the overall wrong share, spread over classes as the image view's disagreement with their labels
            scale = noise / disagree
            entry["noise"] = float(min(1.0, scale * (1 - hits[k] / n)))
            entry["noise_interval"] = [float(min(1.0, scale * (1 - high))), float(min(1.0, scale * (1 - low)))]
        out.append(entry)
    return out


def check_evidence(
    features: np.ndarray,
    labels: np.ndarray,
    usable: np.ndarray,
    text: np.ndarray,
    is_clean: np.ndarray,
    suggested: np.ndarray,
    classes: list[str],
    *,
    rounds: list[int] | None = None,
    settled: bool | None = None,
    random_weights: bool = False,
    seed: int = 0,
    device: Any = None,
    text_informative: bool = True,
) -> tuple[EvidenceCheck, np.ndarray]:
    """Measure the evidence behind a selection and decide which of its flags to withhold.

    Args:
        features: [N, D] image features; labels: [N] given labels; usable: bool [N].
        text: [N, K] zero-shot posterior (never trained on labels).
        is_clean, suggested: the selection's decision per row ([N]).
        rounds: the clean set's size after each growth round; ``settled``: whether it stopped changing before
            the round limit (None: judged from ``rounds``).
        random_weights: the model has random weights (``--pretrained none``): nothing it says is evidence.
        text_informative: the zero-shot prompts know the classes (:func:`opaque_names.text_informative`); where they
            do not, or the text view does not anchor the triplet, the split image view (:func:`split_views`) does.
    Returns:
        ``(check, withheld, cleared)``: bool [N] each: flagged rows the evidence cannot support (kept, marked
        ``withheld``), and flags returned to the clean set as hard cases between classes (:func:`_clear`).
    """
    n_classes = len(classes)
    rows = np.flatnonzero(usable)
    y = labels[rows]
    views = _Views(
        y, np.zeros((len(rows), n_classes), np.float32), text[rows], ~is_clean[rows], suggested[rows], n_classes
    )
    views.text_informative = text_informative
    if len(rows) >= 2 * CHECK_FOLDS and len(np.unique(y)) > 1:
        views.image = all_rows_probe(features[rows], y, n_classes, seed=seed, device=device)
        if not _text_anchors(views):
            views.split = split_views(features[rows], y, n_classes, seed=seed, device=device)
    verdict = _verdict(views, random_weights)
    withheld_m = _withhold(views, verdict, classes)
    cleared_m = _clear(views, verdict) & ~withheld_m
    settled = _settled(rounds, len(rows)) if settled is None else settled
    if not settled:
        verdict.reasons.append("the clean set was still changing after the last round")
    withheld, cleared = np.zeros(len(labels), dtype=bool), np.zeros(len(labels), dtype=bool)
    withheld[rows], cleared[rows] = withheld_m, cleared_m
    standing = views.flagged & ~withheld_m & ~cleared_m
    precision, interval = flag_precision(views, standing, verdict.noise, selected=bool(cleared_m.any()))
    accuracy, chance = verdict.accuracy, verdict.chance
    check = EvidenceCheck(
        reliable=verdict.reliable,
        image_accuracy=accuracy,
        image_interval=wilson(accuracy * len(y), len(y)),
        text_accuracy=verdict.gt.observed,
        chance=chance,
        image_p_value=verdict.p_value,
        kappa_image_label=verdict.gi.kappa,
        kappa_text_label=verdict.gt.kappa,
        kappa_image_text=verdict.it.kappa,
        label_noise=verdict.noise,
        expected_flag_precision=precision,
        flag_precision_interval=interval,
        flags_raised=int(views.flagged.sum()),
        flags_withheld=int(withheld_m.sum()),
        flags_cleared=int(cleared_m.sum()),
        settled=settled,
        advice=verdict.advice,
        reasons=verdict.reasons,
        per_class=per_class(views, classes, verdict.noise, 1 - accuracy, verdict.visible),
        pairs=verdict.pairs,
        text_informative=text_informative,
        views=_view_names(views, verdict),
        kappa_image_split=verdict.split_kappa,
        image_reliability=verdict.image_reliability,
    )
    return check, withheld, cleared


def _clear(views: _Views, verdict: _Verdict) -> np.ndarray:
    """bool [M]: flags returned to the clean set as hard cases: where most flags look like hard images between
    classes (expected precision below MIN_PRECISION) on strong images, the flags whose image is not an ordinary
    member of its suggested class (:func:`typical`). Wrong labels are ordinary members of their true class half
    of the time or more, the model's own doubts rarely: a clean copy keeps nearly all its rows, a copy with 1%
    wrong labels keeps the flags most likely to be right, and the verdict stays reliable."""
    if not verdict.hard_cases:
        return np.zeros(len(views.labels), dtype=bool)
    cleared = views.flagged & ~typical(views)
    verdict.reasons.append(
        f"{int(cleared.sum())} of {int(views.flagged.sum())} flags looked like hard cases between classes rather "
        "than wrong labels and were cleared (flag_reason says so); the labels may be cleaner than the model can "
        "tell"
    )
    return cleared


def _text_anchors(views: _Views) -> bool:
    """The text view can anchor the triplet: it knows the classes and agrees with the image view."""
    k = views.n_classes
    return views.text_informative and _text_informative(agreement(views.image.argmax(1), views.text.argmax(1), k))


def _view_names(views: _Views, verdict: _Verdict) -> list[str]:
    """The label-free views the verdict rests on, for the metadata."""
    return ["image", *(["text"] if verdict.text_anchor else []), *(["image-split"] if views.split is not None else [])]


@dataclass
class _Verdict:
    """The overall figures and decision of :func:`_verdict`."""

    reliable: bool
    accuracy: float
    chance: float
    p_value: float
    gi: ViewAgreement
    gt: ViewAgreement
    it: ViewAgreement
    reliability: float | None  # s_G (triplet), None when the text view cannot anchor it
    noise: float | None
    precision: float | None
    reasons: list[str]
    advice: str = ""
    visible: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    pairs: list[dict[str, Any]] = field(default_factory=list)
    unseen: set[tuple[int, int]] = field(default_factory=set)
    split_kappa: float | None = None  # kappa of the two split-view probes (None: not computed)
    image_reliability: float | None = None  # sqrt of it: the share of rows one such probe is informed on
    text_anchor: bool = False  # the text view anchored s_G (the triplet G, I, T)
    hard_cases: bool = False  # most flags are hard cases between classes: only the typical ones stand


def flag_precision(
    views: _Views, standing: np.ndarray, noise: float | None, *, selected: bool = False
) -> tuple[float | None, list[float] | None]:
    """Expected precision of the flags that stand (bool [M]) and its range [low, high] (None, None: no flags).

    Two estimates from the data bound it: the wrong-label share over the flagged share (:func:`_verdict`'s
    ``noise``, capped at 1), which assumes every wrong label is flagged and so errs high; and twice the share of
    typical flags (:func:`typical_share`), which errs low at heavy noise, where the probe trained on the noisy
    labels makes wrong labels look less ordinary, by more the noisier the labels. The point moves from the lower
    bound toward the upper one by the estimated wrong-label share; the range spans both, widened to the 95%
    Wilson interval of a proportion over that many flags, and at least ESTIMATE_MARGIN below the point (the
    estimator's own error on planted noise). Where the range is wider than PIN_WIDTH, or the
    lower bound is unknown (fewer than MIN_TYPICAL_FLAGS flags, or ``selected``: the flags that stand were kept
    for looking typical, so their typical share says nothing), the point is None and the range is the answer.
    Calibrated on planted noise by ``benchmarks/precision_calibration.py`` (results/precision_calibration.md).
    """
    n = int(standing.sum())
    if n == 0:
        return None, None
    high = 1.0 if noise is None else min(1.0, noise * len(standing) / n)
    low = None if selected else typical_share(views, np.flatnonzero(standing))
    if low is None:
        return None, [0.0, high]
    # the typical share errs low by more the noisier the labels (the probe learns more of them): move from it
    # toward the upper bound by the estimated wrong-label share; with no noise estimate it stands alone
    point = low if noise is None else low + noise * (high - low)
    low, high = (low, low) if noise is None else (min(low, high), max(low, high))
    w_low, w_high = wilson(point * n, n)
    interval = [with_margin(point, min(low, w_low)), float(max(high, w_high))]
    return (float(point) if interval[1] - interval[0] <= PIN_WIDTH else None), interval


def with_margin(point: float | None, low: float) -> float:
    """The range's lower end: ``low``, or ESTIMATE_MARGIN below the point where that is lower (never below 0)."""
    return float(low if point is None else max(0.0, min(low, point - ESTIMATE_MARGIN)))


def typical_share(views: _Views, rows: np.ndarray) -> float | None:
    """Expected precision of the flags ``rows`` (indices) from how typical each looks of its suggested class.

    A wrong label's image is an ordinary member of its true class; a flag the model raised by mistake sits on
    a hard image, between classes. So the all-rows probe's probability of the suggested class is compared with
    its median over the rows that class's label and the probe agree on: wrong labels exceed it half of the
    time, mistakes rarely. Twice the share above the median estimates the precision (None: too few flags).
    The image view alone cannot tell which flags are wrong labels when the images are weak (both sides are
    then ordinary); it is the check for strong images and clean labels, where the triplet cannot see that the
    few disagreements are the model's own.
    """
    if len(rows) < MIN_TYPICAL_FLAGS:
        return None
    return float(min(1.0, 2.0 * typical(views)[rows].mean()))


def typical(views: _Views) -> np.ndarray:
    """bool [M]: the all-rows probe puts the row's suggested class at or above that class's median over the
    rows whose label it agrees with (an ordinary member of the suggested class; see :func:`typical_share`)."""
    k = views.n_classes
    predicted = views.image.argmax(1)
    agree = np.flatnonzero(predicted == views.labels)
    medians = np.full(k, np.nan)
    by_class = agree[np.argsort(views.labels[agree], kind="stable")]
    bounds = np.searchsorted(views.labels[by_class], np.arange(k + 1))
    for j in range(k):
        own = by_class[bounds[j] : bounds[j + 1]]
        if len(own) >= MIN_CLASS_ROWS:
            medians[j] = np.median(views.image[own, j])
    overall = float(np.median(views.image[agree, views.labels[agree]])) if len(agree) else 1.0
    medians = np.where(np.isnan(medians), overall, medians)
    target = views.suggested.clip(0)
    return (views.image[np.arange(len(target)), target] >= medians[target]) & (views.suggested >= 0)


def _verdict(views: _Views, random_weights: bool) -> _Verdict:
    """Kappas, noise, expected flag precision and the overall decision (see the module docstring)."""
    k, y = views.n_classes, views.labels
    image_pred, text_pred = views.image.argmax(1), views.text.argmax(1)
    gi, gt, it = agreement(y, image_pred, k), agreement(y, text_pred, k), agreement(image_pred, text_pred, k)
    prior = np.bincount(y, minlength=k) / max(len(y), 1)
    chance = float(prior.max()) if len(y) else 1.0
    accuracy = float(np.mean(image_pred == y)) if len(y) else 0.0
    p_value = above_chance_p(accuracy, chance, len(y))
    s_g = label_reliability(gi, gt, it) if views.text_informative else None
    text_anchor = s_g is not None
    split = _split_agreement(views) if s_g is None else None  # (G-A, G-B, A-B) of the split view
    if split is not None:
        s_g = label_reliability(*split)
    noise = None if s_g is None else float((1 - s_g) * (1 - float(np.dot(prior, prior))))
    flagged_share = float(views.flagged.mean()) if len(y) else 0.0
    estimates = [typical_share(views, np.flatnonzero(views.flagged))]
    if noise is not None and flagged_share > 0:
        estimates.append(min(1.0, noise / flagged_share))
    known = [e for e in estimates if e is not None]
    precision = min(known) if known else None
    verdict = _Verdict(True, accuracy, chance, p_value, gi, gt, it, s_g, noise, precision, [], text_anchor=text_anchor)
    if split is not None:
        verdict.split_kappa = split[2].kappa
        verdict.image_reliability = math.sqrt(max(split[2].kappa, 0.0))
    if random_weights:
        verdict.reliable = False
        verdict.reasons.append("the model has random weights (--pretrained none), so its features are not evidence")
    elif p_value >= ALPHA or gi.kappa <= 0:
        verdict.reliable = False
        verdict.reasons.append("the image evidence does not beat chance: this model cannot see these classes")
    elif s_g is None and gi.kappa < MIN_IMAGE_KAPPA:
        verdict.reliable = False
        verdict.reasons.append(
            f"the text view cannot confirm the image view and the image view alone is weak (kappa {gi.kappa:.2f}): "
            "this model cannot see these classes well enough, or CLIP does not know their names (--class-names)"
        )
    elif split is not None and s_g is not None and split[2].kappa < MIN_SPLIT_KAPPA:
        verdict.reliable = False
        verdict.reasons.append(
            f"two image probes trained on disjoint rows agree at kappa {verdict.split_kappa:.2f} only: the images "
            "are too weak for flags to be mostly right, and the text view cannot help (CLIP does not know the "
            "class names: --class-names)"
        )
    elif precision is not None and precision < MIN_PRECISION and gi.kappa >= MIN_IMAGE_KAPPA:
        verdict.hard_cases = True  # strong images, few wrong labels: the atypical flags are cleared, see _clear
    elif precision is not None and precision < MIN_PRECISION:
        verdict.reliable = False
        verdict.reasons.append(
            "the flagged images look like hard cases between classes rather than wrong labels: the labels may be "
            "cleaner than the model can tell"
        )
        verdict.advice = "the withheld rows (withheld == true) are the model's doubts, not errors to delete"
    return verdict


def _split_agreement(views: _Views) -> tuple[ViewAgreement, ViewAgreement, ViewAgreement] | None:
    """Agreements label-probe A, label-probe B and A-B of the split view (None: not computed)."""
    if views.split is None:
        return None
    a, b = views.split
    k, y = views.n_classes, views.labels
    return agreement(y, a, k), agreement(y, b, k), agreement(a, b, k)


def _withhold(views: _Views, verdict: _Verdict, classes: list[str]) -> np.ndarray:
    """bool [M]: flags to withhold: all when unreliable; else those of hidden classes and unseen pairs."""
    k = views.n_classes
    reliability = verdict.reliability if verdict.reliability is not None else max(verdict.gi.kappa, 0.0)
    verdict.pairs, verdict.unseen = judge_pairs(views, classes, reliability)
    text_used = views.text_informative and _text_informative(verdict.it)
    verdict.visible = visible_classes(views, text_informative=text_used)
    withheld = np.zeros(len(views.labels), dtype=bool)
    if not verdict.reliable:
        withheld = views.flagged.copy()
    if verdict.reliable and not verdict.visible.all():
        withheld |= views.flagged & (~verdict.visible[views.labels] | ~verdict.visible[views.suggested.clip(0)])
        hidden = [classes[c] for c in np.flatnonzero(~verdict.visible)]
        more = f" and {len(hidden) - 5} more" if len(hidden) > 5 else ""
        verdict.reasons.append(
            f"the images of {', '.join(repr(c) for c in hidden[:5])}{more} look like the other classes' to this "
            "model, so flags from or to them are withheld"
        )
    if verdict.reliable and verdict.unseen:
        lo, hi = np.minimum(views.labels, views.suggested), np.maximum(views.labels, views.suggested)
        keys = [a * k + b for a, b in verdict.unseen]
        withheld |= views.flagged & np.isin(lo * k + hi, keys)
        names = ", ".join(f"{classes[a]!r}/{classes[b]!r}" for a, b in sorted(verdict.unseen)[:5])
        more = f" and {len(verdict.unseen) - 5} more" if len(verdict.unseen) > 5 else ""
        verdict.reasons.append(
            f"the evidence cannot tell {names}{more} apart (or their labels are swapped too often to say), so flags "
            "between them are withheld"
        )
    if text_used:
        withheld &= ~_both_sure(views)
    return withheld


def _text_informative(it: ViewAgreement) -> bool:
    return it.significant and it.kappa >= MIN_VIEW_KAPPA


def _both_sure(views: _Views) -> np.ndarray:
    """bool [M]: flagged rows whose all-rows image probe and text evidence both put the suggested class at
    BOTH_SURE or above (the selection's own probe is not asked: it may have confirmed itself)."""
    m = np.arange(len(views.labels))
    text_sure = views.text[m, views.suggested.clip(0)] >= BOTH_SURE
    image_sure = views.image[m, views.suggested.clip(0)] >= BOTH_SURE
    return views.flagged & text_sure & image_sure & (views.suggested >= 0)


def _settled(rounds: list[int] | None, n: int) -> bool:
    """The clean set's last round changed at most SETTLED_FRACTION of the rows (no rounds: nothing to settle)."""
    if not rounds or len(rounds) < 2 or n == 0:
        return True
    return abs(rounds[-1] - rounds[-2]) <= SETTLED_FRACTION * n
