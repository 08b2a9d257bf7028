"""Speed of deft-clean detect: training-epoch and scoring throughput, data-loading overhead, scale.

For each model (the tiny test CLIP and open_clip ViT-B-16, both with random weights: speed does not
depend on the weights) it measures on ``--device``:
  epoch img/s     a real training epoch of ``train_prompts`` (DataLoader, decode, augmentation, step),
  compute img/s   the same forward + backward + SGD step on batches already in device memory,
  overhead        epoch time / compute time (1.0 = the input pipeline costs nothing),
  scoring img/s   the eval-mode scoring pass ``score_samples``.
Then, for the tiny model, a full ``deft_clean.detect`` on 1k / 10k (optionally 50k) synthetic images,
each in a fresh subprocess so that its peak RSS (VmHWM; ru_maxrss where /proc is missing) is its own.

    .venv/bin/python benchmarks/speed.py                         # CPU, ~7 min
    .venv/bin/python benchmarks/speed.py --device cuda --models ViT-B-16 --vit-batch-size 64 \
        --vit-batches 20 --sizes ""                              # what benchmarks/gpu_check.sh runs

Writes benchmarks/results/speed_<device>.md and .json (or under --out-dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the benchmarks package
N_CLASSES = 10


def set_threads(threads: int | None) -> None:
    """Cap torch/BLAS threads (None = library defaults); see quality.set_threads for why."""
    if threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def write_synthetic_folder(root: Path, n: int, *, size: int, seed: int = 0) -> Path:
    """``n`` synthetic class images of ``size`` px, saved as JPEG (quality 90) like a typical photo dataset."""
    from deft_clean import testing as toy

    marker = root / ".complete"
    if marker.is_file():
        return root
    per_class = -(-n // N_CLASSES)
    classes = [f"class_{k}" for k in range(N_CLASSES)]
    written = 0
    for chunk in range(0, per_class, 500):  # in chunks: 50k images must not all sit in memory
        images, labels = toy.synthetic_images(min(500, per_class - chunk), N_CLASSES, size=size, seed=seed + chunk)
        for image, label in zip(images, labels, strict=True):
            if written >= n:
                break
            path = root / classes[int(label)] / f"{written:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=90)
            written += 1
    marker.write_text(str(n))
    return root


def model_config(name: str, work: Path) -> str:
    """open_clip model name, or a written config JSON for the tiny model."""
    if name != "tiny":
        return name
    from deft_clean import testing as toy

    return str(toy.write_model_config(work / "tiny-clip.json"))


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_schedule(epochs: int, batch_size: int) -> Any:
    """The prompt-training schedule the speed benchmarks time: every epoch a warm-up epoch (no selection)."""
    from deft_clean.run.options import DetectConfig

    return DetectConfig(
        epochs=epochs,
        warmup_epochs=epochs,
        batch_size=batch_size,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        clean_rule="threshold+argmax",
        hflip=True,
        grad_clip=1.0,
    )


def throughput(
    model_name: str,
    folder: Path,
    work: Path,
    *,
    device_name: str,
    batch_size: int,
    batches: int,
    epochs: int,
    num_workers: int,
    vpt_tokens: int,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Epoch, compute-only and scoring img/s of one model on ``batches`` batches of ``folder``.

    With ``cache_dir`` (a fresh folder), the images are first put in the decoded-image cache (timed as
    ``fill_s``) and every epoch and the scoring pass read them from there.
    """
    import torch

    from deft_clean.detecting.passes import score_samples
    from deft_clean.detecting.prompt_training import train_prompts
    from deft_clean.inputs.listing import list_dataset
    from deft_clean.models.clip import load_clip, resolve_device
    from deft_clean.models.deft import DeftModel, PromptFeatures, deft_loss
    from deft_clean.run.engine import amp_for, seed_everything
    from deft_clean.run.options import PassOptions

    device = resolve_device(device_name)
    listing = list_dataset(folder)
    n = min(len(listing), batch_size * batches)
    listing = dataclasses.replace(
        listing, paths=listing.paths[:n], labels=listing.labels[:n], label_indices=listing.label_indices[:n]
    )
    generator = seed_everything(0)
    loaded = load_clip(model_config(model_name, work), "none", device=device, quiet=True)
    model = DeftModel(
        loaded,
        listing.prompt_names,
        n_ctx=16,
        ctx_init=None,
        class_specific=False,
        vpt_tokens=vpt_tokens,
        vpt_depth=None,
    ).to(device)
    image = {"image_size": loaded.image_size, "mean": loaded.mean, "std": loaded.std}
    common: dict[str, Any] = {"device": device, "num_workers": num_workers, **image}
    fill_seconds = None
    if cache_dir is not None:
        from deft_clean.inputs.image_cache import prepare_cache

        started = time.perf_counter()
        common["cache"] = prepare_cache(cache_dir, listing, size=loaded.image_size, num_workers=num_workers)
        fill_seconds = time.perf_counter() - started

    # 1. real epochs; the last one is timed (earlier ones pay worker start-up, cudnn autotuning, caches)
    schedule = timing_schedule(epochs, batch_size)
    passes = PassOptions(batch_size=batch_size * 2, **common)
    history = train_prompts(model, listing, schedule, passes, generator=generator)
    epoch_ips = history[-1].samples_per_second

    # 2. the same step on batches already on the device: no decode, no augmentation, no transfer
    from deft_clean.inputs.dataset import ImageDataset
    from deft_clean.inputs.transforms import train_transform

    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        train_transform(loaded.image_size, loaded.mean, loaded.std),
        image_size=loaded.image_size,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    in_memory = [(x.to(device), y.to(device)) for x, y, _, _ in loader]
    parameters = model.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=5e-4)
    autocast = amp_for(device).autocast
    scale = model.scale().to(device)
    model.train()
    model.clip.eval()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast():
            text = model.text_features()
            features = model.image_features(images)
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
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()

    step(*in_memory[0])  # warm-up
    sync(device)
    started = time.perf_counter()
    for images, labels in in_memory:
        step(images, labels)
    sync(device)
    compute_ips = n / (time.perf_counter() - started)

    # 3. scoring pass (twice: the first pays start-up)
    for _ in range(2):
        sync(device)
        started = time.perf_counter()
        score_samples(model, listing, passes)
        sync(device)
        scoring_seconds = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "model": model_name,
        "device": str(device),
        "images": n,
        "batch_size": batch_size,
        "image_size": loaded.image_size,
        "vpt_tokens": vpt_tokens,
        "num_workers": num_workers,
        "images_from": "files" if cache_dir is None else "cache",
        "fill_s": fill_seconds,
        "epoch_img_s": epoch_ips,
        "compute_img_s": compute_ips,
        "overhead_ratio": compute_ips / epoch_ips,  # = epoch time / compute time
        "scoring_img_s": n / scoring_seconds,
        "peak_gpu_gib": peak_gpu,
    }


def scale_run(n: int, work: Path, *, device: str, epochs: int, num_workers: int, threads: int | None) -> dict[str, Any]:
    """``deft_clean.detect`` on n synthetic images in a fresh subprocess; time and peak RSS."""
    folder = write_synthetic_folder(work / f"scale-{n}", n, size=32)
    command = [
        sys.executable,
        __file__,
        "--_detect-child",
        str(folder),
        "--device",
        device,
        "--epochs",
        str(epochs),
        "--num-workers",
        str(num_workers),
        "--work-dir",
        str(work),
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_mib(field: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process in MiB, from /proc/self/status.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used for the peak: Linux keeps it across fork + exec, so
    a child would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; a fallback elsewhere


def detect_child(folder: Path, work: Path, *, device: str, epochs: int, num_workers: int) -> None:
    """Child process of :func:`scale_run`: print one JSON line."""
    import torch

    import deft_clean

    rss_start = memory_mib("VmRSS")
    started = time.perf_counter()
    result = deft_clean.detect(
        folder,
        model=model_config("tiny", work),
        pretrained="none",
        epochs=epochs,
        vpt_tokens=4,
        batch_size=64,
        device=device,
        num_workers=num_workers,
        quiet=True,
        out=work / f"{folder.name}.parquet",
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and device != "cpu" else None
    print(
        json.dumps(
            {
                "images": len(result.frame),
                "epochs": epochs,
                "seconds": seconds,
                "img_s_per_epoch": len(result.frame)
                * epochs
                / sum(len(result.frame) / h["samples_per_second"] for h in result.history),
                "peak_rss_mib": memory_mib("VmHWM"),  # this process's peak, imports included
                "rss_before_detect_mib": rss_start,
                "peak_gpu_gib": gpu,
            }
        )
    )


def markdown(report: dict[str, Any]) -> str:
    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]

    lines = [
        f"# deft-clean detect speed ({report['device']})",
        "",
        f"Generated by `benchmarks/speed.py {' '.join(report['argv'])}` on {report['created']}: {report['machine']}, "
        f"torch {report['torch']}, threads {report['threads']}; 1-min load average "
        f"{report['load_average_start_end'][0]:.1f} at start, {report['load_average_start_end'][1]:.1f} at end "
        f"(with {os.cpu_count()} CPUs, a load above that means other jobs slowed these numbers).",
        "",
        "Random weights (speed does not depend on them). Synthetic JPEG images (quality 90) of "
        f"{report['image_px']} px, decoded and resized to the model's input; training augmentation = random resized "
        "crop + flip. `overhead` = real epoch time / time of the same steps on batches already in memory.",
        "",
    ]
    rows = []
    for r in report["throughput"]:
        rows.append(
            [
                r["model"],
                f"{r['image_size']}",
                f"{r['batch_size']}",
                f"{r['images']}",
                f"{r['vpt_tokens']}",
                f"{r['num_workers']}",
                r.get("images_from", "files"),
                "-" if r.get("fill_s") is None else f"{r['fill_s']:.1f}",
                f"{r['epoch_img_s']:.1f}",
                f"{r['compute_img_s']:.1f}",
                f"{r['overhead_ratio']:.2f}",
                f"{r['scoring_img_s']:.1f}",
                "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}",
            ]
        )
    lines += table(
        [
            "model",
            "input px",
            "batch",
            "images timed",
            "VPT tokens",
            "workers",
            "images from",
            "cache fill s",
            "epoch img/s",
            "compute img/s",
            "overhead",
            "scoring img/s",
            "peak GPU GiB",
        ],
        rows,
    )
    if report["scale"]:
        lines += ["", "## Scale: full `deft_clean.detect`, tiny model, 32 px synthetic JPEGs, one subprocess each", ""]
        rows = [
            [
                f"{r['images']:,}",
                f"{r['epochs']}",
                f"{r['seconds']:.1f}",
                f"{r['img_s_per_epoch']:.0f}",
                f"{r['peak_rss_mib']:.0f}",
                f"{r['rss_before_detect_mib']:.0f}",
                "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}",
            ]
            for r in report["scale"]
        ]
        header = [
            "images",
            "epochs",
            "detect s",
            "train img/s",
            "peak RSS MiB",
            "RSS before detect MiB",
            "peak GPU GiB",
        ]
        lines += table(header, rows)
    lines += ["", *report["notes"], "", f"Total time: {report['total_seconds']:.0f} s."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (default: 1 on CPU)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--models", default="tiny,ViT-B-16", help="comma-separated: tiny and/or open_clip names")
    parser.add_argument("--tiny-batch-size", type=int, default=64)
    parser.add_argument("--tiny-batches", type=int, default=16)
    parser.add_argument("--vit-batch-size", type=int, default=8, help="8 keeps ViT-B-16 on CPU to ~1 min")
    parser.add_argument("--vit-batches", type=int, default=3)
    parser.add_argument("--vit-vpt-tokens", type=int, default=20, help="DeFT's default for ViT-B/16")
    parser.add_argument("--epochs", type=int, default=2, help="throughput epochs; the last one is timed")
    parser.add_argument("--image-px", type=int, default=256, help="side of the synthetic JPEGs for throughput")
    parser.add_argument(
        "--cache",
        choices=("off", "on", "both"),
        default="off",
        help="read throughput images from files, from the decoded-image cache, or both (two rows)",
    )
    parser.add_argument(
        "--sizes", default="1000,10000,50000:1", help="scale runs (tiny model), N or N:EPOCHS; '' to skip"
    )
    parser.add_argument("--scale-epochs", type=int, default=10, help="epochs of scale runs without :EPOCHS")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT if set, else benchmarks/results")
    parser.add_argument("--tag", default=None, help="output stem (default speed_<device type>)")
    parser.add_argument("--_detect-child", dest="detect_child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.detect_child is not None:
        detect_child(
            args.detect_child, args.work_dir, device=args.device, epochs=args.epochs, num_workers=args.num_workers
        )
        return None
    import torch

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="deft-speed-")
        args.work_dir = Path(temporary.name)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    device_type = args.device.split(":")[0]
    results = []
    for name in [m for m in args.models.split(",") if m]:
        tiny = name == "tiny"
        batch_size = args.tiny_batch_size if tiny else args.vit_batch_size
        batches = args.tiny_batches if tiny else args.vit_batches
        folder = write_synthetic_folder(
            work / f"jpeg-{args.image_px}-{batch_size * batches}", batch_size * batches, size=args.image_px
        )
        sources = {"off": [False], "on": [True], "both": [False, True]}[args.cache]
        for cached in sources:
            cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=work)) if cached else None
            r = throughput(
                name,
                folder,
                work,
                device_name=args.device,
                batch_size=batch_size,
                batches=batches,
                epochs=args.epochs,
                num_workers=args.num_workers,
                vpt_tokens=4 if tiny else args.vit_vpt_tokens,
                cache_dir=cache_dir,
            )
            print(json.dumps(r), flush=True)
            results.append(r)
    scale = []
    for item in [s for s in args.sizes.split(",") if s]:
        n, _, epochs = item.partition(":")  # "50000:1" = 50k images, 1 epoch
        r = scale_run(
            int(n),
            work,
            device=args.device,
            epochs=int(epochs or args.scale_epochs),
            num_workers=args.num_workers,
            threads=args.threads,
        )
        print(json.dumps(r), flush=True)
        scale.append(r)
    notes = ["Notes:"]
    if device_type == "cpu":
        notes.append(
            "- On a 2-core machine shared with other jobs, torch's default of one intra-op thread per core "
            "made a detect epoch ~25x slower than 1 thread (spinning OpenMP threads); CPU numbers use "
            "--threads 1."
        )
    else:
        notes.append(
            "- overhead > 1 means the GPU waits for JPEG decoding and augmentation in the DataLoader "
            "workers (see the workers column)."
        )
    if args.cache != "off":
        notes.append(
            "- images from cache: `--cache DIR`; each image was decoded and resized once (the `cache fill s` "
            "column, paid on the first run only), then epochs and scoring read uint8 pixels from memory maps."
        )
    if any(item.startswith("50000:") for item in args.sizes.split(",")):
        notes.append(
            "- 50k images runs 1 epoch only, to keep the CPU run to minutes: its peak memory is the point; "
            "10 epochs take ~10x its training time (the scoring pass is paid once)."
        )
    notes.append(
        "- Peak RSS includes ~750 MiB of imports (torch, open_clip); what detect adds grows slowly with "
        "the number of images (paths, labels and per-sample arrays only; images are streamed)."
    )
    report = {
        "device": args.device,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_start_end": [load_at_start, os.getloadavg()[0]],
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if device_type == "cuda" else ""),
        "torch": torch.__version__,
        "threads": args.threads if args.threads is not None else torch.get_num_threads(),
        "image_px": args.image_px,
        "throughput": results,
        "scale": scale,
        "scale_epochs": args.scale_epochs,
        "notes": notes,
        "total_seconds": time.perf_counter() - started,
    }
    out_dir = args.out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"speed_{device_type}"
    (out_dir / f"{stem}.md").write_text(markdown(report) + "\n")
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))
    if temporary is not None:
        temporary.cleanup()
    return report


if __name__ == "__main__":
    main()
