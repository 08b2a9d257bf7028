"""Dataset health: planted exact and near duplicates and out-of-distribution rows are found."""

from __future__ import annotations

import shutil

import numpy as np

from deft_clean import toy
from deft_clean.health import content_hashes, dataset_health, group_ids, neighbours


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
    features, _, _, _ = clustered(n_per_class=30, seed=1)
    usable = np.ones(len(features), dtype=bool)
    usable[[3, 50]] = False  # unusable rows take no part
    small_knn, small_pairs = neighbours(features, usable, k=5, threshold=0.9, block=7)
    big_knn, big_pairs = neighbours(features, usable, k=5, threshold=0.9, block=10_000)
    np.testing.assert_allclose(small_knn, big_knn, rtol=1e-5)
    assert np.isnan(small_knn[[3, 50]]).all()
    assert {tuple(p) for p in small_pairs.tolist()} == {tuple(p) for p in big_pairs.tolist()}
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
    health = dataset_health(features, np.ones(len(paths), dtype=bool), hashes=hashes, threshold=0.999)
    groups = health.duplicate_group
    assert groups[0] == groups[8] >= 0 and groups[5] == groups[9] >= 0 and groups[0] != groups[5]
    assert (groups[[1, 2, 3, 4, 6, 7, 10]] == -1).all()


def test_group_ids_are_components():
    ids = group_ids(6, np.array([[4, 1], [1, 2], [3, 5]]))
    assert ids.tolist() == [-1, 0, 0, 1, 0, 1]
