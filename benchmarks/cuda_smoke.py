"""End-to-end check on a GPU: detect (AMP), train (clip and timm backbones) and predict on CUDA.

Uses the tiny offline CLIP and a synthetic 30%-noise folder; prints clean-set precision/recall, held-out
accuracy and wall times, and writes them to $OUT/cuda_smoke.json (or benchmarks/results/).

    python benchmarks/cuda_smoke.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import deft_clean  # noqa: E402
from deft_clean import testing as toy  # noqa: E402

CLASSES = toy.SHAPE_CLASSES[:6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    report: dict = {"device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images, labels = toy.synthetic_images(60, len(CLASSES), seed=1)
        started = time.perf_counter()
        checkpoint = toy.pretrain_tiny_clip(
            images, labels, CLASSES, config_path=work / "tiny-clip.json", checkpoint_path=work / "tiny.pt", steps=200
        )
        report["pretrain_s"] = time.perf_counter() - started
        images, labels = toy.synthetic_images(40, len(CLASSES), seed=2)
        noisy = toy.plant_noise(labels, len(CLASSES), 0.3, seed=3)
        paths = toy.write_image_folder(work / "train", images, noisy, CLASSES)
        truth = {p: CLASSES[int(t)] for p, t in zip(paths, labels, strict=True)}
        images, labels = toy.synthetic_images(20, len(CLASSES), seed=99)
        toy.write_image_folder(work / "heldout", images, labels, CLASSES)

        started = time.perf_counter()
        result = deft_clean.detect(
            work / "train",
            out=work / "results.parquet",
            model=str(work / "tiny-clip.json"),
            pretrained=str(checkpoint),
            device=args.device,
            ctx_init="a photo of a",
            lr=0.01,
            vpt_tokens=4,
            batch_size=32,
            quiet=True,
        )
        report["detect_s"] = time.perf_counter() - started
        frame = result.frame
        clean = (frame["path"].map(truth) == frame["label"]).to_numpy()
        selected = frame["is_clean"].to_numpy()
        hits = float(np.sum(selected & clean))
        report["precision"] = hits / max(selected.sum(), 1)
        report["recall"] = hits / clean.sum()
        report["result_device"] = result.metadata["device"]

        for backbone, extra in [
            ("clip", {"optimizer": "adamw", "lr": 1e-3}),
            ("timm:test_vit", {"optimizer": "adamw", "lr": 1e-3, "backbone_weights": "none", "image_size": 32}),
        ]:
            started = time.perf_counter()
            model_dir = work / backbone.replace(":", "_")
            deft_clean.train(
                work / "train",
                results=work / "results.parquet",
                out=model_dir,
                clean_only=True,
                backbone=backbone,
                epochs=4,
                batch_size=32,
                device=args.device,
                quiet=True,
                **extra,
            )
            accuracy = deft_clean.predict(model_dir, [work / "heldout"], device=args.device, quiet=True).accuracy
            report[f"{backbone}_train_predict_s"] = time.perf_counter() - started
            report[f"{backbone}_heldout_accuracy"] = accuracy
    print(json.dumps(report, indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cuda_smoke.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
