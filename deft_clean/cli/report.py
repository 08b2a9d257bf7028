"""``deft-clean report`` and ``deft-clean export``: look at what detect flagged, and write a cleaned dataset.

``register(app)`` adds both commands to the main Typer app in :mod:`deft_clean.cli.app`. Errors go through
``cli_common._run`` like every other command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from .common import Debug, Overwrite, Quiet, _run

Results = Annotated[Path, typer.Argument(help="Parquet written by detect.")]
Decisions = Annotated[
    Path | None,
    typer.Option(help="Review CSV (path,decision,label) downloaded from the HTML report; human decisions win."),
]
Dataset = Annotated[
    Path | None, typer.Option(help="Where the dataset is now, if it moved since detect (folder or table).")
]


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``export`` commands to ``app``."""
    app.command("report")(report)
    app.command("export")(export)


def report(
    results: Results,
    html: Annotated[
        Path | None,
        typer.Option("--html", "--out", "-o", help="Also write a self-contained HTML report to this file."),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            help="Most suspicious samples to show: terminal table (default 20), large HTML thumbnails (default 200)."
        ),
    ] = None,
    dataset: Dataset = None,
    overwrite: Overwrite = False,
    decisions: Decisions = None,
    model: Annotated[
        Path | None,
        typer.Option(metavar="MODEL_DIR", help="A train output folder: draw its training curves in the HTML page."),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="A predict Parquet of labelled images: draw its confusion matrix."),
    ] = None,
    thumbnails: Annotated[
        int | None,
        typer.Option(metavar="N", help="Flagged samples with an image in the HTML page, lowest p_clean first (5000)."),
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Show what detect flagged: totals, per-class noise, label pairs, the most suspicious samples."""
    from ..outputs.terminal_report import report as run_report

    console = None if quiet else Console(highlight=False)
    options = {"html": html, "top": top, "dataset": dataset, "console": console, "overwrite": overwrite}
    options |= {"model": model, "predictions": predictions, "thumbnails": thumbnails}
    _run(debug, quiet, run_report, results, decisions=decisions, **options)
    if console is not None and html is not None:
        console.print(Text(f"HTML report: {html}"))


def export(
    results: Results,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder, or a .csv/.parquet file with --mode csv.")],
    mode: Annotated[
        str, typer.Option(help="symlink | copy: an image folder OUT/<label>/...; csv: a table of kept rows.")
    ] = "symlink",
    relabel: Annotated[
        float | None,
        typer.Option(metavar="MIN_P", help="Export flagged samples with p_predicted >= MIN_P under predicted_label."),
    ] = None,
    keep_flagged: Annotated[
        bool, typer.Option("--keep-flagged", help="Put the other flagged samples in OUT/_flagged/<label>/.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty --out folder or an existing file.")
    ] = False,
    dataset: Dataset = None,
    decisions: Decisions = None,
    drop_duplicates: Annotated[
        bool,
        typer.Option(
            "--drop-duplicates", help="Export one sample per duplicate_group (exact and pixel-confirmed near copies)."
        ),
    ] = False,
    drop_outliers: Annotated[bool, typer.Option("--drop-outliers", help="Leave out is_outlier samples.")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write the cleaned dataset (never touching the source): clean rows, plus confident relabels."""
    from ..outputs.export import export_dataset

    summary = _run(
        debug,
        quiet,
        export_dataset,
        results,
        out=out,
        mode=mode,
        relabel=relabel,
        keep_flagged=keep_flagged,
        overwrite=overwrite,
        dataset=dataset,
        decisions=decisions,
        drop_duplicates=drop_duplicates,
        drop_outliers=drop_outliers,
    )
    if quiet:
        return
    line = f"exported {summary.exported} samples ({summary.kept} clean, {summary.relabelled} relabelled)"
    if keep_flagged:
        line += f", {summary.flagged} flagged in _flagged/ for review"
    others = summary.dropped - summary.duplicates  # dropped counts the copies too
    line += f"; {others} flagged{' or outlier' if drop_outliers else ''} dropped"
    line += f", {summary.duplicates} duplicates dropped" if drop_duplicates else ""
    line += f", {summary.unusable} unusable skipped"
    if decisions is not None:
        line += f"; {summary.reviewed} human decisions applied"
    console = Console(highlight=False)
    console.print(Text(line))
    console.print(Text(f"{summary.mode}: {summary.out}"))
