"""Detection quality per open_clip family (issue 38): each family's tiny stand-in (deft_clean.testing.STAND_INS:
the same tower classes, pooling, masks and tokenizer types as SigLIP, EVA02/PE-Core, ConvNeXt/MobileCLIP, RN50 and
Hugging Face text towers) pretrained on MNIST part A, then deft-clean with default options, ``--quick`` and the
cleanlab pipeline on that family's own features, on a shifted-digits target of benchmarks/quality.py
(mnist-bold: thick strokes, by default).

For towers without tokens, the image-side adapter is compared too: text prompts only (the default) against
norm-bias tuning of the last stage (``image_adapter="norm-bias"``), beside the default.

    python benchmarks/families.py                           # every family, 3 noise settings, 3 seeds
    python benchmarks/families.py --families eva,convnext --seeds 1
    python benchmarks/families.py --target mnist-texture --paper --tag families-texture   # + the paper's schedule

Writes benchmarks/results/families.md and families.json (``--tag``: other names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402

NOISE = (("symmetric", 0.2), ("symmetric", 0.4), ("pair", 0.3))
PRETRAIN = {"steps": 1200, "lr": 1e-3, "batch_size": 64, "seed": 0}  # as quality.py's foundation
# The timm ViT (map pooling) and Eva trunks learn slower from scratch: after PRETRAIN their zero-shot accuracy on
# mnist-bold was 35% and 56% (the others 85%), and DeFT, which starts from the text side, withheld every flag on
# SigLIP's. 3,600 steps at lr 3e-4 give 80% and 79%: the comparison is then about DeFT on that family, not about
# an undertrained stand-in (real SigLIP2 / PE-Core / EVA02 zero-shot as well as the others).
SLOW_LEARNERS = {"siglip": {"steps": 3600, "lr": 3e-4}, "eva": {"steps": 3600, "lr": 3e-4}}


def recipe(family: str) -> dict[str, Any]:
    """How ``family``'s stand-in is pretrained on MNIST part A."""
    return {**PRETRAIN, **SLOW_LEARNERS.get(family, {})}


TOKENLESS = ("convnext", "resnet")


def build_stand_in(family: str, work: Path) -> tuple[Path, Path]:
    """Pretrain ``family``'s stand-in on MNIST part A once (cached in ``work`` by recipe)."""
    from deft_clean import testing as toy

    folder = work / f"foundation-{family}"
    config, checkpoint, recipe_file = folder / f"{family}-digits.json", folder / "tiny.pt", folder / "recipe.json"
    toy.register_tiny_timm_models()
    if checkpoint.is_file() and recipe_file.is_file() and json.loads(recipe_file.read_text()) == recipe(family):
        return config, checkpoint
    images, labels = toy.digit_images("mnist")
    model_config = toy.stand_in_config(family, folder, quality.CLASSES)
    toy.pretrain_tiny_clip(
        images[quality.SPLIT_A],
        labels[quality.SPLIT_A],
        quality.CLASSES,
        config_path=config,
        checkpoint_path=checkpoint,
        config=model_config,
        **recipe(family),
    )
    recipe_file.write_text(json.dumps(recipe(family)))
    return config, checkpoint


def run_family(family: str, args: argparse.Namespace) -> dict[str, Any]:

    config, checkpoint = build_stand_in(family, args.work_dir)
    data = quality.prepare(args.target, config, checkpoint, device="cpu")
    print(f"{family}: zero-shot accuracy {data.zero_shot_accuracy['B']:.3f}", flush=True)
    out: dict[str, Any] = {
        "zero_shot_accuracy": data.zero_shot_accuracy["B"],
        "settings": {},
        "adaptation": "",
        "seeds": args.seeds,
        "pretrain": recipe(family),
    }
    for kind, rate in NOISE:
        per_seed = []
        for seed in range(args.seeds):
            setting = quality.Setting(kind, rate, seed)
            labels = quality.noisy_labels(setting, data)
            truly_clean = labels == data.true_b
            folder = args.work_dir / "data" / args.target / family / setting.slug
            paths = quality.write_folder(folder, data.images_b, labels, data.classes)
            common = {"seed": seed, "device": "cpu", "num_workers": 0}
            runs: dict[str, quality.MethodRun] = {}
            runs["deft-clean"], result = quality.run_deft(folder, paths, config, checkpoint, **common)
            record = result.metadata.get("prompts") or {}
            out["adaptation"] = record.get("adaptation", "")
            runs["deft-clean"].extra["prompts"] = record
            runs["deft-clean --quick"], _ = quality.run_deft(folder, paths, config, checkpoint, quick=True, **common)
            if args.paper:
                paper = {"early_stop": False, "images_per_epoch": "all"}
                runs[quality.PAPER], _ = quality.run_deft(folder, paths, config, checkpoint, **paper, **common)
            if family in TOKENLESS:
                runs["deft-clean norm-bias"], _ = quality.run_deft(
                    folder, paths, config, checkpoint, image_adapter="norm-bias", **common
                )
            started = time.perf_counter()
            oof = quality.out_of_fold_probabilities(data.features_b, labels, seed=seed)
            runs["cleanlab"] = quality.run_cleanlab(data, labels, oof=(oof, time.perf_counter() - started))
            metrics = {name: asdict(quality.evaluate(run, truly_clean)) for name, run in runs.items()}
            metrics["deft-clean"]["prompts"] = record.get("outcome", "")
            metrics["deft-clean"]["prompts_reason"] = record.get("reason", "")
            per_seed.append(metrics)
            line = "  ".join(f"{m}: F1 {v['f1_noisy']:.3f} {v['seconds']:.0f}s" for m, v in metrics.items())
            print(f"  {family} {setting.slug}: {line}", flush=True)
        out["settings"][quality.Setting(kind, rate, 0).name] = per_seed
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# Detection quality per open_clip family (tiny stand-ins, target {report['target']}, default options)",
        "",
        f"{report['created']}, {report['platform']}, torch {report['torch']}; stand-ins pretrained on MNIST part A "
        "(steps / lr per family below: the timm ViT and Eva trunks learn slower). F1 of noisy-label detection "
        "in percent, mean over seeds (min-max); cleanlab = find_label_issues on a 5-fold probe of the same "
        "family's frozen features. `norm-bias` = towers without tokens with the last stage's norms and biases "
        "tuned beside the prompts (the default there trains the text prompts only).",
        "",
        "| family | stands in for | pretrain (steps, lr) | seeds | zero-shot acc | noise | deft-clean | --quick | "
        "paper schedule | cleanlab | norm-bias | default - cleanlab | prompts | adaptation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    from deft_clean import testing as toy

    for family, result in report["families"].items():
        pretrain = result.get("pretrain") or report["pretrain"]
        for setting, per_seed in result["settings"].items():

            def cell(method: str, seeds: list = per_seed) -> tuple[str, float]:
                values = [100 * s[method]["f1_noisy"] for s in seeds if method in s]
                if not values:
                    return "-", float("nan")
                mean = float(np.mean(values))
                spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
                return f"{mean:.1f}{spread}", mean

            default, d = cell("deft-clean")
            quick, _ = cell("deft-clean --quick")
            paper, _ = cell(quality.PAPER)
            clean, c = cell("cleanlab")
            tuned, _ = cell("deft-clean norm-bias")
            outcomes = ", ".join(sorted({s["deft-clean"].get("prompts", "") or "?" for s in per_seed}))
            lines.append(
                f"| {family} | {toy.STAND_INS[family][1]} | {pretrain['steps']}, {pretrain['lr']:g} | "
                f"{len(per_seed)} | {100 * result['zero_shot_accuracy']:.1f} | {setting} | "
                f"{default} | {quick} | {paper} | {clean} | {tuned} | {d - c:+.1f} | {outcomes} | "
                f"{result['adaptation']} |"
            )
    withheld = [
        f"{family} {setting}"
        for family, result in report["families"].items()
        for setting, per_seed in result["settings"].items()
        if any(seed["deft-clean"].get("withheld", 0) > 0 and not seed["deft-clean"]["flagged"] for seed in per_seed)
    ]
    if withheld:
        lines += [
            "",
            'F1 0.0 where no flag stands: the evidence check withheld every flag ("cannot tell") in a run of '
            f"{', '.join(withheld)}.",
        ]
    reasons = [
        (family, setting, seed["deft-clean"]["prompts_reason"])
        for family, result in report["families"].items()
        for setting, per_seed in result["settings"].items()
        for seed in per_seed[:1]
        if seed["deft-clean"].get("prompts_reason")
    ]
    if reasons:
        lines += ["", "The judge's reason, seed 0 of each setting:", ""]
        lines += [f"- {family}, {setting}: {reason}" for family, setting, reason in reasons]
    lines.append("")
    lines.append(f"Total benchmark time: {report['total_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from deft_clean import testing as toy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(toy.STAND_INS), help="comma-separated STAND_INS keys")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", default="mnist-bold", help="a benchmarks/quality.py target (shifted digits)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper", action="store_true", help="also run the paper's schedule (no early stop, all rows)")
    parser.add_argument("--tag", default="families", help="output file names: TAG.md, TAG.json")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "deft-families")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="only render families.md from these families.json files (later wins)"
    )
    args = parser.parse_args(argv)
    if args.merge:
        reports = [json.loads(path.read_text()) for path in args.merge]
        report = {**reports[-1], "families": {}, "total_seconds": sum(r["total_seconds"] for r in reports)}
        for part in reports:
            for family, result in part["families"].items():
                report["families"][family] = {"seeds": part["seeds"], "pretrain": part["pretrain"], **result}
        return write(report, args.out_dir, args.tag)
    quality.set_threads(args.threads)
    import torch

    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    families = {family: run_family(family, args) for family in args.families.split(",")}
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "seeds": args.seeds,
        "target": args.target,
        "pretrain": PRETRAIN,
        "families": families,
        "total_seconds": time.perf_counter() - started,
    }
    return write(report, args.out_dir, args.tag)


def write(report: dict[str, Any], out_dir: Path, tag: str = "families") -> dict[str, Any]:
    """TAG.md and TAG.json in ``out_dir``; print the table."""
    markdown = render(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.md").write_text(markdown)
    (out_dir / f"{tag}.json").write_text(json.dumps(report, indent=1, default=float))
    print(markdown)
    return report


if __name__ == "__main__":
    main()
