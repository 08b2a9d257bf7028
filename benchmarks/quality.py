"""Detection quality of deft-clean against three baselines on planted label noise, with and without domain
shift (offline, CPU).

Foundation model: a tiny open_clip CLIP pretrained contrastively on 2,000 MNIST digits (part A), given to
every method as local weights, as a user would pass real weights. Targets (the noisy set every method sees,
written as an image folder, and a clean held-out set for phase 2):

  mnist-bold   domain shift (stroke width): MNIST parts B/C with strokes thickened by a 3x3 max filter,
  digits-8x8   domain shift (second source + resolution): scikit-learn's 1,797 8x8 digits, upscaled to
               20x20 and padded to 28x28 (1,437 noisy / 360 clean),
  mnist-texture  domain shift (background): MNIST parts B/C over a smooth random grey texture (a 7x7 noise
               field upsampled, at half brightness, under the digit); zero-shot ~60%, a true-label probe ~80%,
  mnist        no shift: MNIST part B (2,000) / C (1,000), the same kind of images as the pretraining.
  *-opaque     the same images and labels with the class names replaced by codes (n01440764, ...) that the
               text tower cannot read (issue 28): mnist-opaque, digits-8x8-opaque, dim-opaque, blind-opaque.

Noise (flips always go to a different class, so rates are exact): symmetric 0.2 / 0.4 / 0.6, pair 0.3
(class i -> i+1), instance-dependent 0.3 (Xia et al. 2020 on raw pixels); each with ``--seeds`` seeds.

Methods, all on the same foundation model, all with default options:
  deft-clean          ``deft_clean.detect`` on the folder, as a user runs it (no options but device/seed),
  deft-clean --quick  the same with ``quick=True`` (zero-shot prompts + image evidence, one feature pass),
  paper schedule      with ``--paper``: the same with ``early_stop=False, images_per_epoch="all"``,
  DeFT rule           the paper's dual-prompt rule on the same trained prompts (``--selection deft``),
  zero-shot           zero-shot prediction with "a photo of a {}." prompts == given label,
  small-loss          2-component GMM on the cross-entropy of an out-of-fold (5-fold) logistic-regression
                      probe on frozen, normalised image features,
  cleanlab            ``cleanlab.filter.find_label_issues(labels, pred_probs)`` on the same probabilities.
Metrics: F1 of noisy-label detection (noisy = positive), precision / recall of the kept set, ROC-AUC of
each method's clean score, wall time (baselines: feature extraction + probe; deft-clean: the whole call).

    .venv/bin/python benchmarks/quality.py                       # all targets, 3 seeds (~40 min, 1 thread)
    .venv/bin/python benchmarks/quality.py --targets digits-8x8 --seeds 1

Writes benchmarks/results/quality.md and quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the benchmarks package
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_A, SPLIT_B, SPLIT_C = slice(0, 2000), slice(2000, 4000), slice(4000, 5000)
PRETRAIN = {"steps": 1200, "lr": 1e-3, "batch_size": 64, "seed": 0}
ZERO_SHOT_TEMPLATE = "a photo of a {}."
TARGETS = ("mnist-bold", "digits-8x8", "mnist-texture", "mnist", "dim", "blind")
SHIFTED = ("mnist-bold", "digits-8x8", "mnist-texture", "dim", "blind")
# Opaque-name variants (issue 28): the same images and labels, class folders named by WordNet-like codes that
# the foundation's text tower has never read, as many real datasets name them (n01440764, SKUs, integers).
OPAQUE = "-opaque"
OPAQUE_TARGETS = ("mnist-opaque", "digits-8x8-opaque", "dim-opaque", "blind-opaque")
NOISE = (("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("pair", 0.3), ("instance", 0.3))
# Targets the model sees dimly or not at all: three MNIST digits, blurred (down- and up-sampled), faded to
# grey and noised; a probe on the foundation's features is right ~59% (dim) / ~40% (blind) of the time
# where always answering the largest class gives 35%. Their settings: a clean copy and 20% noise.
WEAK = {"dim": (8, 0.25, 20.0), "blind": (3, 0.35, 45.0)}  # (blur side px, contrast kept, pixel noise sd)
WEAK_DIGITS = (3, 5, 8)
WEAK_NOISE = (("symmetric", 0.0), ("symmetric", 0.2))
# Opaque-name variants of the strong targets (issue 28's acceptance): a clean copy, 1% symmetric (where nearly
# every flag is a hard case), symmetric 0.2-0.6, pair 0.3.
OPAQUE_NOISE = (("symmetric", 0.0), ("symmetric", 0.01), *NOISE[:4])
PAPER = "paper schedule"  # deft-clean with --no-early-stop --images-per-epoch all (with --paper)
METHODS = ("deft-clean", "deft-clean --quick", PAPER, "DeFT rule", "zero-shot", "small-loss", "cleanlab")
BASELINES = ("zero-shot", "small-loss", "cleanlab")


@dataclass(frozen=True)
class Setting:
    kind: str  # symmetric | pair | instance
    rate: float  # noise rate
    seed: int  # seeds the noise and every method

    @property
    def name(self) -> str:
        return "clean" if self.rate == 0 else f"{self.kind} {self.rate:g}"

    @property
    def slug(self) -> str:
        return f"{self.kind}-{self.rate:g}-s{self.seed}"


@dataclass
class Data:
    name: str
    classes: list[str]  # class names, the label indices' order
    images_b: list  # PIL images the methods see
    true_b: np.ndarray  # int64 [N]
    images_c: list  # clean held-out images
    true_c: np.ndarray
    features_b: np.ndarray  # float32 [N, E] normalised CLIP image features
    features_c: np.ndarray
    zero_shot_logits_b: np.ndarray  # float32 [N, K]
    feature_seconds: float  # time to load the model and extract B's features (charged to every baseline)
    zero_shot_accuracy: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodRun:
    is_clean: np.ndarray  # bool [N] in B order
    score: np.ndarray  # float [N], higher = more likely clean
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metrics:
    precision: float  # of the kept set: truly clean among kept
    recall: float  # of the kept set: kept among truly clean
    f1_noisy: float  # F1 of detecting noisy labels (noisy = positive)
    auc: float  # ROC-AUC of the clean score for truly clean vs noisy
    flagged: int
    seconds: float
    flag_precision: float = float("nan")  # share of flagged rows whose label is wrong (NaN: none flagged)
    flagged_share: float = 0.0  # flagged rows / all rows
    reliable: float = float("nan")  # deft-clean's evidence check: 1 reliable, 0 not (NaN: other methods)
    withheld: float = float("nan")  # flags the evidence check withheld


def set_threads(threads: int) -> None:
    """Cap torch's and BLAS's threads for the whole process (2 spinning threads on a shared 2-core machine
    made detect 25x and the scikit-learn probe 100x slower than 1 thread)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def build_foundation(work: Path) -> tuple[Path, Path]:
    """Pretrain the tiny CLIP on MNIST part A once; reuse it if the same recipe is cached in ``work``."""
    from deft_clean import testing as toy

    folder = work / "foundation"
    config, checkpoint, recipe = folder / "tiny-clip.json", folder / "tiny.pt", folder / "recipe.json"
    if checkpoint.is_file() and recipe.is_file() and json.loads(recipe.read_text()) == PRETRAIN:
        return config, checkpoint
    images, labels = toy.digit_images("mnist")
    toy.pretrain_tiny_clip(
        images[SPLIT_A], labels[SPLIT_A], CLASSES, config_path=config, checkpoint_path=checkpoint, **PRETRAIN
    )
    recipe.write_text(json.dumps(PRETRAIN))
    return config, checkpoint


def encode(
    config: Path, checkpoint: Path, images: Sequence, *, device: str, classes: Sequence[str] = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image features [N, E] and zero-shot logits [N, K] of the foundation model."""
    import torch

    from deft_clean.inputs.transforms import eval_transform
    from deft_clean.models.clip import encode_image, load_clip, resolve_device

    dev = resolve_device(device)
    loaded = load_clip(str(config), str(checkpoint), device=dev, quiet=True)
    transform = eval_transform(loaded.image_size, loaded.mean, loaded.std)
    features = []
    with torch.no_grad():
        text = loaded.model.encode_text(
            loaded.tokenizer([ZERO_SHOT_TEMPLATE.format(c) for c in classes]).to(dev), normalize=True
        )  # [K, E]
        for start in range(0, len(images), 256):
            batch = torch.stack([transform(im.convert("RGB")) for im in images[start : start + 256]]).to(dev)
            features.append(encode_image(loaded.model, batch).float())
        feats = torch.cat(features)  # [N, E]
        logits = loaded.model.logit_scale.exp() * feats @ text.float().t()  # [N, K]
    return feats.cpu().numpy(), logits.cpu().numpy()


def bold(image: Any) -> Any:
    """Thicker strokes: a 3x3 max filter on the grey digit."""
    from PIL import ImageFilter

    return image.filter(ImageFilter.MaxFilter(3))


def upscale_8x8(image: Any) -> Any:
    """scikit-learn's 8x8 digit -> 20x20 (bilinear), padded to MNIST's 28x28 layout."""
    from PIL import Image, ImageOps

    return ImageOps.expand(image.resize((20, 20), Image.BILINEAR), 4)


def weaken(image: Any, side: int, contrast: float, noise: float, seed: int) -> Any:
    """A digit the model barely sees: blurred through ``side`` x ``side`` pixels, faded to grey, noised."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = image.resize((side, side), Image.BILINEAR).resize((28, 28), Image.BILINEAR)
    pixels = np.asarray(small, dtype=np.float32) * contrast + 100 + rng.normal(0, noise, (28, 28))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def textured(image: Any, seed: int, strength: float = 0.5) -> Any:
    """The digit over a smooth random background: a 7x7 field of normal noise, upsampled bicubic to 28x28,
    scaled to [0, 255 * strength]; each pixel keeps the brighter of digit and background."""
    from PIL import Image

    field = np.random.default_rng(seed).normal(0, 1, (7, 7))
    field = (field - field.min()) / (np.ptp(field) + 1e-6) * 255
    background = np.asarray(Image.fromarray(field.astype(np.uint8)).resize((28, 28), Image.BICUBIC), np.float32)
    pixels = np.maximum(strength * background, np.asarray(image, dtype=np.float32))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def base_target(name: str) -> str:
    """The target whose images an opaque-name variant uses (``mnist-opaque`` -> ``mnist``)."""
    return name.removesuffix(OPAQUE)


def opaque_names(n: int) -> list[str]:
    """``n`` WordNet-style codes (``n0xxxxxxx``), distinct, with no word in them."""
    return [f"n0{1440764 + 104729 * k:07d}" for k in range(n)]


def target_classes(name: str) -> list[str]:
    base = base_target(name)
    classes = [CLASSES[d] for d in WEAK_DIGITS] if base in WEAK else CLASSES
    return opaque_names(len(classes)) if name.endswith(OPAQUE) else classes


def target_images(name: str) -> tuple[list, np.ndarray, list, np.ndarray]:
    """(noisy-set images, their true labels, held-out images, their labels) of a target."""
    from deft_clean import testing as toy

    name = base_target(name)
    if name in WEAK:
        images, labels = toy.digit_images("mnist")
        parts = []
        for part in (SPLIT_B, SPLIT_C):
            rows = [i for i in range(part.start, part.stop) if labels[i] in WEAK_DIGITS]
            parts.append(
                ([weaken(images[i], *WEAK[name], seed=i) for i in rows], np.searchsorted(WEAK_DIGITS, labels[rows]))
            )
        return parts[0][0], parts[0][1], parts[1][0], parts[1][1]
    if name == "digits-8x8":
        images, labels = toy.digit_images("sklearn")
        images = [upscale_8x8(im) for im in images]
        return images[:1437], labels[:1437], images[1437:], labels[1437:]
    images, labels = toy.digit_images("mnist")
    b, c = images[SPLIT_B], images[SPLIT_C]
    if name == "mnist-bold":
        b, c = [bold(im) for im in b], [bold(im) for im in c]
    elif name == "mnist-texture":
        b = [textured(im, seed=i) for i, im in enumerate(b)]
        c = [textured(im, seed=1_000_000 + i) for i, im in enumerate(c)]
    elif name != "mnist":
        raise ValueError(f"unknown target {name!r}")
    return b, labels[SPLIT_B], c, labels[SPLIT_C]


def prepare(name: str, config: Path, checkpoint: Path, *, device: str) -> Data:
    images_b, true_b, images_c, true_c = target_images(name)
    classes = target_classes(name)
    started = time.perf_counter()
    features_b, logits_b = encode(config, checkpoint, images_b, device=device, classes=classes)
    feature_seconds = time.perf_counter() - started
    features_c, logits_c = encode(config, checkpoint, images_c, device=device, classes=classes)
    pred = logits_b.argmax(1)
    accuracy = {
        "B": float(np.mean(pred == true_b)),
        "C": float(np.mean(logits_c.argmax(1) == true_c)),
        "per_class_B": [float(np.mean(pred[true_b == k] == k)) for k in range(len(classes))],
    }
    return Data(
        name, classes, images_b, true_b, images_c, true_c, features_b, features_c, logits_b, feature_seconds, accuracy
    )


def noisy_labels(setting: Setting, data: Data) -> np.ndarray:
    from deft_clean import testing as toy

    pixels = np.stack([np.asarray(im.convert("L").resize((28, 28)), dtype=np.float32) for im in data.images_b])
    return toy.plant_noise(
        data.true_b, len(data.classes), setting.rate, kind=setting.kind, seed=1000 + setting.seed, features=pixels
    )


def write_folder(root: Path, images: Sequence, labels: np.ndarray, classes: Sequence[str] = CLASSES) -> list[str]:
    """Write an image folder once (a marker file records that it is complete); return paths in input order."""
    from deft_clean import testing as toy

    marker = root / ".complete.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if root.exists():
        import shutil

        shutil.rmtree(root)
    paths = toy.write_image_folder(root, images, labels, classes)
    marker.write_text(json.dumps(paths))
    return paths


# ----------------------------------------------------------------------------------------------------
# Methods


def run_deft(
    folder: Path,
    paths: list[str],
    config: Path,
    checkpoint: Path,
    *,
    seed: int,
    device: str,
    num_workers: int,
    quick: bool = False,
    **options: Any,
) -> tuple[MethodRun, Any]:
    """deft-clean detect on the folder with default options; results re-ordered to ``paths`` (B order)."""
    import torch

    import deft_clean

    # detect sizes its own torch threads to the usable cores; keep the benchmark's --threads (set_threads), or
    # two benchmarks side by side spin 4 threads on 2 cores and every time is inflated 5-25x
    options.setdefault("threads", torch.get_num_threads())
    started = time.perf_counter()
    result = deft_clean.detect(
        folder,
        model=str(config),
        pretrained=str(checkpoint),
        seed=seed,
        device=device,
        num_workers=num_workers,
        quiet=True,
        quick=quick,
        **options,
    )
    seconds = time.perf_counter() - started
    order = result.frame.set_index("path").loc[paths]
    run = MethodRun(
        order["is_clean"].to_numpy(dtype=bool),
        order["p_clean"].to_numpy(dtype=float),
        seconds,
        {
            "warnings": result.metadata["warnings"],
            "text_evidence": result.metadata["text_evidence"],
            "selection": result.metadata["selection"],
            "history": result.history,
            "evidence": result.metadata["evidence"],
            "prompts": result.metadata.get("prompts"),
        },
    )
    return run, result


def run_deft_rule(result: Any, paths: list[str]) -> MethodRun:
    """The paper's dual-prompt rule on the prompts ``result`` trained (no second training run)."""
    from deft_clean.detecting.selection import deft_rule
    from deft_clean.run.options import DetectConfig

    evidence = result.evidence
    if evidence.scores is None:  # the prompts fell back to zero-shot: the rule has nothing to judge
        return MethodRun(np.zeros(len(paths), bool), np.zeros(len(paths)), 0.0, {"status": "no learned prompts"})
    cfg = DetectConfig()
    scores, labels = evidence.scores, result.frame["label_index"].to_numpy()
    clean = deft_rule(scores.p_clean, scores.predicted_index, labels, evidence.usable, cfg.clean_rule)
    position = {p: i for i, p in enumerate(result.frame["path"])}
    rows = np.array([position[p] for p in paths])
    return MethodRun(clean[rows], scores.p_clean[rows].astype(float), 0.0)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """[N, K] out-of-fold predicted probabilities of a 5-fold logistic-regression linear probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return cross_val_predict(probe, features, labels, cv=folds, method="predict_proba")


def run_zero_shot(data: Data, labels: np.ndarray) -> MethodRun:
    started = time.perf_counter()
    logits = data.zero_shot_logits_b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    rows = np.arange(len(labels))
    run = MethodRun(logits.argmax(1) == labels, probs[rows, labels], time.perf_counter() - started)
    run.seconds += data.feature_seconds
    return run


def run_small_loss(data: Data, labels: np.ndarray, *, seed: int, oof: tuple[np.ndarray, float]) -> MethodRun:
    from sklearn.mixture import GaussianMixture

    probs, oof_seconds = oof
    started = time.perf_counter()
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))  # [N]
    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed)
    gmm.fit(loss.reshape(-1, 1))
    clean_component = int(np.argmin(gmm.means_.ravel()))
    p_clean = gmm.predict_proba(loss.reshape(-1, 1))[:, clean_component]
    seconds = time.perf_counter() - started + oof_seconds + data.feature_seconds
    return MethodRun(p_clean > 0.5, -loss, seconds)


def run_cleanlab(data: Data, labels: np.ndarray, *, oof: tuple[np.ndarray, float]) -> MethodRun:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs, oof_seconds = oof
    started = time.perf_counter()
    issues = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    seconds = time.perf_counter() - started + oof_seconds + data.feature_seconds
    return MethodRun(~issues, quality, seconds)


def evaluate(run: MethodRun, truly_clean: np.ndarray) -> Metrics:
    from sklearn.metrics import roc_auc_score

    kept, noisy = run.is_clean, ~truly_clean
    hits = int(np.sum(kept & truly_clean))
    flagged = ~kept
    tp = int(np.sum(flagged & noisy))
    p_noisy = tp / max(int(flagged.sum()), 1)
    r_noisy = tp / max(int(noisy.sum()), 1)
    score = np.nan_to_num(run.score, nan=-np.inf)
    evidence = run.extra.get("evidence") or {}
    return Metrics(
        precision=hits / max(int(kept.sum()), 1),
        recall=hits / max(int(truly_clean.sum()), 1),
        f1_noisy=0.0 if tp == 0 else 2 * p_noisy * r_noisy / (p_noisy + r_noisy),
        auc=float(roc_auc_score(truly_clean, score)) if 0 < truly_clean.sum() < len(truly_clean) else float("nan"),
        flagged=int(flagged.sum()),
        seconds=run.seconds,
        flag_precision=tp / int(flagged.sum()) if flagged.any() else float("nan"),
        flagged_share=float(flagged.mean()),
        reliable=float(evidence["reliable"]) if "reliable" in evidence else float("nan"),
        withheld=float(evidence.get("flags_withheld", float("nan"))) if evidence else float("nan"),
    )


def run_setting(
    setting: Setting, data: Data, config: Path, checkpoint: Path, work: Path, args: argparse.Namespace
) -> tuple[dict[str, Metrics], dict[str, Any]]:
    labels = noisy_labels(setting, data)
    truly_clean = labels == data.true_b
    folder = work / "data" / data.name / setting.slug
    paths = write_folder(folder, data.images_b, labels, data.classes)
    common = {"seed": setting.seed, "device": args.device, "num_workers": args.num_workers}
    runs: dict[str, MethodRun] = {}
    runs["deft-clean"], result = run_deft(folder, paths, config, checkpoint, **common)
    runs["deft-clean --quick"], _ = run_deft(folder, paths, config, checkpoint, quick=True, **common)
    if args.paper:
        paper = {"early_stop": False, "images_per_epoch": "all"}
        runs[PAPER], _ = run_deft(folder, paths, config, checkpoint, **paper, **common)
    runs["DeFT rule"] = run_deft_rule(result, paths)
    started = time.perf_counter()
    oof = out_of_fold_probabilities(data.features_b, labels, seed=setting.seed)
    oof_pair = (oof, time.perf_counter() - started)
    runs["zero-shot"] = run_zero_shot(data, labels)
    runs["small-loss"] = run_small_loss(data, labels, seed=setting.seed, oof=oof_pair)
    runs["cleanlab"] = run_cleanlab(data, labels, oof=oof_pair)
    metrics = {name: evaluate(run, truly_clean) for name, run in runs.items()}
    extra = {name: run.extra for name, run in runs.items() if run.extra}
    return metrics, extra


# ----------------------------------------------------------------------------------------------------
# Tables


def fmt(value: float | None, digits: int = 1, scale: float = 100.0) -> str:
    return "-" if value is None or np.isnan(value) else f"{value * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def seed_stats(per_seed: list[dict[str, dict[str, float]]], method: str, key: str) -> tuple[float, float]:
    values = [run[method][key] for run in per_seed]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def target_tables(target: dict[str, Any]) -> list[str]:
    """F1 (mean ± sd), AUC, precision/recall and time tables of one target, wins marked."""
    out: list[str] = []
    settings = target["settings"]
    methods = [m for m in METHODS if m in next(iter(settings.values()))[0]]

    def metric_table(key: str, title: str, digits: int = 1, higher_better: bool = True) -> None:
        rows = []
        for name, per_seed in settings.items():
            if name == "clean":
                continue  # nothing to detect: F1 is 0 and AUC undefined; see the flagged-share table
            stats = {m: seed_stats(per_seed, m, key) for m in methods}
            best_baseline = max(stats[m][0] for m in BASELINES)
            cells = []
            for m in methods:
                mean, sd = stats[m]
                text = f"{fmt(mean, digits)} ± {fmt(sd, digits)}" if len(per_seed) > 1 else fmt(mean, digits)
                if m in ("deft-clean", "deft-clean --quick", PAPER) and mean >= best_baseline - 1e-12:
                    text = f"**{text}**"
                cells.append(text)
            rows.append([name, *cells])
        out.extend([f"### {title}", "", markdown_table(["noise", *methods], rows), ""])

    metric_table("f1_noisy", "F1 of noisy-label detection (%, mean ± sd over seeds; bold: deft-clean >= best baseline)")
    metric_table("auc", "ROC-AUC of the clean score (%)")
    rows = []
    for name, per_seed in settings.items():
        cells = [
            f"{fmt(seed_stats(per_seed, m, 'precision')[0])} / {fmt(seed_stats(per_seed, m, 'recall')[0])}"
            for m in methods
        ]
        rows.append([name, *cells])
    out.extend(["### Kept-set precision / recall (%)", "", markdown_table(["noise", *methods], rows), ""])
    rows = []
    for name, per_seed in settings.items():
        cells = [
            f"{seed_stats(per_seed, m, 'seconds')[0]:.1f} ({seed_stats(per_seed, m, 'flagged')[0]:.0f})"
            for m in methods
        ]
        rows.append([name, *cells])
    out.extend(["### Wall time, s (flagged rows), mean over seeds", "", markdown_table(["noise", *methods], rows), ""])
    rows = []
    for name, per_seed in settings.items():
        cells = []
        for m in methods:
            share, precision = seed_stats(per_seed, m, "flagged_share")[0], seed_stats(per_seed, m, "flag_precision")[0]
            cell = f"{fmt(share)} / {fmt(precision)}"
            reliable = [run[m]["reliable"] for run in per_seed if not np.isnan(run[m]["reliable"])]
            if reliable:
                withheld = np.mean([run[m]["withheld"] for run in per_seed])
                cell += f" (reliable {int(sum(reliable))}/{len(reliable)}, withheld {withheld:.0f})"
            cells.append(cell)
        rows.append([name, *cells])
    out.extend(
        [
            "### Flagged % / flag precision % (deft-clean: runs its evidence check called reliable, flags it withheld)",
            "",
            markdown_table(["noise", *methods], rows),
            "",
        ]
    )
    return out


def summary_table(report: dict[str, Any]) -> list[str]:
    """One row per target and noise: default, ``--quick`` (and the paper's schedule where run) beside the best
    baseline, F1 means over seeds; default - quick per seed (min..max): what the learned prompts add."""
    rows, gains = [], []
    for name, target in report["targets"].items():
        for setting, per_seed in target["settings"].items():
            if setting == "clean":
                continue
            present = per_seed[0]
            f1 = {m: seed_stats(per_seed, m, "f1_noisy")[0] for m in METHODS if m in present}
            best = max(BASELINES, key=lambda m: f1[m])
            diff = [100 * (r["deft-clean"]["f1_noisy"] - r["deft-clean --quick"]["f1_noisy"]) for r in per_seed]
            gains.append((setting.startswith("symmetric"), float(np.mean(diff))))
            kind, rate = setting.split()
            slugs = [f"{kind}-{rate}-s{seed}" for seed in range(len(per_seed))]
            runs = [target.get("extra", {}).get(slug, {}).get("deft-clean") or {} for slug in slugs]
            kept = sum(run.get("text_evidence") == "learned prompts" for run in runs)
            rows.append(
                [
                    name,
                    setting,
                    fmt(f1["deft-clean"]),
                    fmt(f1["deft-clean --quick"]),
                    fmt(f1.get(PAPER)),
                    f"{fmt(f1[best])} ({best})",
                    f"{np.mean(diff):+.1f} ({min(diff):+.1f}..{max(diff):+.1f})",
                    f"{kept}/{len(per_seed)}",
                ]
            )
    if not rows:
        return []
    symmetric = [g for sym, g in gains if sym]
    header = ["target", "noise", "default", "--quick", "paper schedule", "best baseline", "default - quick", "learned"]
    return [
        "## Summary: noisy-label F1 (%), default options, mean over seeds",
        "",
        "`default - quick`: the learned prompts' gain, mean (min..max over seeds); `learned`: runs whose learned "
        "prompts were kept (the others fell back to zero-shot prompts, the judge's reason in the JSON). "
        + (f"Mean gain over the symmetric settings: {np.mean(symmetric):+.2f}." if symmetric else ""),
        "",
        markdown_table(header, rows),
        "",
    ]


def render(report: dict[str, Any]) -> str:
    load = report["load_average_start_end"]
    out = [
        "# Detection quality: deft-clean vs baselines (digits, tiny CLIP, CPU, default options)",
        "",
        f"Generated by `benchmarks/quality.py` on {report['created']} ({report['platform']}, torch "
        f"{report['torch']}, {report['threads']} CPU thread(s), device {report['device']}; 1-min load average "
        f"{load[0]:.1f} at start, {load[1]:.1f} at end: other jobs shared the machine, so times are upper bounds). "
        f"{report['seeds']} seed(s) per setting.",
        "",
        "- Foundation model: tiny open_clip CLIP (32 px, ViT 3x96, patch 8), pretrained contrastively on 2,000 "
        f"MNIST digits ({PRETRAIN['steps']} steps), passed to every method as local weights.",
        "- deft-clean runs with **default options** (only device, seed and `num_workers=0`); `DeFT rule` is the "
        "paper's dual-prompt rule (`--selection deft`) on the same trained prompts.",
        "- Baselines use normalised frozen image features of the same model; their times include loading the "
        "model and extracting features. small-loss: 2-component GMM on the cross-entropy of a 5-fold "
        "out-of-fold logistic-regression probe; cleanlab: `find_label_issues(labels, pred_probs)` on the same "
        "probabilities. Clean scores for AUC: deft-clean p_clean; zero-shot softmax at the given label; "
        "small-loss -CE; cleanlab self-confidence.",
        "",
    ]
    out += summary_table(report)
    for name, target in report["targets"].items():
        zs = target["zero_shot_accuracy"]
        classes = target.get("classes", CLASSES)
        per_class = ", ".join(f"{c}: {100 * a:.0f}" for c, a in zip(classes, zs["per_class_B"], strict=True))
        shift = "domain shift" if base_target(name) in SHIFTED else "no shift"
        if name.endswith(OPAQUE):
            shift += ", class names replaced by codes"
        out += [
            f"## {name} ({shift}; {target['n']} noisy-set images)",
            "",
            f"Zero-shot accuracy on the noisy set (true labels) {fmt(zs['B'])}%; per class {per_class}.",
            "",
        ]
        out += target_tables(target)
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is safest on shared CPUs)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for detect")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work", help="cache: model, folders")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per noise setting")
    choices = ", ".join(TARGETS + OPAQUE_TARGETS)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {choices}")
    parser.add_argument("--noise", default=None, help="comma-separated, e.g. symmetric-0.2,pair-0.3 (default: all)")
    parser.add_argument("--tag", default="quality", help="output file stem")
    parser.add_argument(
        "--paper", action="store_true", help="also run the paper's schedule (--no-early-stop --images-per-epoch all)"
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="only render <tag>.md/.json from these runs' JSON files (e.g. per target)"
    )
    return parser.parse_args(argv)


def settings_of(name: str, wanted: set[str] | None) -> tuple[tuple[str, float], ...]:
    """The noise settings a target runs: weak targets a clean copy and 20%; opaque strong targets a clean copy,
    symmetric 0.01-0.6 and pair 0.3; the others :data:`NOISE`; ``--noise`` (``symmetric-0.2,...``) picks from
    them (weak targets always run both of theirs)."""
    if base_target(name) in WEAK:
        return WEAK_NOISE
    noise = OPAQUE_NOISE if name.endswith(OPAQUE) else NOISE
    return noise if wanted is None else tuple(n for n in noise if f"{n[0]}-{n[1]:g}" in wanted)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out_dir, args.tag)
    set_threads(args.threads)
    import torch

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    config, checkpoint = build_foundation(args.work_dir)
    wanted = set(args.noise.split(",")) if args.noise else None
    targets: dict[str, Any] = {}
    for name in args.targets.split(","):
        data = prepare(name, config, checkpoint, device=args.device)
        print(f"{name}: zero-shot accuracy {data.zero_shot_accuracy['B']:.3f}", flush=True)
        target = {
            "n": len(data.true_b),
            "classes": data.classes,
            "zero_shot_accuracy": data.zero_shot_accuracy,
            "settings": {},
            "extra": {},
        }
        for kind, rate in settings_of(name, wanted):
            per_seed = []
            for seed in range(args.seeds):
                setting = Setting(kind, rate, seed)
                metrics, extra = run_setting(setting, data, config, checkpoint, args.work_dir, args)
                per_seed.append({m: asdict(v) for m, v in metrics.items()})
                target["extra"][setting.slug] = extra
                line = "  ".join(
                    f"{m}: F1 {v.f1_noisy:.3f} AUC {v.auc:.3f} {v.seconds:.1f}s" for m, v in metrics.items()
                )
                print(f"[{time.perf_counter() - started:6.0f}s] {name} {setting.slug}: {line}", flush=True)
            target["settings"][Setting(kind, rate, 0).name] = per_seed
        targets[name] = target

    report = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_start_end": [load_at_start, os.getloadavg()[0]],
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "seeds": args.seeds,
        "pretrain": PRETRAIN,
        "targets": targets,
        "total_seconds": time.perf_counter() - started,
    }
    write_tables(args.out_dir, args.tag, render(report), report)
    return report


def merge(paths: Sequence[Path], out_dir: Path, tag: str) -> dict[str, Any]:
    """One report from runs that split the targets between them (two cores: two processes, one target each)."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    if len({r["seeds"] for r in reports}) != 1:
        raise SystemExit("--merge: the runs used different --seeds")
    report = {**reports[0], "targets": {}}
    for part in reports:
        report["targets"].update(part["targets"])
    order = {name: i for i, name in enumerate(TARGETS + OPAQUE_TARGETS)}
    report["targets"] = dict(sorted(report["targets"].items(), key=lambda item: order.get(item[0], len(order))))
    starts, ends = zip(*(r["load_average_start_end"] for r in reports), strict=True)
    report["load_average_start_end"] = [max(starts), max(ends)]
    report["created"] = max(r["created"] for r in reports)
    report["total_seconds"] = sum(r["total_seconds"] for r in reports)
    write_tables(out_dir, tag, render(report), report)
    return report


def write_tables(out_dir: Path, tag: str, markdown: str, report: dict[str, Any]) -> None:
    """``<tag>.md`` (the tables, with the total time) and ``<tag>.json`` (raw numbers) in ``out_dir``; print."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown += f"\nTotal benchmark time: {report['total_seconds']:.0f} s.\n"
    (out_dir / f"{tag}.md").write_text(markdown)
    (out_dir / f"{tag}.json").write_text(json.dumps(report, indent=1, default=float))
    print(markdown)


if __name__ == "__main__":
    main()
