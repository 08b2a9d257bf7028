"""How deep one ``deft-clean detect`` goes: modules and functions of the package it passes through.

Runs ``deft-clean detect`` in-process (the CLI entry point, tiny CLIP, 120 synthetic images, CPU) under a
profiler and prints: the package modules whose functions ran, the distinct package functions called, and
the chain of package frames on the stack when the results Parquet is written (CLI entry -> Parquet).
Writes ``benchmarks/results/call_path.md``. A measure of the code's shape, not of speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def toy_module():
    try:
        from deft_clean.deft_clean import testing as toy  # after the toy CLIP moved into the package
    except ImportError:
        from deft_clean import testing as toy
    return toy


def build(work: Path) -> tuple[Path, Path, Path]:
    from deft_clean import testing as toy

    classes = toy.SHAPE_CLASSES[:4]
    images, labels = toy.synthetic_images(40, len(classes), seed=1)
    checkpoint = toy.pretrain_tiny_clip(
        images, labels, classes, config_path=work / "tiny-clip.json", checkpoint_path=work / "tiny.pt", steps=60
    )
    images, labels = toy.synthetic_images(30, len(classes), seed=2)
    noisy = toy.plant_noise(labels, len(classes), 0.2, seed=3)
    toy.write_image_folder(work / "data", images, noisy, classes)
    return work / "tiny-clip.json", checkpoint, work / "data"


def trace(argv: list[str]) -> tuple[set[str], set[str], list[str]]:
    from deft_clean.cli import main as cli_main  # imported before profiling

    modules: set[str] = set()
    functions: set[str] = set()
    chain: list[str] = []

    def profile(frame, event, arg):  # noqa: ARG001
        if event != "call":
            return
        name = frame.f_globals.get("__name__", "")
        if name.startswith("deft_clean"):
            modules.add(name)
            functions.add(f"{name}.{frame.f_code.co_qualname}")
        elif frame.f_code.co_name == "write_table" and name.startswith("pyarrow") and not chain:
            walk = frame.f_back
            while walk is not None:
                module = walk.f_globals.get("__name__", "")
                if module.startswith("deft_clean"):
                    chain.append(f"{module}.{walk.f_code.co_qualname}")
                walk = walk.f_back
            chain.reverse()

    sys.setprofile(profile)
    try:
        cli_main(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        sys.setprofile(None)
    return modules, functions, chain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="now")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config, checkpoint, data = build(Path(tmp))
        run = [str(data), "--out", str(Path(tmp) / "out.parquet"), "--model", str(config)]
        run += ["--pretrained", str(checkpoint), "--device", "cpu", "--num-workers", "0", "--quiet", "--seed", "0"]
        modules, functions, chain = trace(["detect", *run])
    lines = [
        f"# One `deft-clean detect`, CLI to Parquet ({args.label})",
        "",
        f"- package modules whose code ran: {len(modules)}",
        f"- distinct package functions called: {len(functions)}",
        f"- package frames on the stack at the Parquet write: {len(chain)}",
        "",
        *(f"  {i + 1}. `{frame}`" for i, frame in enumerate(chain)),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"call_path_{args.label}.md").write_text(text)


if __name__ == "__main__":
    main()
