"""Visual evidence learned from selected rows only, and per-class flag thresholds.

The text side of a CLIP (zero-shot or DeFT's learned prompts) is robust to label noise but weak under
domain shift; a linear probe on image features is strong but learns whatever labels it is trained on,
systematic flips included. This module combines them:

1. start from a high-precision *seed* of rows whose text evidence agrees with the given label;
2. fit a linear probe on the seed only and score every row with a probe that did not train on it
   (cross-fitting: seed rows by the fold that held them out, the others by the mean of all folds); with
   many classes of few rows, or a large N x K, a nearest-class-mean probe with leave-one-out instead;
3. the new selection is every row that confident learning does not flag (its confident class, above the
   per-class threshold, is its label or there is none); repeat 2-3 until the set stops changing (a set
   whose size swings back and forth is damped: each row may then change membership only twice);
4. the final probabilities, fused with the text evidence, are the prior of each row's true class in a noise
   model fitted to the labels; a row is flagged when its label is more likely wrong than right
   (:func:`deft_clean.detecting.confident.label_posterior`, called by the selection).

Everything here works on arrays in memory ([N, D] features, [N, K] probabilities): seconds for
thousands of rows on a CPU, and the probe runs on whatever device the features are on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .confident import CHUNK, class_thresholds, confident_class

PROBE_L2 = 1.0  # L2 penalty of the probe, as scikit-learn's LogisticRegression(C=1) (sum of losses + 0.5|W|^2)
PROBE_ITERS = 100  # L-BFGS iterations of a probe's first fit
WARM_ITERS = 10  # L-BFGS iterations of a refit from the previous round's probe (its set changed a little)
FOLDS = 10  # cross-fitting folds: each probe trains on 90% of the selected rows
SCALE_FOLDS, SCALE_ROWS = 5, 50_000  # above SCALE_ROWS rows, 5 folds (80%) halve the linear probe's cost
FIT_ROWS, FIT_ROWS_PER_CLASS = 50_000, 200  # the linear probe fits on a stratified sample of at most max() of these
MAX_ROUNDS = 10  # clean-set growth rounds at most
BATCHED_LIMIT = 20_000_000  # fit all folds in one L-BFGS while F x N x K stays below this (~80 MB per tensor)
STABLE_FRACTION = 0.002  # stop growing when fewer than this fraction of rows change membership
MAX_CHANGES = 2  # once the set swings, a row that changed membership this often keeps its place
SWING_FRACTION = 0.02  # the set swings when its size moves by more than this fraction of rows, then back
SETTLE_FRACTION = 0.01  # churn: fewer rows than this fraction move, and no fewer than half as many as before
MIN_SETTLE_ROUNDS = 3  # churn is judged from this round on (the first rounds grow the set)
CHURN_SHARE = 0.8  # returning rows (they moved before) above this share of a round's movers: the set churns
FEW_ROWS = 30  # median rows a class below which the class-mean probe replaces the linear one
LINEAR_LIMIT = 5_000_000  # N x K above which the class-mean probe replaces the linear one (cost)
TEMPERATURE_ROWS = 5_000  # rows the class-mean probe's temperature is fitted on, at most


@dataclass
class VisualEvidence:
    """Result of :func:`grow_clean_set`; arrays are aligned with the input rows."""

    probs: np.ndarray  # float32 [N, K] cross-fitted probe probabilities
    clean: np.ndarray  # bool [N] final selection (rows confident learning does not flag)
    seed_size: int  # rows in the initial seed
    rounds: list[int] = field(default_factory=list)  # clean-set size after each round
    converged: bool = True  # False when the round limit stopped a set that was still changing
    probe: str = "linear"  # "linear" (cross-fitted logistic regressions) or "class-mean" (many classes)


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


def prepare_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise then standardise each dimension over the rows: [N, D] -> [N, D] float32."""
    x = F.normalize(features.float(), dim=1)  # the one [N, D] copy; the rest is in place
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)  # both before the subtraction: bit-identical to (x - m) / s
    return x.sub_(mean).div_(std)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last dimension. torch's CPU kernel is ~5x slower for a few classes (measured
    4.4 vs 0.8 ms on [1437, 5, 10]), and the probes evaluate it hundreds of times."""
    z = logits - logits.amax(dim=-1, keepdim=True)
    return z - z.exp().sum(dim=-1, keepdim=True).log()


def fit_probes(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weights: torch.Tensor,
    *,
    l2: float = PROBE_L2,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    iters: int = PROBE_ITERS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """F multinomial logistic regressions on the same rows with different row weights, by one L-BFGS.

    Probe f minimises ``sum_i weights[f, i] * CE_i / n_f + 0.5 * l2 * |W_f|^2 / n_f`` with ``n_f`` the number
    of rows it uses (non-zero weight); the probes are independent, so one L-BFGS over all of them reaches
    each one's optimum with F times fewer Python-side steps than F separate fits.

    Args:
        x: [N, D] features; y: [N] labels in [0, n_classes); weights: [F, N] per-probe row weights, 0 = unused.
        init: (W [F, D, K], b [F, K]) to start from (a previous round's fit: a few iterations suffice).
    Returns:
        (W [F, D, K], b [F, K]).
    """
    folds, d = weights.shape[0], x.shape[1]
    if init is None:
        w = torch.zeros(folds, d, n_classes, device=x.device, dtype=x.dtype)
        b = torch.zeros(folds, n_classes, device=x.device, dtype=x.dtype)
    else:
        w, b = (t.clone() for t in init)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    n_used = (weights > 0).sum(dim=1).clamp(min=1).to(x.dtype)  # [F]
    coef = (weights.to(x.dtype) / n_used[:, None]).unsqueeze(1)  # [F, 1, N]
    decay = (l2 / n_used)[:, None, None]  # [F, 1, 1]
    n = x.shape[0]
    xt = x.t().contiguous()  # [D, N]
    onehot = F.one_hot(y, n_classes).t().to(x.dtype).unsqueeze(0)  # [1, K, N]
    label_rows = y.view(1, 1, n).expand(folds, 1, n)  # where each row's label sits along K
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iters if init is None else WARM_ITERS,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-7,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # The gradient of softmax cross-entropy in closed form: no autograd graph per evaluation (3x faster).
        # All probes in one matmul, laid out [F, K, N]: the softmax's reductions over K are then K-1 vectorised
        # passes over N-long rows (an [N, F, K] layout reduces over 10 contiguous numbers at a time: 2.4x slower
        # for the whole fit at 10k rows x 10 classes).
        z = (w.transpose(1, 2).reshape(folds * n_classes, d) @ xt).view(folds, n_classes, n) + b.unsqueeze(2)
        z -= z.amax(dim=1, keepdim=True)
        log_p = z.sub_(z.exp().sum(dim=1, keepdim=True).log_())  # [F, K, N], in place
        residual = (log_p.exp() - onehot).mul_(coef)  # [F, K, N]
        grad = (residual.view(folds * n_classes, n) @ x).view(folds, n_classes, d).transpose(1, 2)
        w.grad.copy_(grad + decay * w)
        b.grad.copy_(residual.sum(dim=2))
        label_log_p = log_p.gather(1, label_rows).squeeze(1)  # [F, N]
        return -(label_log_p * coef.squeeze(1)).sum() + 0.5 * (decay * w * w).sum()

    optimizer.step(closure)
    return w.detach(), b.detach()


def balance_weights(y_train: torch.Tensor, y_all: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-row weights giving each class the share it has among all given labels.

    A seed from text agreement under-represents classes the text side gets wrong; without this the probe
    learns a low prior for them and never admits their rows. [M] weights, mean 1.
    """
    train_counts = torch.bincount(y_train, minlength=n_classes).double()
    all_counts = torch.bincount(y_all, minlength=n_classes).double()
    target = all_counts / all_counts.sum()
    share = train_counts / train_counts.sum().clamp(min=1)
    ratio = torch.where(train_counts > 0, target / share.clamp(min=1e-12), torch.zeros_like(share))
    ratio = ratio.clamp(max=10.0)  # a class with a handful of seed rows must not dominate
    weights = ratio[y_train]
    return (weights / weights.mean().clamp(min=1e-12)).float()


def fold_ids(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per row: [N] ints in [0, folds), fixed for a whole run."""
    rng = np.random.default_rng(seed)
    ids = np.empty(len(y), dtype=np.int64)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        rows = rows[rng.permutation(len(rows))]
        ids[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return ids


class CrossFit:
    """Probes fitted on a chosen set of rows, each row scored by probes that did not train on it.

    Rows in the training set get the probe of their own (held-out) fold; the other rows the mean of all
    folds. Folds are fixed per run and each fold's probe starts from its previous fit. All folds are fitted
    together (:func:`fit_probes`) while their [F, N, K] logits stay under ``BATCHED_LIMIT`` elements, one
    by one on their own rows above it.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        n_classes: int,
        *,
        folds: int,
        seed: int,
        max_rows: int | None = None,
    ) -> None:
        self.x, self.y, self.n_classes = x, y, n_classes
        self.folds = max(2, min(folds, x.shape[0]))
        self.ids = torch.as_tensor(fold_ids(y.cpu().numpy(), self.folds, seed), device=x.device)
        self.params: tuple[torch.Tensor, torch.Tensor] | None = None  # (W [F, D, K], b [F, K])
        # max_rows: the probes fit on a fixed stratified sample of the rows (None: all); every row is still scored
        self.sample: torch.Tensor | None = None  # bool [N] rows the probes may train on
        if max_rows is not None and x.shape[0] > max_rows:
            order = stratified_order(y.cpu().numpy(), max_rows, n_classes, torch.Generator().manual_seed(seed + 7))
            self.sample = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            self.sample[torch.as_tensor(order, device=x.device)] = True

    def row_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """[F, N]: fold f trains on the selected rows outside fold f, class-balanced (see balance_weights)."""
        weights = torch.zeros(self.folds, self.x.shape[0], device=self.x.device)
        for f in range(self.folds):
            rows = mask & (self.ids != f)
            y_fit = self.y[rows]
            weights[f, rows] = balance_weights(y_fit, self.y, self.n_classes)
        return weights

    def __call__(self, train: np.ndarray) -> torch.Tensor:
        """[N, K] probabilities from probes fitted on the rows where ``train`` (bool [N]) is set (and, with a
        sample, in the sample: the other rows get the mean of the folds, none of which trained on them)."""
        mask = torch.as_tensor(train, device=self.x.device)
        if self.sample is not None:
            mask = mask & self.sample
            fit_rows = torch.nonzero(self.sample).squeeze(1)
            x, y = self.x[fit_rows], self.y[fit_rows]
            weights = self.row_weights(mask)[:, fit_rows]
        else:
            x, y = self.x, self.y
            weights = self.row_weights(mask)
        if self.folds * x.shape[0] * self.n_classes <= BATCHED_LIMIT:
            self.params = fit_probes(x, y, self.n_classes, weights, init=self.params)
        else:
            parts = []
            for f in range(self.folds):
                rows = weights[f] > 0
                init = None if self.params is None else (self.params[0][f : f + 1], self.params[1][f : f + 1])
                parts.append(fit_probes(x[rows], y[rows], self.n_classes, weights[f : f + 1, rows], init=init))
            self.params = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        w, b = self.params
        x = self.x
        probs = torch.zeros(x.shape[0], self.n_classes, device=x.device)
        for f in range(self.folds):  # [N, K] per fold, so memory stays O(N K)
            p = log_softmax(x @ w[f] + b[f]).exp()  # [N, K]
            held = mask & (self.ids == f)
            probs[held] = p[held]
            probs[~mask] += p[~mask] / self.folds
        return probs


def class_cosines(z: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """[B, K] cosine of unit rows ``z`` [B, D] to each class mean (``sums`` [K, D] of unit rows); a ``held``
    row's own class mean leaves the row itself out (closed form); a mean of no rows has cosine 0."""
    dots = z @ sums.t()  # [B, K]
    norms = sums.norm(dim=1)  # [K]
    cos = dots / norms.clamp(min=1e-6)
    own = dots.gather(1, y[:, None]).squeeze(1)  # [B] z . S_y, which includes z . z = 1 for a held row
    loo_norm = (norms[y] ** 2 - 2 * own + 1).clamp(min=0).sqrt()  # |S_y - z|
    loo = torch.where(loo_norm > 1e-3, (own - 1) / loo_norm.clamp(min=1e-6), torch.zeros_like(own))
    cos.scatter_(1, y[:, None], torch.where(held, loo, cos.gather(1, y[:, None]).squeeze(1))[:, None])
    return cos


class ClassMeans:
    """Cross-fitted nearest-class-mean probe: softmax(t * cos(row, class mean) + log prior), t fitted.

    Used when there are many classes with few rows each (a linear probe there is both weak, a few rows
    per class under an L2 penalty, and costly, F folds x L-BFGS over N x K logits). Leave-one-out replaces
    folds: a row in the training set is scored against its own class's mean without itself, in closed form,
    so one [N, D] x [D, K] product a round scores every row with a probe that did not train on it.
    Keeps the unit-length features ([N, D] float32, made in place from ``x``, which it takes over) and [K, D]
    class sums; no [N, K] besides the output.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
        self.z = x.div_(x.norm(dim=1, keepdim=True).clamp(min=1e-12))  # [N, D] unit rows, in place: x is ours
        self.y, self.n_classes = y, n_classes
        prior = torch.bincount(y, minlength=n_classes).to(x.dtype)  # [K] all given labels
        self.log_prior = (prior / prior.sum()).clamp(min=1e-12).log()
        self.temperature = 10.0

    def fit_temperature(self, sums: torch.Tensor, mask: torch.Tensor) -> float:
        """The t maximising the held-out log-likelihood of the label on (a sample of) the training rows."""
        rows = torch.nonzero(mask).squeeze(1)
        if len(rows) > TEMPERATURE_ROWS:
            pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:TEMPERATURE_ROWS]
            rows = rows[pick.to(rows.device)]
        y = self.y[rows]
        cos = class_cosines(self.z[rows], y, sums, torch.ones_like(y, dtype=torch.bool))  # [M, K]

        def loss(log_t: float) -> float:
            logits = float(np.exp(log_t)) * cos + self.log_prior
            return float((torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)).mean())

        low, high = 0.0, float(np.log(1000.0))  # golden-section search on log t, t in [1, 1000]
        ratio = (np.sqrt(5) - 1) / 2
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        fa, fb = loss(a), loss(b)
        for _ in range(20):
            if fa < fb:
                high, b, fb = b, a, fa
                a = high - ratio * (high - low)
                fa = loss(a)
            else:
                low, a, fa = a, b, fb
                b = low + ratio * (high - low)
                fb = loss(b)
        return float(np.exp((low + high) / 2))

    def __call__(self, train: np.ndarray) -> torch.Tensor:
        """[N, K] probabilities from class means of the rows where ``train`` (bool [N]) is set."""
        z, y = self.z, self.y
        mask = torch.as_tensor(train, device=z.device)
        sums = torch.zeros(self.n_classes, z.shape[1], device=z.device, dtype=z.dtype)
        sums.index_add_(0, y[mask], z[mask])  # [K, D]
        self.temperature = self.fit_temperature(sums, mask)
        probs = torch.empty(z.shape[0], self.n_classes, device=z.device, dtype=z.dtype)
        step = max(1, CHUNK // self.n_classes)
        for start in range(0, z.shape[0], step):  # [B, K] blocks: no [N, K] temporaries
            part = slice(start, start + step)
            cos = class_cosines(z[part], y[part], sums, mask[part])  # [B, K]
            logits = self.temperature * cos + self.log_prior
            probs[part] = torch.softmax(logits, dim=1)
        return probs


def choose_probe(labels: np.ndarray, n_classes: int) -> str:
    """ "class-mean" when classes are many and small or N x K is large, else "linear" (see :class:`ClassMeans`)."""
    counts = np.bincount(labels, minlength=n_classes)
    few = float(np.median(counts[counts > 0])) < FEW_ROWS if counts.any() else False
    return "class-mean" if few or len(labels) * n_classes > LINEAR_LIMIT else "linear"


def swings(rounds: list[int], current: int, proposed: int, n: int) -> bool:
    """Whether the clean set's size went one way by more than ``SWING_FRACTION * n`` rows and now goes back
    by as much (the oscillation a weak probe produces: 3.3k <-> 9.6k of 10k rows with 10 rows a class)."""
    if not rounds or len(rounds) < 2:
        return False
    before, after = current - rounds[-2], proposed - current
    return before * after < 0 and min(abs(before), abs(after)) > SWING_FRACTION * n


def churns(round_: int, moved: int, returning: int) -> bool:
    """Whether the set churns: from round ``MIN_SETTLE_ROUNDS`` on, more than ``CHURN_SHARE`` of the rows that
    move this round moved before (rows trading places at their class threshold with each refit, not a set
    that grows: on 10k x 1,000 overlapping classes with 40% noise ~700 rows, 87-97% of them returning, moved
    every round while the set stayed at 4.3k +- 40 until the round limit). A set that still grows has about
    half its movers returning (1.4k upscaled 8x8 digits at 40% noise: 40-60%); damping it at 50% stopped its
    growth early and cost 0.9 F1 points there, and at 80% still 0.65 points on 2k thick-stroke MNIST at 20%.
    Judged for the class-mean probe only (many classes, few rows each), where it was measured to help."""
    return round_ >= MIN_SETTLE_ROUNDS and moved > 0 and returning > CHURN_SHARE * moved


def settled(moved: list[int], n: int) -> bool:
    """Whether the clean set has settled, from the rows that moved in each round so far: fewer than
    ``STABLE_FRACTION`` of them in the last round, or churn: from round ``MIN_SETTLE_ROUNDS`` on, fewer than
    ``SETTLE_FRACTION`` moved and the count no longer halves (rows near their class threshold trade places
    with each refit; on 10k x 1,000 overlapping classes the set went 8233, 8238, ... 8261 until the limit)."""
    last = moved[-1]
    if last <= STABLE_FRACTION * n:
        return True
    return len(moved) >= MIN_SETTLE_ROUNDS and last <= SETTLE_FRACTION * n and 2 * last > moved[-2]


def grow_clean_set(
    features: torch.Tensor,
    labels: np.ndarray,
    seed_mask: np.ndarray,
    n_classes: int,
    *,
    seed: int = 0,
    max_rounds: int = MAX_ROUNDS,
    probe: str | None = None,
) -> VisualEvidence:
    """Steps 2-3 of the module docstring, from ``seed_mask`` (bool [N]) until the clean set is stable.

    ``probe``: "linear" or "class-mean"; None chooses by size (:func:`choose_probe`). The set stops when it
    has settled (:func:`settled`) or it returns to the set of two rounds before. Once its size swings
    (:func:`swings`) or, with the class-mean probe, it churns (:func:`churns`), a row that has changed
    membership ``MAX_CHANGES`` times keeps its place, so the movement dies out: every row can move only a
    bounded number of times, while rows moving for the first time still join or leave. ``converged`` says
    whether the stop came before ``max_rounds``.

    Args:
        features: [N, D] image features of usable rows (any scale; normalised here).
        labels: [N] given labels.
    """
    x = prepare_features(features)
    y = torch.tensor(labels, device=x.device, dtype=torch.long)
    kind = probe or choose_probe(labels, n_classes)
    folds = FOLDS if len(labels) <= SCALE_ROWS else SCALE_FOLDS
    if kind == "linear":
        limit = max(FIT_ROWS, FIT_ROWS_PER_CLASS * n_classes)
        fit: CrossFit | ClassMeans = CrossFit(x, y, n_classes, folds=folds, seed=seed, max_rows=limit)
    else:
        fit = ClassMeans(x, y, n_classes)
    del x  # the probe holds it: one [N, D] beside the caller's
    train, previous = seed_mask.copy(), None
    changes = np.zeros(len(labels), dtype=np.int8)  # membership changes so far, per row
    rounds: list[int] = []
    moved: list[int] = []  # rows that changed membership, per round
    probs, converged, damped = None, False, False
    for _ in range(max_rounds):
        if train.sum() < 2 * n_classes:
            break  # too little to fit a probe on; the caller falls back to the text evidence
        probs = None  # the last round's [N, K] goes before the next one is made
        probs = fit(train).cpu().numpy()
        best = confident_class(probs, class_thresholds(probs, labels, n_classes))
        move = ((best == -1) | (best == labels)) != train
        damped = damped or swings(rounds, int(train.sum()), int((train ^ move).sum()), len(labels))
        if kind == "class-mean":  # few rows a class: each refit trades rows at the thresholds (see churns)
            damped = damped or churns(len(rounds) + 1, int(move.sum()), int((move & (changes > 0)).sum()))
        if damped:  # rows that already joined and left (or left and came back) keep their place from now on
            move &= changes < MAX_CHANGES
        new_train = train ^ move
        cycling = previous is not None and np.array_equal(new_train, previous)  # A -> B -> A: no progress
        previous, train = train, new_train
        changes += move
        rounds.append(int(train.sum()))
        moved.append(int(move.sum()))
        if settled(moved, len(labels)) or cycling:
            converged = True
            break
    if probs is None:
        raise ValueError(f"the seed has {int(seed_mask.sum())} rows; at least {2 * n_classes} are needed")
    return VisualEvidence(probs.astype(np.float32, copy=False), train, int(seed_mask.sum()), rounds, converged, kind)
