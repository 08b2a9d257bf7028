"""The GPU path measured: detect epoch, compute-only, scoring and quick img/s, selection and health at scale,
before (eager, CPU transforms) and after (torch.compile, uint8 batches transformed on the device).

For ``--model`` (default open_clip ViT-B-16, random weights: speed does not depend on them) on ``--device``:
  detect_epoch_img_s   the last of ``--epochs`` real prompt-training epochs (DataLoader, decode, augment, step),
  compute_only_img_s   the same steps on batches already in device memory,
  scoring_img_s        the eval-mode scoring pass (second run: the first pays start-up and compilation),
  quick_img_s          a whole ``deft_clean.detect(quick=True)`` on the same images (model loading, feature pass,
                       selection, health), images / seconds, second of two runs;
then ``selection.fused_rule`` and ``health.dataset_health`` on ``--rows`` x ``--classes`` synthetic 512-d
features (``deft_clean.testing.synthetic_features``) on the device: seconds and noisy-label F1.
Goals on an H100 (issue 23): detect epoch >= 3,000 img/s, scoring >= 6,000 img/s, selection + health for
1M x 1000 <= 5 minutes.

    python benchmarks/gpu_speed.py --device cuda                 # ~5-8 min on one H100/H200
    python benchmarks/gpu_speed.py --smoke                       # tiny model, tiny sizes, CPU, ~1 min

Writes gpu_speed.json (and .md) to $OUT or --out-dir (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the benchmarks package
sys.path.insert(0, str(ROOT / "benchmarks"))  # speed.py's helpers

VARIANTS = {  # name -> (torch.compile, device transforms)
    "before": (False, False),
    "after": (True, True),
}


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def image_speeds(
    folder: Path,
    work: Path,
    *,
    model_name: str,
    device_name: str,
    batch_size: int,
    epochs: int,
    workers: int,
    compile_tower: bool,
    device_transforms: bool,
) -> dict[str, float]:
    """detect_epoch / compute_only / scoring / quick img/s of one variant on the images of ``folder``."""
    import torch
    from speed import model_config, timing_schedule

    import deft_clean
    from deft_clean.detecting.passes import score_samples
    from deft_clean.detecting.prompt_training import train_prompts
    from deft_clean.inputs.dataset import ImageDataset
    from deft_clean.inputs.device_transforms import DeviceTransform, uint8_transform
    from deft_clean.inputs.listing import list_dataset
    from deft_clean.models.clip import compile_module, load_clip, resolve_device
    from deft_clean.models.deft import DeftModel, PromptFeatures, deft_loss
    from deft_clean.run.engine import amp_for, seed_everything
    from deft_clean.run.options import PassOptions

    device = resolve_device(device_name)
    listing = list_dataset(folder)
    n = len(listing)
    generator = seed_everything(0)
    loaded = load_clip(model_config(model_name, work), "none", device=device, quiet=True)
    if compile_tower:
        compile_module(loaded.model.visual, "the image tower")
    model = DeftModel(
        loaded,
        listing.prompt_names,
        n_ctx=16,
        ctx_init=None,
        class_specific=False,
        vpt_tokens=4 if model_name == "tiny" else 20,
        vpt_depth=None,
    ).to(device)
    common = {
        "image_size": loaded.image_size,
        "mean": loaded.mean,
        "std": loaded.std,
        "device": device,
        "num_workers": workers,
        "device_transforms": device_transforms,
    }
    schedule = timing_schedule(epochs, batch_size)
    passes = PassOptions(batch_size=batch_size * 2, **common)
    history = train_prompts(model, listing, schedule, passes, generator=generator)
    speeds = {"detect_epoch_img_s": history[-1].samples_per_second}

    # compute only: uint8 batches already on the device (the device transform is part of the step when on)
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        uint8_transform(loaded.image_size),
        image_size=loaded.image_size,
        blank_dtype=torch.uint8,
    )
    batches = [(x.to(device), y.to(device)) for x, y, _, _ in torch.utils.data.DataLoader(dataset, batch_size)]
    augment = DeviceTransform(loaded.mean, loaded.std, train=True)
    parameters = model.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scale = model.scale().to(device)
    model.train()
    model.clip.eval()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with amp_for(device).autocast():
            features, text = model(augment(images))
            loss, _ = deft_loss(
                features.float(),
                PromptFeatures(text.positive.float(), text.negative.float()),
                scale,
                labels,
                warmup=True,
                clean_rule="threshold+argmax",
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])  # warm-up (and compilation)
    sync(device)
    started = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    sync(device)
    speeds["compute_only_img_s"] = n / (time.perf_counter() - started)

    for _ in range(2):  # the first pass pays start-up (and compilation of the eval graph)
        sync(device)
        started = time.perf_counter()
        score_samples(model, listing, passes)
        sync(device)
        speeds["scoring_img_s"] = n / (time.perf_counter() - started)

    for _ in range(2):  # the second run: compiled graphs and worker start-up are paid by the first
        started = time.perf_counter()
        deft_clean.detect(
            folder,
            model=model_config(model_name, work),
            pretrained="none",
            quick=True,
            device=device_name,
            batch_size=batch_size,
            num_workers=workers,
            quiet=True,
            compile=compile_tower,
            device_transforms=device_transforms,
        )
        speeds["quick_img_s"] = n / (time.perf_counter() - started)
    if device.type == "cuda":
        speeds["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return speeds


def scale_seconds(rows: int, classes: int, *, device_name: str) -> dict[str, float]:
    """Selection and health on ``rows`` x ``classes`` synthetic features on the device: seconds, F1."""
    import numpy as np

    from deft_clean.detecting.health import dataset_health
    from deft_clean.detecting.selection import fused_rule, text_seed
    from deft_clean.models.clip import resolve_device
    from deft_clean.testing import synthetic_features

    device = resolve_device(device_name)
    features, truth, given, text = synthetic_features(rows, classes, noise=0.2, seed=0)
    usable = np.ones(rows, dtype=bool)
    sync(device)
    started = time.perf_counter()
    seed_mask = text_seed(usable, given, text, None, "threshold")
    selection = fused_rule(features, given, usable, seed_mask, text, classes, seed=0, device=device)
    sync(device)
    record = {"selection_s": time.perf_counter() - started}
    flagged, noisy = ~selection.is_clean, given != truth
    record["selection_f1"] = 2 * float(np.sum(flagged & noisy)) / max(int(flagged.sum() + noisy.sum()), 1)
    record["selection_probe"] = selection.info.get("probe")
    del selection, text
    started = time.perf_counter()
    dataset_health(features, usable, device=device)
    sync(device)
    record["health_s"] = time.perf_counter() - started
    return record


def markdown(report: dict[str, Any]) -> str:
    keys = [
        "detect_epoch_img_s",
        "compute_only_img_s",
        "scoring_img_s",
        "quick_img_s",
        "selection_s",
        "health_s",
        "selection_f1",
    ]
    lines = [
        f"# GPU path: {report['model']} on {report['device']}",
        "",
        f"Generated by `benchmarks/gpu_speed.py {' '.join(report['argv'])}` on {report['created']} "
        f"({report['machine']}, torch {report['torch']}). before = eager + CPU transforms; after = torch.compile + "
        f"uint8 batches transformed on the device. Selection/health: {report['rows']:,} x {report['classes']} "
        "synthetic 512-d features.",
        "",
        "| | " + " | ".join(report["variants"]) + " |",
        "|---|" + "---|" * len(report["variants"]),
    ]
    for key in keys:
        cells = [report["variants"][v].get(key) for v in report["variants"]]
        lines.append(
            f"| {key} | " + " | ".join("-" if c is None else f"{c:,.1f}" if c > 1 else f"{c:.3f}" for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip name, or 'tiny' for the test model")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="images = batch size x batches")
    parser.add_argument("--epochs", type=int, default=2, help="detect epochs; the last one is timed")
    parser.add_argument("--num-workers", type=int, default=int(os.environ.get("WORKERS", 8)))
    parser.add_argument("--image-px", type=int, default=256, help="side of the synthetic JPEGs")
    parser.add_argument("--rows", type=int, default=1_000_000, help="selection/health rows")
    parser.add_argument("--classes", type=int, default=1000, help="selection classes")
    parser.add_argument("--variants", default="before,after")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 batches of 16, 2,000 x 20 features, CPU")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "deft-gpu-speed")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results")))
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.model, args.batch_size, args.batches, args.num_workers = "cpu", "tiny", 16, 2, 0
        args.rows, args.classes, args.image_px, args.epochs = 2000, 20, 48, 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    from speed import write_synthetic_folder

    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folder = write_synthetic_folder(
        args.work_dir / f"images-{args.batch_size * args.batches}-{args.image_px}px",
        args.batch_size * args.batches,
        size=args.image_px,
    )
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "model": args.model,
        "rows": args.rows,
        "classes": args.classes,
        "images": args.batch_size * args.batches,
        "batch_size": args.batch_size,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "variants": {},
    }
    for name in args.variants.split(","):
        compile_tower, device_transforms = VARIANTS[name]
        started = time.perf_counter()
        record = image_speeds(
            folder,
            args.work_dir,
            model_name=args.model,
            device_name=args.device,
            batch_size=args.batch_size,
            epochs=args.epochs,
            workers=args.num_workers,
            compile_tower=compile_tower,
            device_transforms=device_transforms,
        )
        record.update(scale_seconds(args.rows, args.classes, device_name=args.device))
        record["seconds"] = time.perf_counter() - started
        report["variants"][name] = {"compile": compile_tower, "device_transforms": device_transforms, **record}
        torch._dynamo.reset()
        print(name, json.dumps(record), flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "gpu_speed.json").write_text(json.dumps(report, indent=1))
        (args.out_dir / "gpu_speed.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
