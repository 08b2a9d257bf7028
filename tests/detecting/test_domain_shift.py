"""Detection with default options on domain-shifted data: planted noise is found, collapse is caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import deft_clean
from deft_clean import testing as toy
from deft_clean.detecting.confident import estimated_issue_counts, flag_by_class, label_posterior
from deft_clean.detecting.selection import class_warnings

from ..conftest import CLASSES, N_CLASSES, NoisyFolder, collapse_prompts


def washed_out(image: Image.Image, seed: int) -> Image.Image:
    """A domain shift for the synthetic classes: lower contrast, a grey veil, sensor noise and blur."""
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 25, pixels.shape)
    pixels = pixels * 0.6 + 60 + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def shifted_folder(root: Path, *, kind: str, rate: float = 0.3, per_class: int = 40) -> NoisyFolder:
    images, labels = toy.synthetic_images(per_class, N_CLASSES, seed=7)
    images = [washed_out(image, i) for i, image in enumerate(images)]
    noisy = toy.plant_noise(labels, N_CLASSES, rate, kind=kind, seed=3)
    paths = toy.write_image_folder(root, images, noisy, CLASSES)
    return NoisyFolder(root, {p: CLASSES[int(t)] for p, t in zip(paths, labels, strict=True)})


def flag_scores(frame, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the flags for the truly noisy rows."""
    flagged = ~frame["is_clean"].to_numpy()
    noisy = ~truth
    hits = np.sum(flagged & noisy)
    return hits / max(flagged.sum(), 1), hits / max(noisy.sum(), 1)


@pytest.fixture(scope="module")
def pair_shifted(tmp_path_factory) -> NoisyFolder:
    return shifted_folder(tmp_path_factory.mktemp("shifted") / "data", kind="pair")


def defaults(tiny_clip) -> dict:
    """Nothing but the model, the device and no worker processes: every detection option at its default."""
    return {
        "model": str(tiny_clip.config),
        "pretrained": str(tiny_clip.checkpoint),
        "device": "cpu",
        "num_workers": 0,
        "quiet": True,
    }


@pytest.mark.parametrize("quick", [False, True], ids=["default", "quick"])
def test_default_options_find_pair_noise_on_shifted_data(tiny_clip, pair_shifted, quick):
    result = deft_clean.detect(pair_shifted.root, quick=quick, **defaults(tiny_clip))
    frame = result.frame
    truth = pair_shifted.truly_clean(frame)
    assert 0.25 < 1 - truth.mean() < 0.35
    precision, recall = flag_scores(frame, truth)
    assert precision >= 0.9, f"flag precision {precision:.3f}"
    assert recall >= 0.9, f"flag recall {recall:.3f}"
    p = frame["p_clean"].to_numpy(dtype=float)
    assert np.mean(p[truth][:, None] > p[~truth][None, :]) >= 0.95  # ROC-AUC
    # the evidence columns and reasons of the Parquet contract
    flagged = ~frame["is_clean"]
    assert frame.loc[flagged, "flag_reason"].notna().all() and frame.loc[~flagged, "flag_reason"].isna().all()
    for column in ("text_score", "visual_score", "p_clean"):
        values = frame[column].to_numpy(dtype=float)
        assert np.all((values >= 0) & (values <= 1)), column
    assert result.metadata["selection"]["rule"] == "fused"
    assert result.features.shape[0] == len(frame) and result.visual_probs.shape == (len(frame), N_CLASSES)
    if quick:
        assert result.metadata["text_evidence"] == "zero-shot" and result.history == []
        assert frame["sim_pos"].isna().all()


def test_huge_lr_is_caught_and_said(tiny_clip, pair_shifted, tmp_path):
    """Forced divergence: one warning line naming what happened, the learned prompts dropped, a sound result."""
    out = tmp_path / "r.parquet"
    args = ["detect", str(pair_shifted.root), "--out", str(out), "--lr", "10", "--grad-clip", "0", "--epochs", "2"]
    args += ["--model", str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint), "--device", "cpu"]
    # a real process: the warning must reach the terminal's stderr, not a test's log capture
    result = subprocess.run(
        [sys.executable, "-m", "deft_clean", *args, "--num-workers", "0"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "zero-shot prompts" in lines[0], result.stderr
    assert any(word in lines[0] for word in ("non-finite", "NaN", "collapsed")), lines
    frame, metadata = deft_clean.load_results(out)
    assert metadata["text_evidence"] == "zero-shot"
    assert metadata["warnings"]
    precision, recall = flag_scores(frame, pair_shifted.truly_clean(frame))
    assert precision >= 0.85 and recall >= 0.85


def test_collapsed_prompts_fall_back_to_zero_shot(tiny_clip, pair_shifted, monkeypatch):
    """Prompts that predict one class for everything are detected by their disagreement with zero-shot."""
    collapse_prompts(monkeypatch)
    result = deft_clean.detect(pair_shifted.root, epochs=1, **defaults(tiny_clip))
    assert result.metadata["text_evidence"] == "zero-shot"
    assert any("collapsed" in line for line in result.metadata["warnings"])


def test_selection_deft_is_the_papers_rule(tiny_clip, pair_shifted):
    # options under which the tiny model's prompts do not collapse (a fallback would not use the rule)
    result = deft_clean.detect(pair_shifted.root, selection="deft", **tiny_clip.options(epochs=3))
    assert result.metadata["text_evidence"] == "learned prompts"
    frame = result.frame
    expected = (frame["p_clean"] > 0.5) & (frame["predicted_index"] == frame["label_index"])
    assert (frame["is_clean"] == expected).all()
    assert result.metadata["selection"]["rule"] == "deft"


def test_whole_class_flagged_is_said():
    labels = np.repeat(np.arange(3), 10)
    is_clean = np.ones(30, dtype=bool)
    is_clean[10:19] = False  # 90% of class 1
    lines = class_warnings(is_clean, labels, np.ones(30, dtype=bool), ["a", "b", "c"])
    assert len(lines) == 1 and "'b'" in lines[0] and "90%" in lines[0]


def test_flag_by_class_takes_the_estimated_count_lowest_first():
    rng = np.random.default_rng(0)
    n, k = 600, 4
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flip = rng.random(n) < 0.25
    given[flip] = (true[flip] + 1) % k
    flagged = flag_by_class(probs, given, k)
    counts = estimated_issue_counts(probs, given, k)
    assert abs(int(counts.sum()) - int(flip.sum())) <= 0.1 * flip.sum()
    assert np.mean(flip[flagged]) >= 0.9 and np.mean(flagged[flip]) >= 0.8
    assert not flagged[probs.argmax(1) == given].any()


def _calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction (the true class is drawn from them), and that class."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), rng.integers(0, k, n)] += rng.uniform(1.0, 6.0, n)  # confident and ambiguous rows
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    true = np.array([rng.choice(k, p=row) for row in probs])
    return probs, true


@pytest.mark.parametrize("kind", ["symmetric", "pair", "clean"])
def test_label_posterior_finds_the_noise_rate_and_the_wrong_labels(kind):
    """With calibrated class probabilities, the fitted noise model recovers how many labels are wrong and flags
    them at p_clean < 0.5; confident learning's count takes the probes' ambiguous clean rows for noise too."""
    n, k = 3000, 5
    probs, true = _calibrated(n, k, seed=1)
    rng = np.random.default_rng(2)
    given = true.copy()
    flip = rng.random(n) < (0.0 if kind == "clean" else 0.3)
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k if kind == "symmetric" else (true[flip] + 1) % k
    right, rate, other = label_posterior(probs, given, k)
    assert right.shape == (n,) and right.dtype == np.float32 and ((right >= 0) & (right <= 1)).all()
    assert abs(rate - flip.mean()) < 0.04
    flagged = right < 0.5
    if kind == "clean":
        assert flagged.mean() < 0.02
        return
    precision, recall = flip[flagged].mean(), flagged[flip].mean()
    assert precision >= 0.8 and recall >= 0.75  # the ambiguous rows cap both (Bayes error)
    assert (other != given).all() and ((other >= 0) & (other < k)).all()  # a suggestion is never the label
    assert (other[flagged & flip] == true[flagged & flip]).mean() > 0.85  # and mostly the true class
    cl = estimated_issue_counts(probs, given, k).sum()
    assert abs(flagged.sum() - flip.sum()) < abs(cl - flip.sum())


def test_label_posterior_with_many_classes_keeps_each_rows_likely_classes():
    """Above EM_CLASSES classes a row's true class is one of its most probable classes or its label: same
    answer as the full model where the rest of the mass is negligible, and no [N, K] x K work."""
    import deft_clean.detecting.confident as confident

    n, k = 2000, 40
    probs, true = _calibrated(n, k, seed=3)
    probs = probs**3 / (probs**3).sum(1, keepdims=True)  # sharper: the mass sits on a few classes
    rng = np.random.default_rng(4)
    given = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), true)
    sparse, *_ = label_posterior(probs, given, k)
    saved = confident.EM_CLASSES
    try:
        confident.EM_CLASSES = k
        dense, *_ = label_posterior(probs, given, k)
    finally:
        confident.EM_CLASSES = saved
    assert np.abs(sparse - dense).mean() < 0.002 and np.abs(sparse - dense).max() < 0.05
    assert ((sparse < 0.5) == (dense < 0.5)).mean() > 0.995
    assert label_posterior(probs[:0], given[:0], k)[0].shape == (0,)


def test_seed_gives_every_class_its_most_text_like_rows():
    """A class the text side never confirms still enters the seed through its most text-like rows."""
    from deft_clean.detecting.selection import MIN_SEED_SHARE, text_seed

    labels = np.repeat(np.arange(3), 20)
    zero_shot = np.full((60, 3), 0.1)
    zero_shot[np.arange(60), labels] = 0.8
    zero_shot[40:, 0] = 0.9  # class 2 is never zero-shot's top-1 ...
    zero_shot[40:45, 2] = 0.85  # ... but five of its rows come close
    seed = text_seed(np.ones(60, dtype=bool), labels, zero_shot, None, "threshold+argmax")
    assert seed[:40].all()
    assert seed[40:].sum() == int(np.ceil(MIN_SEED_SHARE * 20)) and seed[40:42].all()
