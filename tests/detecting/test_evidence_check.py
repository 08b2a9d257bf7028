"""Flags only where the evidence supports them: labels the images cannot explain, classes the model sees dimly
or cannot tell apart, random weights; and no withholding where the evidence is strong."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import deft_clean
from deft_clean import testing as toy
from deft_clean.detecting.evidence_check import agreement, check_evidence, wilson
from deft_clean.outputs.summary import evidence_line
from tests.conftest import CLASSES, N_CLASSES

DIM_KEEP = 0.013  # contrast left by toy.faded: a probe on the tiny CLIP's features is right ~55-65% of the time


def flagged_share(result) -> float:
    frame = result.frame
    usable = frame["status"] == "ok"
    return float((usable & ~frame["is_clean"]).sum() / usable.sum())


def flag_precision(result, truth: dict[str, str]) -> tuple[float, int]:
    """(share of flagged rows whose label is wrong, flagged rows); ``truth``: path -> true class name."""
    frame = result.frame
    flagged = frame[~frame["is_clean"]]
    wrong = flagged["path"].map(truth) != flagged["label"]
    return (float(wrong.mean()) if len(flagged) else float("nan")), len(flagged)


@pytest.fixture(scope="module")
def random_labels(tiny_clip, tmp_path_factory):
    """Labels assigned independently of the images, through the default detect (learned prompts)."""
    root = tmp_path_factory.mktemp("random") / "data"
    images, _ = toy.synthetic_images(40, N_CLASSES, seed=11)
    labels = np.random.default_rng(3).integers(0, N_CLASSES, len(images))
    toy.write_image_folder(root, images, labels, CLASSES)
    out = root.parent / "results.parquet"
    logger = logging.getLogger("deft_clean")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        result = deft_clean.detect(root, out=out, seed=0, **tiny_clip.options(quiet=False))
    finally:
        logger.removeHandler(handler)
    return result, out, [r.getMessage() for r in records], len(images)


def test_labels_independent_of_content_are_not_flagged(random_labels):
    result, _, messages, n_images = random_labels
    evidence = result.metadata["evidence"]
    assert evidence["reliable"] is False
    assert flagged_share(result) <= 0.01
    assert evidence["flags_withheld"] >= 0.5 * n_images  # the selection alone flagged most rows
    assert result.frame["withheld"].sum() == evidence["flags_withheld"]
    line = next(m for m in messages if "flags withheld" in m)
    assert "does not beat chance" in line and "--model/--pretrained" in line
    assert result.summary()["evidence_warning"] == line


def test_the_warning_reaches_report_page_and_notebook(random_labels, tmp_path):
    from typer.testing import CliRunner

    from deft_clean.cli import app

    result, out, messages, _ = random_labels
    line = next(m for m in messages if "flags withheld" in m)
    printed = CliRunner().invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")], env={"COLUMNS": "400"})
    assert printed.exit_code == 0, printed.output
    assert "verdict: not reliable: image evidence predicts the labels" in " ".join(printed.output.split())
    page = (tmp_path / "r.html").read_text()
    assert 'id="evidence-banner"' in page and page.index("evidence-banner") < page.index("<h2>Summary</h2>")
    assert "Evidence warning." in result._repr_html_()
    frame, metadata = deft_clean.load_results(out)
    assert metadata["evidence"]["reliable"] is False and frame["withheld"].sum() > 0
    assert line in metadata["warnings"]


@pytest.fixture(scope="module")
def dim_data():
    images, labels = toy.synthetic_images(100, 3, seed=7)
    return toy.faded(images, DIM_KEEP, seed=3), labels


def test_dimly_seen_classes_clean_copy_is_not_flagged(tiny_clip, tmp_path, dim_data):
    images, labels = dim_data
    toy.write_image_folder(tmp_path / "data", images, labels, CLASSES[:3])
    result = deft_clean.detect(tmp_path / "data", seed=0, **tiny_clip.options())
    evidence = result.metadata["evidence"]
    assert 0.45 <= evidence["image_accuracy"] <= 0.75  # seen dimly: above chance (1/3), far from sure
    assert evidence["reliable"] is False
    assert flagged_share(result) <= 0.02


def test_dimly_seen_classes_with_noise_flag_precisely_or_not_at_all(tiny_clip, tmp_path, dim_data):
    images, true = dim_data
    noisy = toy.plant_noise(true, 3, 0.2, seed=5)
    paths = toy.write_image_folder(tmp_path / "data", images, noisy, CLASSES[:3])
    truth = {path: CLASSES[int(t)] for path, t in zip(paths, true, strict=True)}
    result = deft_clean.detect(tmp_path / "data", seed=0, **tiny_clip.options())
    precision, n_flagged = flag_precision(result, truth)
    if result.metadata["evidence"]["reliable"]:
        assert precision >= 0.8, f"flag precision {precision:.2f} on {n_flagged} flags"
    else:
        assert flagged_share(result) <= 0.02


def test_classes_the_model_cannot_tell_apart_are_named_and_withheld(tiny_clip, tmp_path, caplog):
    images, true = toy.synthetic_images(40, N_CLASSES, seed=13)
    # classes 4 and 5 hold images of one distribution: class 4's images, split at random between the two
    twin = np.flatnonzero(true == 5)
    source = np.flatnonzero(true == 4)
    images = list(images)
    for dst, src in zip(twin, source, strict=False):
        images[dst] = images[src].transpose(0)  # a mirrored copy: the same class, not a duplicate file
    truth_class = np.where(true == 5, 4, true)
    noisy = true.copy()
    rng = np.random.default_rng(1)
    flip = rng.permutation(np.flatnonzero(true < 4))[:24]  # 20% of classes 0-3 moved to another of 0-3
    noisy[flip] = (true[flip] + rng.integers(1, 4, len(flip))) % 4
    paths = toy.write_image_folder(tmp_path / "data", images, noisy, CLASSES)
    with caplog.at_level(logging.WARNING, logger="deft_clean"):
        result = deft_clean.detect(tmp_path / "data", seed=0, **tiny_clip.options(quiet=False))
    frame = result.frame.set_index("path").loc[paths]
    flagged = ~frame["is_clean"].to_numpy()
    twins = np.isin(noisy, [4, 5])
    assert not flagged[twins & frame["predicted_label"].isin([CLASSES[4], CLASSES[5]]).to_numpy()].any()
    wrong = noisy != truth_class
    planted = np.zeros(len(noisy), dtype=bool)
    planted[flip] = True
    assert flagged[planted].mean() >= 0.8  # the other classes are still flagged
    assert wrong[flagged].mean() >= 0.8
    assert result.metadata["evidence"]["reliable"] is True
    line = next(r.getMessage() for r in caplog.records if "apart" in r.getMessage())
    assert f"{CLASSES[4]!r}" in line and f"{CLASSES[5]!r}" in line


def test_a_clean_copy_keeps_its_rows(tiny_clip, tmp_path):
    """Strong evidence, every label right: the few rows the model doubts are hard images, not wrong labels."""
    images, labels = toy.synthetic_images(40, N_CLASSES, seed=17)
    toy.write_image_folder(tmp_path / "data", images, labels, CLASSES)
    result = deft_clean.detect(tmp_path / "data", seed=0, **tiny_clip.options())
    assert flagged_share(result) <= 0.01
    evidence = result.metadata["evidence"]
    if evidence["flags_raised"]:  # the doubts are cleared (strong images) or withheld, never flags that stand
        held = evidence["flags_withheld"] + evidence.get("flags_cleared", 0)
        assert held >= evidence["flags_raised"] - 0.01 * len(images)


def test_random_weights_are_no_evidence_and_runs_repeat(tiny_clip, tmp_path):
    images, labels = toy.synthetic_images(8, 3, seed=5)
    toy.write_image_folder(tmp_path / "data", images, labels, CLASSES[:3])
    options = tiny_clip.options(pretrained="none", epochs=2)
    first = deft_clean.detect(tmp_path / "data", seed=0, **options)
    second = deft_clean.detect(tmp_path / "data", seed=0, **options)
    assert first.metadata["evidence"]["reliable"] is False
    assert "random weights" in " ".join(first.metadata["evidence"]["reasons"])
    for column in ("p_clean", "is_clean", "predicted_index", "visual_score"):
        np.testing.assert_array_equal(first.frame[column].to_numpy(), second.frame[column].to_numpy())


def test_heavy_noise_on_strong_evidence_is_told_apart_from_weak_evidence():
    """60% symmetric noise: labels agree with the images only ~40% of the time, yet the image and text views
    agree with each other, so the flags stand; weak evidence at the same label agreement is withheld."""
    rng = np.random.default_rng(0)
    k, n = 10, 2000
    true = rng.integers(0, k, n)
    centres = rng.normal(0, 1, (k, 32))
    features = centres[true] + 0.3 * rng.normal(0, 1, (n, 32))
    noisy = toy.plant_noise(true, k, 0.6, seed=1)
    text = np.full((n, k), 0.02)
    text[np.arange(n), true] = 0.82  # zero-shot: right and fairly sure
    is_clean = noisy == true  # a selection that found every wrong label
    check, withheld, _ = check_evidence(
        features.astype(np.float32), noisy, np.ones(n, bool), text, is_clean, true, [str(c) for c in range(k)]
    )
    assert check.reliable and not withheld.any()
    assert 0.5 <= check.label_noise <= 0.7 and check.expected_flag_precision >= 0.9
    weak = centres[rng.integers(0, k, n)] + 0.3 * rng.normal(0, 1, (n, 32))  # images unrelated to the class
    check, withheld, _ = check_evidence(
        weak.astype(np.float32), noisy, np.ones(n, bool), text, is_clean, true, [str(c) for c in range(k)]
    )
    assert not check.reliable and withheld.sum() == (~is_clean).sum()


def test_strong_images_stand_alone_when_the_class_names_mean_nothing():
    rng = np.random.default_rng(1)
    k, n = 5, 1000
    true = rng.integers(0, k, n)
    features = (rng.normal(0, 1, (k, 16))[true] + 0.2 * rng.normal(0, 1, (n, 16))).astype(np.float32)
    noisy = toy.plant_noise(true, k, 0.1, seed=2)
    text = rng.dirichlet(np.ones(k), n)  # zero-shot prompts that know nothing of these names
    check, withheld, _ = check_evidence(features, noisy, np.ones(n, bool), text, noisy == true, true, list("abcde"))
    assert check.reliable and not withheld.any()
    assert check.label_noise == pytest.approx(0.1, abs=0.05)  # the split image view anchors the estimate
    assert check.expected_flag_precision >= 0.8  # the flagged images are ordinary members of their true class
    heavy = toy.plant_noise(true, k, 0.6, seed=2)
    check, withheld, _ = check_evidence(  # the same at 60% noise: the split image view tells it from weak images
        features, heavy, np.ones(n, bool), text, heavy == true, true, list("abcde")
    )
    assert check.reliable and not withheld.any() and "image-split" in check.views


def test_metadata_line_and_statistics():
    assert evidence_line(None) is None and evidence_line({"reliable": True, "flags_withheld": 0}) is None
    line = evidence_line(
        {
            "reliable": False,
            "image_accuracy": 0.57,
            "chance": 0.5,
            "flags_withheld": 9,
            "flags_raised": 10,
            "expected_flag_precision": None,
            "reasons": ["weak"],
        }
    )
    assert line.startswith("image evidence predicts the labels 57% of the time where chance is 50%: weak; 9 of 10")
    low, high = wilson(57, 100)
    assert 0.47 < low < 0.57 < high < 0.67
    same = agreement(np.array([0, 1, 2, 0]), np.array([0, 1, 2, 0]), 3)
    assert same.kappa == pytest.approx(1.0)


def test_a_class_whose_images_look_like_the_others_keeps_its_rows():
    rng = np.random.default_rng(4)
    k, n = 6, 1800
    true = rng.integers(0, k, n)
    centres = rng.normal(0, 1, (k, 16))
    look = np.where(true == 5, rng.integers(0, 5, n), true)  # class 5's images look like a random other class
    features = (centres[look] + 0.3 * rng.normal(0, 1, (n, 16))).astype(np.float32)
    noisy = toy.plant_noise(true, k, 0.2, seed=3)
    text = np.full((n, k), 0.02)
    text[np.arange(n), look] = 0.9
    is_clean = (noisy == true) & (true != 5)  # the selection flags the noise, and most of class 5 too
    suggested = np.where(noisy == true, look, true)
    check, withheld, _ = check_evidence(features, noisy, np.ones(n, bool), text, is_clean, suggested, list("abcdef"))
    assert check.reliable
    assert [c["visible"] for c in check.per_class] == [True] * 5 + [False]
    assert withheld[noisy == 5].sum() == (~is_clean[noisy == 5]).sum()  # every class-5 flag withheld
    assert withheld[(noisy != 5) & ~is_clean & (suggested == 5)].all()  # nor can a flag point to it
    assert not withheld[(noisy != 5) & ~is_clean & (suggested != 5)].any()  # the other classes' flags stand
    assert "'f'" in check.reasons[0]


@pytest.mark.parametrize("names_known", [True, False])
def test_hard_cases_on_strong_images_are_cleared_and_wrong_labels_stay_flagged(names_known):
    """A clean or 1%-noisy set of strong images: most flags sit on hard images between two classes (their labels
    are right). Those are cleared, not withheld; the verdict stays reliable; flags on wrong labels stand."""
    rng = np.random.default_rng(6)
    k, n = 10, 3000
    true = rng.integers(0, k, n)
    other = (true + rng.integers(1, k, n)) % k
    centres = 3.0 * rng.normal(0, 1, (k, 32))
    features = centres[true] + 0.5 * rng.normal(0, 1, (n, 32))
    hard = rng.permutation(n)[: int(0.04 * n)]  # 4% between their class and another: right labels, hard images
    features[hard] = 0.5 * (centres[true[hard]] + centres[other[hard]]) + 0.5 * rng.normal(0, 1, (len(hard), 32))
    text = np.full((n, k), 0.05) if names_known else rng.dirichlet(np.ones(k), n)
    if names_known:
        text[np.arange(n), true] = 0.55
    for wrong_share in (0.0, 0.01):
        noisy = true.copy()
        easy = np.setdiff1d(np.arange(n), hard)
        planted = rng.permutation(easy)[: int(wrong_share * n)]
        noisy[planted] = other[planted]
        flagged = np.zeros(n, bool)
        flagged[hard] = flagged[planted] = True  # the selection doubts every hard image and finds the noise
        suggested = np.where(np.isin(np.arange(n), planted), true, other)
        check, withheld, cleared = check_evidence(
            features.astype(np.float32),
            noisy,
            np.ones(n, bool),
            text,
            ~flagged,
            suggested,
            [f"c{j}" for j in range(k)],
            text_informative=names_known,
        )
        assert check.reliable and not withheld.any()
        assert cleared[hard].mean() >= 0.9 and check.flags_cleared == cleared.sum()
        standing = flagged & ~cleared
        assert standing.sum() <= 0.005 * n + len(planted)  # at most 0.5% of a clean set stays flagged
        if len(planted):
            assert standing[planted].mean() >= 0.4  # wrong labels are ordinary members of their true class
        line = evidence_line(check.to_metadata())
        assert line and "were cleared" in line
