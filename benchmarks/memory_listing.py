"""Peak memory of listing and scoring a large table: does the scoring pass stream?

Builds a ``--rows`` (default 200,000) row CSV whose paths reuse a few hundred tiny 4x4 PNG files (a
few of them corrupt, so that failures are recorded), lists it with ``list_dataset`` and runs
``score_samples`` (the real scoring pass: dataset, DataLoader, per-batch accumulation into arrays) with
a stand-in model whose "image features" are pooled pixels, so that the numbers measure the data path
and not a network. Peak RSS (``resource.getrusage``; VmHWM where /proc has it) is reported after each
phase, together with the bytes per row that each phase added.

    .venv/bin/python benchmarks/memory_listing.py                 # 200k rows, ~2 min on 2 CPUs
    .venv/bin/python benchmarks/memory_listing.py --rows 20000    # quick look

Writes benchmarks/results/memory.md (or --out).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_table(folder: Path, rows: int, *, files: int = 300, corrupt: int = 3) -> Path:
    """A CSV of ``rows`` samples over ``files`` tiny PNGs (``corrupt`` of them unreadable), 10 classes; rows past
    the first ``files`` are hard links to them, so that every row names its own file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for i in range(files):
        name = f"img/{i:04d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if i < corrupt:
            (folder / name).write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    table = folder / "listing.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row in range(rows):
            # every row its own name (a listing refuses a file listed twice): hard links to the few images
            name = names[row % files] if row < files else f"img/{row // 1000:04d}/{row:07d}.png"
            if row >= files:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.link(folder / names[row % files], folder / name)
            writer.writerow([name, f"class_{row % 10}"])
    return table


class PooledPixels:
    """Stands in for DeftModel in score_samples: features are the image's per-channel means, projected."""

    def __init__(self, n_classes: int, dim: int = 8) -> None:
        import torch

        generator = torch.Generator().manual_seed(0)
        self.project = torch.randn(3, dim, generator=generator)
        positive = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=generator), dim=1)
        negative = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=generator), dim=1)
        from deft_clean.models.deft import PromptFeatures

        self.text = PromptFeatures(positive, negative)

    def eval(self) -> None:
        return None

    def scale(self):
        import torch

        return torch.tensor(100.0)

    def text_features(self):
        return self.text

    def image_features(self, images):
        import torch

        features = images.mean(dim=(2, 3)) @ self.project  # [B, dim]
        return torch.nn.functional.normalize(features, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.md")
    args = parser.parse_args()

    import torch

    from deft_clean.detecting.passes import score_samples
    from deft_clean.inputs.listing import list_dataset
    from deft_clean.run.options import PassOptions

    torch.set_num_threads(1)
    phases: list[tuple[str, float, float]] = [("imports (torch, deft_clean)", peak_rss_mib(), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        table = write_table(Path(tmp), args.rows)
        phases.append((f"write {args.rows:,}-row CSV", peak_rss_mib(), time.perf_counter() - started))

        started = time.perf_counter()
        listing = list_dataset(table)
        phases.append(("list_dataset", peak_rss_mib(), time.perf_counter() - started))

        def score(cache=None):
            return score_samples(
                PooledPixels(len(listing.classes)),  # type: ignore[arg-type]
                listing,
                PassOptions(
                    batch_size=args.batch_size,
                    image_size=args.image_size,
                    mean=(0.5, 0.5, 0.5),
                    std=(0.5, 0.5, 0.5),
                    device=torch.device("cpu"),
                    num_workers=args.num_workers,
                    cache=cache,
                ),
            )

        started = time.perf_counter()
        scores = score()
        scoring_seconds = time.perf_counter() - started
        phases.append(("score_samples (stand-in model)", peak_rss_mib(), scoring_seconds))
        failures = len(scores.failures)
        odd = {i: s for i, s in scores.failures.items() if i % 300 >= 3}
        assert not odd, list(odd.items())[:3]

        # The decoded-image cache: index lookup for every row (300 distinct files are decoded once).
        from deft_clean.inputs.image_cache import prepare_cache

        started = time.perf_counter()
        cache = prepare_cache(Path(tmp) / "cache", listing, size=args.image_size, num_workers=args.num_workers)
        phases.append(("prepare_cache, first run (fills)", peak_rss_mib(), time.perf_counter() - started))
        started = time.perf_counter()
        cache = prepare_cache(Path(tmp) / "cache", listing, size=args.image_size, num_workers=args.num_workers)
        phases.append(("prepare_cache, second run (lookup only)", peak_rss_mib(), time.perf_counter() - started))
        started = time.perf_counter()
        cached_scores = score(cache)
        cached_seconds = time.perf_counter() - started
        phases.append(("score_samples from the cache", peak_rss_mib(), cached_seconds))
        assert cached_scores.failures == scores.failures

    lines = [
        "# Peak memory: listing and scoring a large table",
        "",
        f"Generated by `benchmarks/memory_listing.py --rows {args.rows}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.system()} {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}).",
        "",
        f"{args.rows:,} CSV rows over 300 tiny 4x4 PNGs (3 corrupt: {failures:,} failure rows), "
        f"`score_samples` at image size {args.image_size}, batch {args.batch_size}, "
        f"{args.num_workers} workers, with a stand-in model (pooled pixels), so only the data path counts.",
        "",
        "| phase | peak RSS (MiB) | added (bytes/row) | seconds |",
        "|---|---|---|---|",
    ]
    previous = phases[0][1]
    for name, rss, seconds in phases:
        added = max(rss - previous, 0.0) * 2**20 / args.rows
        lines.append(f"| {name} | {rss:,.0f} | {added:,.0f} | {seconds:.1f} |")
        previous = rss
    lines += [
        "",
        f"Scoring throughput: {args.rows / scoring_seconds:,.0f} rows/s from files, "
        f"{args.rows / cached_seconds:,.0f} rows/s from the decoded-image cache. The cache's view of a listing is "
        "two arrays (shard number, row) and a dict of failures; its lookup builds the listing's absolute paths "
        "once (transient). The listing keeps two Python lists "
        "(paths, labels) and an int64 array; the scoring pass adds five arrays of N numbers and a dict of "
        "failures only (no per-sample objects). The dataset handed to DataLoader workers packs the paths into "
        "one buffer + offsets, so forked workers do not copy them page by page.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
