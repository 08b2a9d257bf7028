"""Dataset health: planted exact and near duplicates and out-of-distribution rows are found."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from deft_clean import testing as toy
from deft_clean.detecting.health import (
    OUTLIER_Z,
    content_hashes,
    dataset_health,
    neighbours,
    robust_z,
    scan_neighbours,
)
from deft_clean.detecting.near_duplicates import group_ids


def clustered(n_per_class: int = 60, n_classes: int = 4, dim: int = 32, seed: int = 0):
    """Features around class centres, plus planted near-duplicates and out-of-distribution rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    x = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    near_of = rng.choice(len(x), 5, replace=False)
    near = x[near_of] + rng.normal(scale=0.01, size=(5, dim)).astype(np.float32)
    ood = rng.normal(size=(4, dim)).astype(np.float32)
    ood /= np.linalg.norm(ood, axis=1, keepdims=True)
    ood = ood * 6 - centres.mean(axis=0)  # away from every centre
    features = np.concatenate([x, near, ood])
    return features, centres.astype(np.float32), near_of, len(x)


def precision_recall(found: set, planted: set) -> tuple[float, float]:
    hit = len(found & planted)
    return hit / max(len(found), 1), hit / max(len(planted), 1)


def test_near_duplicates_and_outliers_found():
    features, prompts, near_of, n = clustered()
    usable = np.ones(len(features), dtype=bool)
    health = dataset_health(features, usable, prompts=prompts, block=64)
    planted_pairs = {frozenset((int(i), n + j)) for j, i in enumerate(near_of)}
    groups = health.duplicate_group
    found_pairs = {
        frozenset((int(i), int(j)))
        for g in set(groups[groups >= 0])
        for i in np.flatnonzero(groups == g)
        for j in np.flatnonzero(groups == g)
        if i < j
    }
    assert precision_recall(found_pairs, planted_pairs) == (1.0, 1.0)
    planted_ood = set(range(n + 5, n + 9))
    assert precision_recall(set(np.flatnonzero(health.is_outlier).tolist()), planted_ood) == (1.0, 1.0)


def test_blockwise_equals_one_block():
    features, _, near_of, n_base = clustered(n_per_class=30, seed=1)
    usable = np.ones(len(features), dtype=bool)
    usable[[3, 50]] = False  # unusable rows take no part
    small_knn, small_pairs = neighbours(features, usable, k=5, threshold=0.97, block=7)
    big_knn, big_pairs = neighbours(features, usable, k=5, threshold=0.97, block=10_000)
    np.testing.assert_allclose(small_knn, big_knn, rtol=1e-5)
    assert np.isnan(small_knn[[3, 50]]).all()
    n = len(features)
    assert group_ids(n, small_pairs).tolist() == group_ids(n, big_pairs).tolist()
    groups = group_ids(n, big_pairs)
    assert all(groups[i] == groups[n_base + j] >= 0 for j, i in enumerate(near_of))  # the planted pairs
    assert not ({3, 50} & set(small_pairs.ravel().tolist()))


def test_exact_duplicates_by_content(tmp_path):
    images, labels = toy.synthetic_images(4, 2, seed=3)
    paths = toy.write_image_folder(tmp_path, images, labels, ["a", "b"])
    shutil.copy(tmp_path / paths[0], tmp_path / "b" / "copy.png")
    shutil.copy(tmp_path / paths[5], tmp_path / "a" / "copy.png")
    paths += ["b/copy.png", "a/copy.png", "a/missing.png"]
    hashes = content_hashes(tmp_path, paths)
    assert hashes[-1] is None
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(paths), 16)).astype(np.float32)  # features alone would find nothing
    health = dataset_health(features, np.ones(len(paths), dtype=bool), hashes=hashes, feature_threshold=0.999)
    groups = health.duplicate_group
    assert groups[0] == groups[8] >= 0 and groups[5] == groups[9] >= 0 and groups[0] != groups[5]
    assert (groups[[1, 2, 3, 4, 6, 7, 10]] == -1).all()


def test_group_ids_are_components():
    ids = group_ids(6, np.array([[4, 1], [1, 2], [3, 5]]))
    assert ids.tolist() == [-1, 0, 0, 1, 0, 1]


def test_export_and_report_use_health_columns(tmp_path):
    from typer.testing import CliRunner

    from deft_clean.cli.app import app
    from deft_clean.outputs.html_report import write_html
    from deft_clean.outputs.results import load_results, write_results
    from tests.review_data import make_review

    review = make_review(tmp_path)
    frame, metadata = load_results(review.results)
    clean = frame.index[review.usable & frame["is_clean"]]
    frame["outlier_score"] = pd.array(np.where(review.usable, 0.5, np.nan), dtype="Float32")
    frame["is_outlier"] = False
    frame.loc[clean[0], ["outlier_score", "is_outlier"]] = (9.0, True)
    frame["duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame.loc[[clean[1], clean[2], clean[3]], "duplicate_group"] = 0
    frame["duplicate_kind"] = None
    frame.loc[[clean[1], clean[2], clean[3]], "duplicate_kind"] = "near"
    original = (review.root / frame.at[clean[1], "path"]).read_bytes()
    for i in clean[[2, 3]]:  # real copies: export checks the files before it drops a row as a duplicate
        (review.root / frame.at[i, "path"]).write_bytes(original)
    results = write_results(frame, metadata, tmp_path / "health.parquet")
    runner = CliRunner()

    def exported(*options: str) -> set[str]:
        out = tmp_path / f"out{len(options)}.csv"
        result = runner.invoke(app, ["export", str(results), "-o", str(out), "--mode", "csv", *options])
        assert result.exit_code == 0, result.output
        return {p.split("/data/", 1)[1] for p in pd.read_csv(out)["path"]}

    every = exported()
    paths = frame["path"]
    assert every - exported("--drop-outliers") == {paths[clean[0]]}
    assert every - exported("--drop-duplicates", "--drop-outliers", "-q") == {paths[i] for i in clean[[0, 2, 3]]}
    report = runner.invoke(app, ["report", str(results)], env={"COLUMNS": "200"})
    assert "health: 1 duplicate groups (3 samples" in report.stdout and "1 outliers" in report.stdout
    page = write_html(frame, metadata, tmp_path / "r.html").read_text()
    assert 'id="n-dup-groups">1<' in page and 'id="n-outliers">1<' in page


def planted_folder(root):
    """Synthetic class images plus copies filed under another class, brightened copies, and noise images."""
    from PIL import Image

    from tests.conftest import CLASSES, N_CLASSES

    images, labels = toy.synthetic_images(20, N_CLASSES, seed=4)
    paths = toy.write_image_folder(root, images, labels, CLASSES)
    exact, near, odd = set(), set(), set()
    for j, i in enumerate((0, 25, 50)):
        copy = f"{CLASSES[(j + 1) % N_CLASSES]}/copy{j}.png"
        shutil.copy(root / paths[i], root / copy)
        exact.add(frozenset((paths[i], copy)))
    for j, i in enumerate((70, 95)):
        resaved = f"{CLASSES[int(labels[i])]}/near{j}.png"  # the same picture, slightly brighter
        brighter = np.asarray(images[i].convert("RGB"), dtype=np.int16) + 6
        Image.fromarray(brighter.clip(0, 255).astype(np.uint8)).save(root / resaved)
        near.add(frozenset((paths[i], resaved)))
    rng = np.random.default_rng(0)
    for j in range(3):
        pixels = (rng.random((32, 32, 1)) > 0.5).repeat(3, axis=2).astype(np.uint8) * 255  # salt-and-pepper
        name = f"{CLASSES[j]}/odd{j}.png"
        Image.fromarray(pixels).save(root / name)
        odd.add(name)
    listed = sorted(str(p.relative_to(root)) for p in root.rglob("*.*"))
    return listed, exact, near, odd


def pair_set(paths, groups) -> set:
    found = set()
    for g in set(groups[groups >= 0].tolist()):
        members = [paths[i] for i in np.flatnonzero(groups == g)]
        found |= {frozenset((a, b)) for a in members for b in members if a < b}
    return found


def test_planted_folder_precision_recall(tmp_path):
    """Files on disk, hashed; image features here are centred 32x32 pixels (a stand-in for CLIP's)."""
    from PIL import Image

    root = tmp_path / "data"
    paths, exact, near, odd = planted_folder(root)
    pixels = np.stack(
        [np.asarray(Image.open(root / p).convert("RGB").resize((32, 32)), dtype=np.float32).ravel() for p in paths]
    )
    features = pixels - pixels.mean(axis=0)  # [N, 3072]
    health = dataset_health(features, np.ones(len(paths), dtype=bool), hashes=content_hashes(root, paths))
    assert precision_recall(pair_set(paths, health.duplicate_group), exact | near) == (1.0, 1.0)
    outliers = {paths[i] for i in np.flatnonzero(health.is_outlier)}
    assert precision_recall(outliers, odd) == (1.0, 1.0)


def test_detect_writes_health_columns(tiny_clip, tmp_path):
    """A real detect run: the columns are there and exact copies are grouped (the tiny CLIP's features are
    too alike for near-duplicate or outlier ground truth; see the tests above)."""
    import deft_clean

    root = tmp_path / "data"
    _, exact, _, _ = planted_folder(root)
    out = tmp_path / "results.parquet"
    deft_clean.detect(root, out=out, seed=0, **tiny_clip.options(quick=True))
    frame, _ = deft_clean.load_results(out)
    groups = frame["duplicate_group"].dropna()
    assert (groups == groups.round()).all() and frame["outlier_score"].notna().all()
    assert frame["is_outlier"].dtype == bool
    paths = frame["path"].tolist()
    found = pair_set(paths, frame["duplicate_group"].fillna(-1).to_numpy(dtype=np.int64))
    assert exact <= found


def planted_near_duplicates(n: int = 4000, dim: int = 64, seed: int = 0):
    """Clustered rows plus groups of 2-3 near-duplicates (cosine ~0.99) of random rows: features, groups.
    (Each row is joined to its nearest neighbour, so a group of up to 3 always comes out whole.)"""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim)) * 2
    x = centres[rng.integers(0, 40, n)] + rng.normal(size=(n, dim))
    copies, groups, next_row = [], [], n
    for source in rng.choice(n, 100, replace=False):
        size = int(rng.integers(1, 3))
        copies.append(x[source] + rng.normal(scale=0.05, size=(size, dim)))
        groups.append([int(source), *range(next_row, next_row + size)])
        next_row += size
    return np.concatenate([x, *copies]).astype(np.float32), groups


def test_index_finds_the_groups_exact_search_finds():
    features, planted = planted_near_duplicates()
    usable = np.ones(len(features), dtype=bool)
    n = len(features)
    approximate = neighbours(features, usable, exact_rows=0)  # an IVF index
    exact = neighbours(features, usable, exact_rows=n)  # a flat (exact) index
    scanned = scan_neighbours(features, usable)  # the blockwise exact scan
    groups = group_ids(n, approximate[1])
    assert groups.tolist() == group_ids(n, exact[1]).tolist() == group_ids(n, scanned[1]).tolist()
    assert all(len({groups[i] for i in members}) == 1 and groups[members[0]] >= 0 for members in planted)
    np.testing.assert_allclose(exact[0], scanned[0], rtol=1e-4)
    assert np.corrcoef(approximate[0], exact[0])[0, 1] > 0.99  # kNN similarity behind the outlier score
    outliers = [set(np.flatnonzero(robust_z(1 - knn) > OUTLIER_Z)) for knn in (approximate[0], exact[0])]
    assert outliers[0] == outliers[1]  # far rows are searched again, exactly


def test_many_copies_of_one_picture_are_compared_once():
    """19 rows with the same bytes and their near copy are one group, and the pixel test runs at most once per
    pair of distinct pictures, not once per pair of rows."""
    from deft_clean.detecting import near_duplicates
    from deft_clean.inputs.pixel_similarity import gray_thumbnail

    images, _ = toy.digit_images("mnist", seed=1)
    pictures = [images[0], toy.planted_copy(images[0], "shift")[0], *images[1:41]]
    thumbs = np.stack([gray_thumbnail(p) for p in pictures])  # 0 and its 1-pixel shift, then 40 distinct digits
    rows = [0] * 19 + list(range(1, len(pictures)))  # 19 copies of picture 0
    hashes = ["same"] * 19 + [f"h{i}" for i in range(1, len(pictures))]
    features = np.stack([np.asarray(pictures[i].convert("L"), np.float32).ravel() for i in rows])
    tested: list[int] = []
    original = near_duplicates.compare_rows

    def counting(thumbs_, pairs, **kwargs):
        tested.append(len(pairs))
        return original(thumbs_, pairs, **kwargs)

    near_duplicates.compare_rows = counting
    try:
        health = dataset_health(
            features,
            np.ones(len(rows), dtype=bool),
            hashes=hashes,
            thumbnails=(thumbs[rows], np.ones(len(rows), dtype=bool)),
            feature_threshold=0.5,
        )
    finally:
        near_duplicates.compare_rows = original
    groups, kind = health.duplicate_group, health.duplicate_kind
    assert (groups[:20] == 0).all() and kind[0] == "exact" and kind[19] == "near"
    assert (groups[20:] == -1).all() and not health.warnings
    assert sum(tested) <= 42 * 41 // 2  # distinct pictures' pairs at most: the copies cost nothing more
