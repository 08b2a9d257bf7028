"""The ``deft-clean`` command line: gathers options, calls the library, turns errors into exit codes.

Exit codes: 0 ok, 1 data error, 2 usage error. Library errors print one line on stderr; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..run.options import CLEAN_RULES, DetectConfig, TrainConfig
from ..run.safety import printable
from . import report as cli_report
from .common import (
    Cache,
    ClassNames,
    Compile,
    Debug,
    Device,
    DeviceTransforms,
    EarlyStop,
    ImagesPerEpoch,
    LabelKey,
    Overwrite,
    Quiet,
    Threads,
    Workers,
    _run,
    config_options,
)
from .help import HelpGroup

app = typer.Typer(
    name="deft-clean",
    cls=HelpGroup,
    help="Find wrong labels in image datasets with CLIP (DeFT), then train a model on what is left.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
D = DetectConfig()


def _version(value: bool) -> None:
    if value:
        from ..run._version import __version__

        typer.echo(f"deft-clean {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find wrong labels in image datasets with CLIP (DeFT), then train a model on what is left."""


Selection = Annotated[
    str,
    typer.Option(
        help="fused: text evidence seeds a clean set grown by cross-fitted image evidence (default); "
        "deft: the paper's dual-prompt rule."
    ),
]
DatasetArg = Annotated[
    Path,
    typer.Argument(
        help="Image folder (DATASET/<class>/<image>), a .csv/.parquet table, a Hugging Face dataset folder "
        "(save_to_disk) or WebDataset shards ('shards-{000..003}.tar')."
    ),
]
ImageCol = Annotated[
    str | None, typer.Option(help="Hugging Face dataset: the image column (default: its Image column).")
]
Split = Annotated[str | None, typer.Option(help="Hugging Face DatasetDict: the split (default: train).")]
IdCol = Annotated[
    str | None, typer.Option(help="Hugging Face dataset: a column shown in each row's path, hf://<index>#<id>.")
]
SaveArrays = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Also save features.npy (N x D) and probs.npy (N x K), rows aligned with the Parquet, for "
        "cleanlab or FiftyOne.",
    ),
]

DuplicateThreshold = Annotated[
    float,
    typer.Option(
        help="Pixel similarity (thumbnail correlation, 1 = the same picture) at which two images the features "
        "propose are near-duplicates; lower finds more, higher only the closest copies."
    ),
]


@app.command()
def detect(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output Parquet file.")] = Path("results.parquet"),
    model: Annotated[
        str, typer.Option(help="open_clip model name, hf-hub:ORG/REPO, local-dir:FOLDER, or a model-config JSON path.")
    ] = D.model,
    pretrained: Annotated[
        str, typer.Option(help="open_clip pretrained tag, a local checkpoint file, or 'none'.")
    ] = D.pretrained,
    path_col: Annotated[str, typer.Option(help="Path column of a table.")] = "path",
    label_col: Annotated[
        str, typer.Option(help="Label column of a table (Hugging Face: default its ClassLabel column).")
    ] = "label",
    image_col: ImageCol = None,
    split: Split = None,
    id_col: IdCol = None,
    label_key: LabelKey = "cls",
    class_names: ClassNames = None,
    n_ctx: Annotated[int, typer.Option(help="Learnable context tokens per prompt.")] = D.n_ctx,
    ctx_init: Annotated[
        str | None, typer.Option(help="Initialise contexts from these words, e.g. 'a photo of a'.")
    ] = D.ctx_init,
    class_specific: Annotated[bool, typer.Option(help="One context per class instead of shared.")] = D.class_specific,
    vpt_tokens: Annotated[int, typer.Option(help="Visual prompt tokens per layer (0: no VPT).")] = D.vpt_tokens,
    vpt_depth: Annotated[int | None, typer.Option(help="Vision layers with prompts (default: all).")] = D.vpt_depth,
    image_adapter: Annotated[
        str, typer.Option(help="Towers without tokens (ConvNeXt, ResNet...): none | norm-bias.")
    ] = D.image_adapter,
    epochs: Annotated[int, typer.Option(help="Training epochs at most (early stop may end sooner).")] = D.epochs,
    warmup_epochs: Annotated[int, typer.Option(help="Epochs on given labels before selection.")] = D.warmup_epochs,
    images_per_epoch: ImagesPerEpoch = str(D.images_per_epoch),
    early_stop: EarlyStop = D.early_stop,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = D.batch_size,
    lr: Annotated[float, typer.Option(help="SGD learning rate (cosine schedule).")] = D.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = D.momentum,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = D.weight_decay,
    grad_clip: Annotated[
        float | None, typer.Option(help="Clip the prompts' gradient norm; 0 turns clipping off.")
    ] = D.grad_clip,
    clean_rule: Annotated[
        str, typer.Option(help=f"DeFT's prompt rule (training, and --selection deft): {' | '.join(CLEAN_RULES)}.")
    ] = D.clean_rule,
    selection: Selection = D.selection,
    quick: Annotated[
        bool, typer.Option("--quick", help="Skip prompt training: zero-shot prompts + image evidence, one pass.")
    ] = D.quick,
    health: Annotated[
        bool, typer.Option(help="Duplicate and outlier columns (hashes every file; nearest-neighbour search).")
    ] = D.health,
    duplicate_threshold: DuplicateThreshold = D.duplicate_threshold,
    hflip: Annotated[bool, typer.Option(help="Random horizontal flips while training.")] = D.hflip,
    num_workers: Workers = None,
    threads: Threads = None,
    cache: Cache = None,
    device_transforms: DeviceTransforms = D.device_transforms,
    compile: Compile = D.compile,
    seed: Annotated[int, typer.Option(help="Random seed.")] = D.seed,
    run_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (default: <out>.run/ next to the output).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --run-dir.")] = False,
    checkpoint_every: Annotated[
        int, typer.Option(metavar="STEPS", help="Also checkpoint every STEPS steps (0: at epoch ends only).")
    ] = 0,
    overwrite: Overwrite = False,
    save_arrays: SaveArrays = None,
    device: Device = D.device,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Phase 1: learn positive/negative prompts and write per-sample clean probabilities to Parquet."""
    options = config_options(DetectConfig, locals(), grad_clip=grad_clip or None)
    from ..detecting.detect import detect as run_detect

    started = time.monotonic()
    # detect() builds its ReadOptions and RunOptions from these once (a conflict is a UsageError, mapped by _run)
    result = _run(
        debug,
        quiet,
        run_detect,
        dataset,
        path_col=path_col,
        label_col=label_col,
        image_col=image_col,
        split=split,
        label_key=label_key,
        id_col=id_col,
        class_names=class_names,
        out=out,
        run_dir=run_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
        quiet=quiet,
        save_arrays=save_arrays,
        **options,
    )
    if not quiet:
        _print_detect_summary(result, out, elapsed=time.monotonic() - started, arrays=save_arrays)


def _print_detect_summary(result: Any, out: Path, *, elapsed: float, arrays: Path | None) -> None:
    """The end-of-run summary: counts, the verdict, what the prompts did, the most flagged classes, what next."""
    from ..outputs.run_record import prompt_line
    from ..outputs.summary import class_table, rate
    from ..outputs.verdict import CAVEATS, CLASS_RATE, RELIABLE, verdict

    summary = result.summary()
    console = Console(soft_wrap=True)
    samples, flagged, unusable = summary["samples"], summary["flagged"], summary["unusable"]
    usable = max(samples - unusable, 1)
    withheld = summary.get("withheld", 0)
    console.print(
        f"[bold]{samples}[/] samples, [bold red]{flagged}[/] flagged ({100 * flagged / usable:.1f}% of usable), "
        f"{unusable} unusable" + (f", {withheld} flags withheld" if withheld else "")
    )
    said = verdict(result.metadata, result.frame)
    style = "bold red" if said.banner else {RELIABLE: "bold green", CAVEATS: "bold yellow"}.get(said.state, "bold")
    console.print(Text(f"verdict: {printable(said.sentence)}", style=style))
    if said.what_to_do:
        console.print(Text(f"  what to do: {printable(said.what_to_do)}"))
    console.print(Text(printable(prompt_line(result.metadata))))
    if summary["top_flagged_classes"]:
        rates = class_table(result.frame, list(result.metadata.get("classes") or []))["noise_rate"]
        table = Table(title="classes with the most flagged samples")
        table.add_column("class")
        table.add_column("flagged", justify="right")
        table.add_column("flagged %", justify="right")
        for name, count in summary["top_flagged_classes"]:
            table.add_row(Text(printable(name)), str(count), rate(rates.get(name, float("nan"))))
        console.print(table)
        console.print(Text(CLASS_RATE))
    console.print(Text(f"results: {out}"))
    if arrays is not None:
        console.print(Text(f"arrays: {arrays}"))
    console.print(Text(f"done in {_duration(elapsed)}, {unusable} unusable file(s)"))
    html = out.with_name("report.html")
    again = " --overwrite" if html.exists() else ""  # a page from an earlier run: the hint must still run
    console.print(Text(f"next: deft-clean report {shlex.quote(str(out))} --html {shlex.quote(str(html))}{again}"))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


TD = TrainConfig()


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="The image folder or table that detect ran on.")],
    results: Annotated[Path, typer.Option("--results", "-r", help="Parquet written by detect.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")] = Path("model"),
    clean_only: Annotated[bool, typer.Option("--clean-only", help="Train on is_clean rows only.")] = False,
    threshold: Annotated[float | None, typer.Option(help="With --clean-only: keep p_clean > T instead.")] = None,
    relabel: Annotated[
        float | None, typer.Option(help="With --clean-only: keep flagged rows with p_predicted >= MIN_P, relabelled.")
    ] = None,
    backbone: Annotated[str, typer.Option(help="clip (the detect model's image tower) or timm:NAME.")] = TD.backbone,
    backbone_weights: Annotated[
        str | None, typer.Option(help="timm: local weights file, or 'none' for random init.")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size (default: the backbone's).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = TD.epochs,
    warmup_epochs: Annotated[int, typer.Option(help="Linear learning-rate warm-up epochs.")] = TD.warmup_epochs,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the backbone (cosine schedule).")] = TD.lr,
    head_lr_scale: Annotated[float, typer.Option(help="The head's learning rate is --lr x this.")] = TD.head_lr_scale,
    head_init: Annotated[
        str, typer.Option(help="probe: fit the head on frozen features first (LP-FT); random: a fresh head.")
    ] = TD.head_init,
    holdout: Annotated[
        float, typer.Option(help="Without --val: fraction of the kept rows held out to pick the best epoch.")
    ] = TD.holdout,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = TD.weight_decay,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = TD.batch_size,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw.")] = TD.optimizer,
    label_smoothing: Annotated[float, typer.Option(help="Cross-entropy label smoothing.")] = TD.label_smoothing,
    balanced: Annotated[bool, typer.Option("--balanced", help="Class-balanced sampling.")] = False,
    hflip: Annotated[
        bool | None, typer.Option(help="Random horizontal flips (default: on unless the probe finds mirrors hurt).")
    ] = TD.hflip,
    val: Annotated[Path | None, typer.Option(help="Held-out folder or table: accuracy per epoch, best kept.")] = None,
    decisions: Annotated[
        Path | None, typer.Option(help="Review CSV (path,decision,label) from the HTML report; human decisions win.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from checkpoint.pt in --out.")] = False,
    checkpoint_every: Annotated[
        int, typer.Option(metavar="STEPS", help="Also checkpoint every STEPS steps (0: at epoch ends only).")
    ] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty --out.")] = False,
    num_workers: Workers = None,
    cache: Cache = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TD.seed,
    device: Device = TD.device,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Phase 2: fine-tune a backbone + linear head on the kept rows and export it."""
    options = config_options(TrainConfig, locals())
    from ..training.finetune import train as run_train

    result = _run(
        debug,
        quiet,
        run_train,
        dataset,
        results=results,
        out=out,
        val=val,
        decisions=decisions,
        quiet=quiet,
        **options,
    )
    if not quiet:
        console = Console(soft_wrap=True)
        last = result.history[-1] if result.history else {}
        line = (
            f"trained on {result.n_train} rows ({result.n_relabelled} relabelled), final loss {last.get('loss', 0):.4f}"
        )
        console.print(Text(line))
        if result.best_val_accuracy is not None:
            source = "--val" if result.val_source == "--val" else f"{result.n_held_out} held-out kept rows"
            line = f"val accuracy ({source}): {result.best_val_accuracy:.4f} at epoch {result.best_epoch}"
            if result.probe_val_accuracy is not None:
                line += f" (linear probe, epoch 0: {result.probe_val_accuracy:.4f})"
            console.print(Text(line))
            if result.val_source == "held-out" and clean_only:
                # measured: 98-100% on held-out kept rows vs 86-98% on clean test images (benchmarks/phase2.py)
                console.print(
                    Text("  optimistic: the kept rows are those detect was surest of; --val DATASET is unbiased")
                )
        console.print(Text(f"model: {result.out}"))


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by train.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="A folder, a .csv/.parquet table, image files, a Hugging Face dataset folder or shards."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output Parquet file.")] = Path("predictions.parquet"),
    top_k: Annotated[int, typer.Option(help="How many top labels to keep per image.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    path_col: Annotated[str, typer.Option(help="Path column of a table.")] = "path",
    label_col: Annotated[str, typer.Option(help="Label column of a table (optional).")] = "label",
    split: Split = None,
    label_key: Annotated[str, typer.Option(help="WebDataset: the label member (optional), e.g. cls.")] = "cls",
    num_workers: Workers = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Predict classes with an exported model; prints accuracy when the input has labels."""
    from ..training.predict import predict as run_predict

    result = _run(
        debug,
        quiet,
        run_predict,
        model_dir,
        inputs,
        out=out,
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        path_col=path_col,
        label_col=label_col,
        quiet=quiet,
        overwrite=overwrite,
        split=split,
        label_key=label_key,
    )
    if quiet:
        return
    console = Console(soft_wrap=True)
    unusable = int((result.frame["status"] != "ok").sum())
    console.print(Text(f"{len(result.frame)} images, {unusable} unusable"))
    if result.accuracy is not None and result.per_class is not None:
        console.print(Text(f"accuracy {result.accuracy:.4f}"))
        table = Table(title="per class")
        for column in ("class", "samples", "accuracy"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in result.per_class.itertuples(index=False):
            table.add_row(Text(printable(row[0])), str(row[1]), f"{row[2]:.4f}")
        console.print(table)
    console.print(Text(f"predictions: {out}"))


cli_report.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    app(args=argv)
