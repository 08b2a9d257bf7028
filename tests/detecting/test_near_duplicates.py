"""Duplicates a user can act on: planted copies among look-alike distinct digits are confirmed on the pixels,
distinct look-alikes are not grouped, and export --drop-duplicates keeps every distinct image."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deft_clean import testing as toy
from deft_clean.detecting.health import content_hashes, dataset_health
from deft_clean.inputs.pixel_similarity import DUPLICATE_THRESHOLD
from deft_clean.inputs.readers.base import FileImages
from deft_clean.run.errors import DataError, UsageError
from deft_clean.run.options import DetectConfig
from deft_clean.testing import planted_copy

NEAR_KINDS = ("jpeg", "shift", "bright", "dark", "resize", "upscale")


@dataclass(frozen=True)
class Planted:
    root: Path
    paths: list[str]  # listing order
    picture: np.ndarray  # int [N]: which distinct picture each row shows (a copy: its source's)
    kind: list[str]  # "distinct", "exact" or a NEAR_KINDS entry


def write_planted(root: Path, *, per_kind: int = 2) -> Planted:
    """120 MNIST and 40 upscaled 8x8 digits (look-alikes: the same digits, often alike) plus planted copies."""
    mnist, mnist_y = toy.digit_images("mnist", seed=3)
    small, small_y = toy.digit_images("digits", seed=3)
    images = list(mnist[:120]) + [im.resize((28, 28), Image.BICUBIC) for im in small[:40]]
    labels = [int(y) for y in mnist_y[:120]] + [int(y) for y in small_y[:40]]
    truth: dict[str, tuple[int, str]] = {}
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        im.save(root / f"{y}/{i:04d}.png")
        truth[f"{y}/{i:04d}.png"] = (i, "distinct")
    sources = iter(np.random.default_rng(0).choice(len(images), per_kind * (len(NEAR_KINDS) + 1), replace=False))
    for kind in ("exact", *NEAR_KINDS):
        for _ in range(per_kind):
            i = int(next(sources))
            if kind == "exact":
                rel = f"{labels[i]}/copy-exact-{i:04d}.png"
                shutil.copy(root / f"{labels[i]}/{i:04d}.png", root / rel)
            else:
                copy, suffix = planted_copy(images[i], kind)
                rel = f"{labels[i]}/copy-{kind}-{i:04d}{suffix}"
                copy.save(root / rel)
            truth[rel] = (i, kind)
    paths = sorted(truth)
    return Planted(root, paths, np.array([truth[p][0] for p in paths]), [truth[p][1] for p in paths])


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return write_planted(tmp_path_factory.mktemp("planted") / "data")


def pooled_features(planted: Planted) -> np.ndarray:
    """float32 [N, 49]: 7x7 mean-pooled, centred grayscale pixels: a stand-in for CLIP features that puts a
    copy among its source's nearest rows (and many look-alikes with it)."""
    images = FileImages(planted.root, planted.paths)
    pixels = np.stack(
        [
            np.asarray(images.open(i).convert("L").resize((7, 7), Image.BOX), np.float32).ravel()
            for i in range(len(planted.paths))
        ]
    )
    return pixels - pixels.mean(axis=0)


def planted_health(planted: Planted, **options):
    usable = np.ones(len(planted.paths), dtype=bool)
    return dataset_health(
        pooled_features(planted),
        usable,
        hashes=content_hashes(planted.root, planted.paths),
        images=FileImages(planted.root, planted.paths),
        **{"feature_threshold": 0.0, **options},
    )


def test_planted_copies_confirmed_and_lookalikes_apart(planted):
    health = planted_health(planted)
    groups = health.duplicate_group
    source = {int(p): r for r, (p, k) in enumerate(zip(planted.picture, planted.kind, strict=True)) if k == "distinct"}
    for row, kind in enumerate(planted.kind):
        if kind == "distinct":
            continue
        first = source[int(planted.picture[row])]
        assert groups[row] >= 0 and groups[row] == groups[first], (planted.paths[row], kind)
        assert health.duplicate_kind[row] == ("exact" if kind == "exact" else "near")
        if kind == "exact":
            assert health.duplicate_similarity[row] == 1.0
        else:
            assert DUPLICATE_THRESHOLD <= health.duplicate_similarity[row] < 1.0, (
                kind,
                health.duplicate_similarity[row],
            )
    for g in set(groups[groups >= 0].tolist()):
        assert len(set(planted.picture[groups == g].tolist())) == 1  # no group mixes distinct pictures
    unique = groups < 0
    assert np.isnan(health.duplicate_similarity[unique]).all() and (health.duplicate_kind[unique] == None).all()  # noqa: E711
    assert (groups >= 0).sum() == 2 * (len(NEAR_KINDS) + 1) * 2  # every copy and its source, nothing else


def test_threshold_changes_grouping(planted):
    strict = planted_health(planted, threshold=0.9995).duplicate_group
    default = planted_health(planted).duplicate_group
    loose = planted_health(planted, threshold=0.5).duplicate_group
    kinds = np.array(planted.kind)
    assert 0 < (strict >= 0).sum() < (default >= 0).sum()  # only the closest copies (dark, exact) stay
    assert set(kinds[strict >= 0]) >= {"exact", "dark"} and "shift" not in set(kinds[strict >= 0])
    # a loose threshold adds no look-alike: the block residual (MAX_RESIDUAL) still tells them apart
    assert ((loose >= 0) >= (default >= 0)).all()
    for g in set(loose[loose >= 0].tolist()):
        assert len(set(planted.picture[loose == g].tolist())) == 1
    with_features = planted_health(planted, threshold=0.5, feature_threshold=1.01).duplicate_group
    assert set(kinds[with_features >= 0]) == {"exact", "distinct"}  # no candidates: exact copies only


def test_oversized_group_is_dropped_with_a_warning_that_names_it(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):  # 30 re-saved versions of one blank page: too many to be plausible copies
        Image.fromarray(np.full((16, 16), 200 + i % 3, np.uint8)).save(tmp_path / f"blank{i:02d}.png")
        paths.append(f"blank{i:02d}.png")
    features = rng.normal(size=(30, 8)).astype(np.float32)
    health = dataset_health(
        features,
        np.ones(30, bool),
        images=FileImages(tmp_path, paths),
        hashes=content_hashes(tmp_path, paths),
        feature_threshold=-1.0,
        names=paths,
    )
    assert len(set(health.duplicate_group.tolist())) == 3  # exact copies (same bytes) are still reported
    assert {health.duplicate_kind[i] for i in np.flatnonzero(health.duplicate_group >= 0)} == {"exact"}
    assert len(health.warnings) == 1 and "group of 30 images" in health.warnings[0]
    assert "blank00.png" in health.warnings[0] and "--duplicate-threshold" in health.warnings[0]


def test_detect_and_drop_duplicates_keep_every_distinct_image(planted, tiny_clip, tmp_path, caplog):
    """The real pipeline: detect (pixel-confirmed health), the Parquet's columns, export --drop-duplicates."""
    from typer.testing import CliRunner

    import deft_clean
    from deft_clean.cli.app import app

    out = tmp_path / "results.parquet"
    result = deft_clean.detect(planted.root, out=out, seed=0, **tiny_clip.options(quick=True))
    frame, metadata = deft_clean.load_results(out)
    assert metadata["options"]["duplicate_threshold"] == DUPLICATE_THRESHOLD
    assert list(frame["path"]) == planted.paths
    exact = np.array([k == "exact" for k in planted.kind])
    assert (frame.loc[exact, "duplicate_kind"] == "exact").all() and (
        frame.loc[exact, "duplicate_similarity"] == 1
    ).all()
    assert frame["duplicate_kind"].isin(["exact", "near"]).sum() == frame["duplicate_group"].notna().sum()
    grouped = frame["duplicate_group"].notna().to_numpy()
    for g in frame["duplicate_group"].dropna().unique():
        assert len(set(planted.picture[(frame["duplicate_group"] == g).to_numpy()].tolist())) == 1
    assert isinstance(result.metadata["warnings"], list)

    exported = tmp_path / "export"
    args = ["export", str(out), "-o", str(exported), "--mode", "copy", "--keep-flagged", "--drop-duplicates", "-q"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    kept = {
        hashlib.sha256(f.read_bytes()).hexdigest() for f in exported.rglob("*") if f.is_file() and f.suffix != ".csv"
    }
    distinct = [p for p, k in zip(planted.paths, planted.kind, strict=True) if k == "distinct"]
    assert {hashlib.sha256((planted.root / p).read_bytes()).hexdigest() for p in distinct} <= kept
    n_files = sum(1 for f in exported.rglob("*") if f.is_file() and f.suffix not in (".csv", ".json"))  # images
    dropped = int(grouped.sum() - frame["duplicate_group"].nunique())
    assert dropped >= exact.sum() and n_files == len(planted.paths) - dropped

    # a crafted file calls distinct images exact and near copies: export checks the files and keeps them all
    from deft_clean.outputs.results import write_results

    lone = [i for i, k in enumerate(planted.kind) if k == "distinct"][:5]
    crafted = frame.copy()
    crafted["duplicate_group"] = crafted["duplicate_group"].astype("Int64")
    crafted.loc[lone[:3], "duplicate_group"], crafted.loc[lone[3:], "duplicate_group"] = 900, 901
    crafted.loc[lone[:3], "duplicate_kind"], crafted.loc[lone[3:], "duplicate_kind"] = "exact", "near"
    lying = write_results(crafted, metadata, tmp_path / "lying.parquet")
    again = tmp_path / "export2"
    args = ["export", str(lying), "-o", str(again), "--mode", "copy", "--keep-flagged", "--drop-duplicates"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    kept = {hashlib.sha256(f.read_bytes()).hexdigest() for f in again.rglob("*.png")}
    assert {hashlib.sha256((planted.root / planted.paths[i]).read_bytes()).hexdigest() for i in lone} <= kept
    assert any("5 row(s) the results file calls duplicates are not copies" in r.getMessage() for r in caplog.records)
    assert sum(1 for _ in again.rglob("*.png")) == n_files  # the real copies are still dropped


def test_parquet_round_trips_the_new_columns(tmp_path):
    import pyarrow.parquet as pq

    from deft_clean.outputs.results import load_results, write_results
    from tests.review_data import make_review

    review = make_review(tmp_path)
    table = pq.read_table(review.results)
    old = tmp_path / "old.parquet"  # a file from before the two columns
    pq.write_table(table.drop_columns(["duplicate_kind", "duplicate_similarity"]), old)
    frame, metadata = load_results(old)
    assert frame["duplicate_kind"].isna().all() and frame["duplicate_similarity"].isna().all()
    frame["duplicate_group"] = pd.array([0, 0, 1, 1] + [None] * (len(frame) - 4), dtype="Int64")
    frame["duplicate_kind"] = ["exact", "exact", "near", "near"] + [None] * (len(frame) - 4)
    frame["duplicate_similarity"] = pd.array([1.0, 1.0, 0.995, 0.993] + [None] * (len(frame) - 4), dtype="Float32")
    back, _ = load_results(write_results(frame, metadata, tmp_path / "again.parquet"))
    assert back["duplicate_kind"].tolist()[:4] == ["exact", "exact", "near", "near"]
    assert back["duplicate_kind"][4:].isna().all()
    assert back["duplicate_similarity"].dtype == "Float32"
    np.testing.assert_allclose(
        back["duplicate_similarity"].to_numpy(float, na_value=np.nan)[:4], [1, 1, 0.995, 0.993], rtol=1e-6
    )
    assert back["duplicate_similarity"].isna().sum() == len(frame) - 4
    frame["duplicate_kind"] = ["copy"] + [None] * (len(frame) - 1)
    with pytest.raises(DataError, match="duplicate_kind"):
        load_results(write_results(frame, metadata, tmp_path / "bad.parquet"))


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan"), -0.2])
def test_duplicate_threshold_is_validated(value):
    with pytest.raises(UsageError, match="duplicate_threshold"):
        DetectConfig(duplicate_threshold=value)


def test_duplicate_threshold_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from deft_clean.cli.app import app

    done = CliRunner().invoke(app, ["detect", str(tmp_path), "--duplicate-threshold", "1.2"])
    assert done.exit_code != 0 and "--duplicate-threshold" in done.output
    assert DetectConfig().duplicate_threshold == DUPLICATE_THRESHOLD
