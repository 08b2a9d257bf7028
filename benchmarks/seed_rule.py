"""Which rows should seed the fused rule? The text seed of today against every usable row (a research probe).

The fused rule (docs/detect.md, steps 2-5) fits its first cross-fitted image probe on a *seed*: the rows whose
label the text evidence confirms (zero-shot or learned prompts; the image evidence's own seed where the class
names are opaque), then grows the clean set from there. Where the text reads the classes poorly, that seed is
small and leans to the classes the text knows. This probe replaces the seed by every usable row (the probe's
first round then learns from the noisy labels, as cleanlab's does, and the rounds after it from its own clean
set) and reports both, with ``--quick`` (the seed's effect alone, no prompt training), on quality.py's targets
(the main tiny CLIP) and on the families.py stand-ins (``FAMILY:TARGET``).

Not an option of deft-clean: the variant is made by replacing ``selection.fused_seed`` in this process.

    python benchmarks/seed_rule.py --runs main:mnist-texture,main:mnist-bold --seeds 3
    python benchmarks/seed_rule.py --runs siglip:mnist-texture,resnet:mnist-texture --seeds 2 --tag seed_rule-b
    python benchmarks/seed_rule.py --merge results/seed_rule-a.json results/seed_rule-b.json
    python benchmarks/seed_rule.py --mode default --runs main:mnist --noise pair-0.4,pair-0.45 --tag heavy

Writes benchmarks/results/seed_rule.md and seed_rule.json (``--tag`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402  (stand-ins, built and cached as families.py does)
import quality as q  # noqa: E402  (the foundation model, targets, noise, folders and detect runner)

VARIANTS = ("text seed", "all rows")


def foundation(family: str, work: Path) -> tuple[Path, Path, Path]:
    """Model config, weights and the data folder of ``family`` ("main": quality.py's tiny CLIP)."""
    if family == "main":
        config, checkpoint = q.build_foundation(work)
        return config, checkpoint, work / "data"
    config, checkpoint = families.build_stand_in(family, work / "families")
    return config, checkpoint, work / "families" / "data"


def run_pair(
    folder: Path, paths: list[str], config: Path, checkpoint: Path, seed: int, truth: np.ndarray, *, quick: bool
) -> dict:
    """detect (``--quick`` or default options) with the text seed, then with every usable row as the seed: metrics
    of both."""
    from deft_clean.detecting import selection

    text_seed = selection.fused_seed

    def every_row(cfg: Any, listing: Any, evidence: Any, *, device: Any) -> np.ndarray:
        return evidence.usable.copy()

    out: dict[str, Any] = {}
    try:
        for variant, seed_fn in zip(VARIANTS, (text_seed, every_row), strict=True):
            selection.fused_seed = seed_fn
            run, result = q.run_deft(
                folder, paths, config, checkpoint, seed=seed, device="cpu", num_workers=0, quick=quick
            )
            metrics = q.evaluate(run, truth)
            evidence = result.metadata.get("evidence") or {}
            out[variant] = {
                "f1": metrics.f1_noisy,
                "auc": metrics.auc,
                "flagged_share": metrics.flagged_share,
                "reliable": evidence.get("reliable"),
                "withheld": evidence.get("flags_withheld"),
                "seconds": run.seconds,
            }
    finally:
        selection.fused_seed = text_seed
    return out


def parse_noise(text: str | None) -> tuple[tuple[str, float], ...] | None:
    """``--noise pair-0.4,instance-0.45`` as ((kind, rate), ...); None: each target's own settings."""
    if not text:
        return None
    return tuple((kind, float(rate)) for kind, rate in (item.rsplit("-", 1) for item in text.split(",")))


def run_target(
    family: str, target: str, seeds: int, work: Path, *, quick: bool, noise: tuple[tuple[str, float], ...] | None = None
) -> dict[str, Any]:
    config, checkpoint, data_root = foundation(family, work)
    data = q.prepare(target, config, checkpoint, device="cpu")
    print(f"{family}:{target}: zero-shot accuracy {data.zero_shot_accuracy['B']:.3f}", flush=True)
    settings: dict[str, list] = {}
    for kind, rate in noise or q.settings_of(target, None):
        per_seed = []
        for seed in range(seeds):
            setting = q.Setting(kind, rate, seed)
            labels = q.noisy_labels(setting, data)
            base = data_root / target if family == "main" else data_root / target / family
            folder = base / setting.slug
            paths = q.write_folder(folder, data.images_b, labels, data.classes)
            pair = run_pair(folder, paths, config, checkpoint, seed, labels == data.true_b, quick=quick)
            per_seed.append(pair)
            line = "  ".join(f"{v}: F1 {pair[v]['f1']:.3f} flagged {pair[v]['flagged_share']:.3f}" for v in VARIANTS)
            print(f"  {family}:{target} {setting.slug}: {line}", flush=True)
        settings[q.Setting(kind, rate, 0).name] = per_seed
    return {"zero_shot_accuracy": data.zero_shot_accuracy["B"], "seeds": seeds, "settings": settings}


def render(report: dict[str, Any]) -> str:
    lines = [
        "# The fused rule's seed: text-confirmed rows (today) vs every usable row "
        f"({'`--quick`' if report.get('mode', 'quick') == 'quick' else 'default options'})",
        "",
        f"{report['created']}, {report['platform']}, torch {report['torch']}. `benchmarks/seed_rule.py`: the same "
        "detect twice per run, once with today's seed (the rows whose label the zero-shot prompts confirm; "
        "the image seed where class names are opaque) and once seeding the first image probe with every usable row. "
        "Noisy-label F1 in percent, mean over seeds (a run whose flags were all withheld counts 0); `all - text`: the "
        "mean (min..max) difference over the runs whose flags stood both ways; clean copies: flagged share.",
        "",
        "| model:target | zero-shot acc | noise | text seed | all rows | all - text | flagged % (text / all) | "
        "runs whose flags stand (text / all) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    symmetric, structured, flips = [], [], [0, 0]
    for name, result in report["runs"].items():
        for setting, per_seed in result["settings"].items():
            f1 = {v: [100 * s[v]["f1"] for s in per_seed] for v in VARIANTS}
            # the F1 difference where flags stood both ways (a run whose flags were withheld scores 0 and says so)
            both = [i for i, s in enumerate(per_seed) if all(s[v]["reliable"] for v in VARIANTS)]
            diff = [f1[VARIANTS[1]][i] - f1[VARIANTS[0]][i] for i in both]
            flagged = {v: np.mean([100 * s[v]["flagged_share"] for s in per_seed]) for v in VARIANTS}
            stand = {v: sum(bool(s[v]["reliable"]) for s in per_seed) for v in VARIANTS}
            flips[0] += sum(bool(s[VARIANTS[1]]["reliable"]) and not s[VARIANTS[0]]["reliable"] for s in per_seed)
            flips[1] += sum(bool(s[VARIANTS[0]]["reliable"]) and not s[VARIANTS[1]]["reliable"] for s in per_seed)
            if setting != "clean" and diff:
                (symmetric if setting.startswith("symmetric") else structured).append(float(np.mean(diff)))
            change = f"{np.mean(diff):+.1f} ({min(diff):+.1f}..{max(diff):+.1f})" if diff else "-"
            lines.append(
                f"| {name} | {100 * result['zero_shot_accuracy']:.1f} | {setting} | {np.mean(f1[VARIANTS[0]]):.1f} | "
                f"{np.mean(f1[VARIANTS[1]]):.1f} | {change} | "
                f"{flagged[VARIANTS[0]]:.1f} / {flagged[VARIANTS[1]]:.1f} | {stand[VARIANTS[0]]} / "
                f"{stand[VARIANTS[1]]} of {len(per_seed)} |"
            )
    means = [
        f"{kind} {np.mean(diffs):+.2f} ({len(diffs)} settings)"
        for kind, diffs in (("symmetric", symmetric), ("pair and instance", structured))
        if diffs
    ]
    lines += [
        "",
        f"Mean of all - text over the noisy settings, runs whose flags stood both ways: {', '.join(means) or 'none'}. "
        f"Runs whose flags stood only with every row as the seed: {flips[0]}; only with the text seed: {flips[1]}.",
    ]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path, tag: str) -> dict[str, Any]:
    q.write_tables(out_dir, tag, render(report), report)  # TAG.md (with the total time) and TAG.json; printed
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", default="main:mnist-texture", help="comma-separated FAMILY:TARGET (main = quality.py)"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mode", choices=("quick", "default"), default="quick", help="detect with --quick or defaults")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--noise", help="settings to run instead of each target's own, e.g. pair-0.4,pair-0.45,instance-0.45"
    )
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "deft-quality")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="seed_rule", help="output file names: TAG.md, TAG.json")
    parser.add_argument("--merge", nargs="+", type=Path, help="only render TAG.md from these JSON files (in order)")
    args = parser.parse_args(argv)
    if args.merge:
        reports = [json.loads(path.read_text()) for path in args.merge]
        merged = {**reports[-1], "runs": {}, "total_seconds": sum(r["total_seconds"] for r in reports)}
        for part in reports:
            merged["runs"].update(part["runs"])
        return write(merged, args.out_dir, args.tag)
    q.set_threads(args.threads)
    import torch

    started = time.perf_counter()
    runs = {}
    for item in args.runs.split(","):
        family, target = item.split(":")
        noise = parse_noise(args.noise)
        runs[item] = run_target(family, target, args.seeds, args.work_dir, quick=args.mode == "quick", noise=noise)
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "mode": args.mode,
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    return write(report, args.out_dir, args.tag)


if __name__ == "__main__":
    main()
