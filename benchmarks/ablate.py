"""Why does deft-clean win or lose? Small experiments inside the DeFT design, on quality.py's data.

Each variant trains DeFT's prompts once per setting with deft-clean's own functions (the same code path
as ``deft_clean.detect``) and then reads several clean decisions and scores off the same eval-mode
scoring pass:
  threshold          p_clean > 0.5 (the learned negative prompt is the threshold)
  threshold+argmax   and the positive-prompt top-1 == given label (deft-clean's default)
  argmax             positive-prompt top-1 == given label only (no negative prompt at all)
  augmented pass     threshold+argmax read off one pass with training augmentation, a stand-in for the
                     reference's mask from its last (augmented, train-mode) epoch
AUCs are reported for p_clean, for the positive-prompt softmax at the given label (``p_pos``), and
for their product.

    .venv/bin/python benchmarks/ablate.py                       # all 12 variants, 4 settings, ~25 min
    .venv/bin/python benchmarks/ablate.py --variants base,epochs20 --only symmetric-0.4-s0

Writes benchmarks/results/ablations.md and ablations.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import quality as q

# Each variant = overrides of DEFT_OPTIONS (plus ``train_rule`` for the rule used in training).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "epochs5": {"epochs": 5},
    "epochs20": {"epochs": 20},
    "random-ctx16": {"ctx_init": None, "n_ctx": 16},
    "class-specific": {"class_specific": True},
    "vpt0": {"vpt_tokens": 0},
    "vpt8": {"vpt_tokens": 8},
    "lr0.03": {"lr": 0.03},
    "warmup2": {"warmup_epochs": 2},
    "train-threshold": {"clean_rule": "threshold"},
    # not DetectConfig options: the training crop of deft_clean.inputs.transforms.train_transform (scale 0.5-1)
    "crop0.8": {"crop_scale": (0.8, 1.0)},
    "no-crop": {"crop_scale": None},
}
SETTINGS = ["symmetric-0.4-s0", "symmetric-0.6-s0", "pair-0.3-s0", "instance-0.3-s0"]


def crop_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], *, hflip: bool = True, scale: tuple[float, float] | None
) -> Any:
    """deft-clean's training transform with another random-resized-crop scale (None: resize, no crop)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    first = T.RandomResizedCrop(size, scale=scale, interpolation=bicubic) if scale else T.Resize((size, size), bicubic)
    steps = [first, *([T.RandomHorizontalFlip()] if hflip else []), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


# The DeFT-rule knobs were studied with the options a user passed for the tiny model before the fused
# rule existed (quality.py now runs defaults); the ablation keeps them as its base.
DEFT_OPTIONS: dict[str, Any] = {
    "ctx_init": "a photo of a",
    "lr": 0.01,
    "vpt_tokens": 4,
    "epochs": 10,
    "batch_size": 64,
    "hflip": False,
}


@dataclass(frozen=True)
class Foundation:
    config: Path  # open_clip model-config JSON
    checkpoint: Path  # state dict


def default_settings(seeds: int) -> list[q.Setting]:
    return [q.Setting(kind, rate, seed) for kind, rate in q.NOISE for seed in range(seeds)]


def train_and_score(
    folder: Path, foundation: Foundation, *, seed: int, options: dict[str, Any], device: str, num_workers: int
) -> dict[str, Any]:
    """Train prompts like ``deft_clean.detect`` does; return positive/negative logits of every sample."""
    import torch

    from deft_clean.detecting import prompt_training as detector
    from deft_clean.detecting.prompt_training import train_prompts
    from deft_clean.inputs.dataset import ImageDataset
    from deft_clean.inputs.listing import list_dataset
    from deft_clean.inputs.transforms import eval_transform, train_transform
    from deft_clean.models.clip import load_clip, resolve_device
    from deft_clean.models.deft import DeftModel
    from deft_clean.run.engine import seed_everything
    from deft_clean.run.options import DetectConfig, PassOptions

    options = dict(options)
    crop = options.pop("crop_scale", "default")
    cfg = DetectConfig(**{**DEFT_OPTIONS, **options, "seed": seed, "device": device, "num_workers": num_workers})
    listing = list_dataset(folder)
    dev = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    loaded = load_clip(str(foundation.config), str(foundation.checkpoint), device=dev, quiet=True)
    model = DeftModel.from_config(loaded, listing.prompt_names, cfg).to(dev)
    image = {"image_size": loaded.image_size, "mean": loaded.mean, "std": loaded.std}
    started = time.perf_counter()
    if crop != "default":
        detector.train_transform = partial(crop_transform, scale=crop)
    try:
        passes = PassOptions(batch_size=cfg.batch_size * 2, device=dev, num_workers=num_workers, **image)
        history = train_prompts(model, listing, cfg, passes, generator=generator)
    finally:
        detector.train_transform = train_transform
    seconds = time.perf_counter() - started
    model.eval()
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        eval_transform(loaded.image_size, loaded.mean, loaded.std),
        image_size=loaded.image_size,
    )
    scale = float(model.scale())

    @torch.no_grad()
    def logits(dataset: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        positive, negative = [], []
        text = model.text_features()
        for images, *_ in torch.utils.data.DataLoader(dataset, batch_size=256):
            features = model.image_features(images.to(dev)).float()
            positive.append(scale * features @ text.positive.float().t())  # [B, K]
            negative.append(scale * features @ text.negative.float().t())
        return torch.cat(positive).cpu().numpy(), torch.cat(negative).cpu().numpy()

    positive, negative = logits(dataset)
    # The reference reads its mask off augmented training-mode passes; an augmented pass approximates that.
    augmented = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        train_transform(loaded.image_size, loaded.mean, loaded.std, hflip=cfg.hflip),
        image_size=loaded.image_size,
    )
    torch.manual_seed(seed)
    positive_aug, negative_aug = logits(augmented)
    return {
        "paths": listing.paths,
        "classes": listing.classes,  # folder names in natural order: the index space of the logits
        "labels": listing.label_indices,
        "positive": positive,
        "negative": negative,
        "positive_aug": positive_aug,
        "negative_aug": negative_aug,
        "history": [h.clean_fraction for h in history],
        "seconds": seconds,
    }


def decisions(out: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(is_clean, score) for each decision rule / score, in listing order."""
    y = out["labels"]
    rows = np.arange(len(y))

    def read(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p_clean = 1.0 / (1.0 + np.exp(-(pos[rows, y] - neg[rows, y])))
        soft = np.exp(pos - pos.max(1, keepdims=True))
        soft /= soft.sum(1, keepdims=True)
        return p_clean, soft[rows, y], pos.argmax(1) == y

    p_clean, p_pos, argmax = read(out["positive"], out["negative"])
    p_clean_aug, _, argmax_aug = read(out["positive_aug"], out["negative_aug"])
    return {
        "threshold": (p_clean > 0.5, p_clean),
        "threshold+argmax": ((p_clean > 0.5) & argmax, p_clean),
        "argmax": (argmax, p_pos),
        "threshold+argmax, AUC of p_clean*p_pos": ((p_clean > 0.5) & argmax, p_clean * p_pos),
        "threshold+argmax, augmented pass": ((p_clean_aug > 0.5) & argmax_aug, p_clean_aug),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=q.ROOT / "benchmarks" / ".work")
    parser.add_argument("--out-dir", type=Path, default=q.ROOT / "benchmarks" / "results")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--only", default=",".join(SETTINGS), help="setting slugs")
    parser.add_argument("--tag", default="ablations")
    args = parser.parse_args(argv)
    q.set_threads(args.threads)
    foundation = Foundation(*q.build_foundation(args.work_dir))
    data = q.prepare("mnist", foundation.config, foundation.checkpoint, device=args.device)
    settings = {s.slug: s for s in default_settings(3)}
    started = time.perf_counter()
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for slug in args.only.split(","):
        setting = settings[slug]
        labels = q.noisy_labels(setting, data)
        folder = args.work_dir / "data" / "mnist" / slug
        paths = q.write_folder(folder, data.images_b, labels)
        truly_clean_by_path = dict(zip(paths, labels == data.true_b, strict=True))
        true_by_path = dict(zip(paths, data.true_b, strict=True))
        # baselines for reference, same as quality.py
        oof = (q.out_of_fold_probabilities(data.features_b, labels, seed=setting.seed), 0.0)
        reference = {"cleanlab": q.run_cleanlab(data, labels, oof=oof), "zero-shot": q.run_zero_shot(data, labels)}
        table[slug] = {}
        for name, run in reference.items():
            metrics = q.evaluate(run, labels == data.true_b)
            table[slug][name] = {"f1": metrics.f1_noisy, "auc": metrics.auc}
        for variant in args.variants.split(","):
            out = train_and_score(
                folder,
                foundation,
                seed=setting.seed,
                options=VARIANTS[variant],
                device=args.device,
                num_workers=args.num_workers,
            )
            truth = np.array([truly_clean_by_path[p] for p in out["paths"]])
            index = {name: i for i, name in enumerate(out["classes"])}
            true_label = np.array([index[q.CLASSES[true_by_path[p]]] for p in out["paths"]])
            accuracy = float(np.mean(out["positive"].argmax(1) == true_label))
            for rule, (kept, score) in decisions(out).items():
                metrics = q.evaluate(q.MethodRun(kept, score, out["seconds"]), truth)
                table[slug][f"{variant} / {rule}"] = {
                    "f1": metrics.f1_noisy,
                    "auc": metrics.auc,
                    "precision": metrics.precision,
                    "recall": metrics.recall,
                    "seconds": out["seconds"],
                    "positive_accuracy": accuracy,
                }
            print(
                f"[{time.perf_counter() - started:5.0f}s] {slug} {variant}: "
                + "  ".join(f"{rule} F1 {table[slug][f'{variant} / {rule}']['f1']:.3f}" for rule in decisions(out))
                + f"  AUC p_clean {table[slug][f'{variant} / threshold']['auc']:.3f} "
                f"p_pos {table[slug][f'{variant} / argmax']['auc']:.3f}; positive-prompt accuracy {accuracy:.3f}; "
                f"selected per epoch "
                f"{[round(h, 2) for h in out['history']]}",
                flush=True,
            )

    rows = sorted({k for per in table.values() for k in per}, key=lambda k: (k not in ("cleanlab", "zero-shot"), k))
    header = ["variant / rule", *(f"{s} F1 (AUC)" for s in table)]
    body = [
        [
            r,
            *(
                f"{100 * table[s][r]['f1']:.1f} ({100 * table[s][r]['auc']:.1f})" if r in table[s] else "-"
                for s in table
            ),
        ]
        for r in rows
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = [
        "# deft-clean ablations (MNIST digits, tiny CLIP, CPU)",
        "",
        f"Generated by `benchmarks/ablate.py`; base options `{DEFT_OPTIONS}`; one seed per cell. "
        "F1 of noisy-label detection, ROC-AUC of the rule's score in brackets (%). For the threshold rules the "
        "score is p_clean, for `argmax` the positive-prompt softmax at the given label.",
        "",
        q.markdown_table(header, body),
        "",
        f"Total time: {time.perf_counter() - started:.0f} s.",
    ]
    (args.out_dir / f"{args.tag}.md").write_text("\n".join(text) + "\n")
    (args.out_dir / f"{args.tag}.json").write_text(json.dumps(table, indent=1))
    print("\n".join(text))


if __name__ == "__main__":
    main()
