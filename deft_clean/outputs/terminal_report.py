"""The report on a detect Parquet: :func:`report` prints the summary (:mod:`deft_clean.outputs.summary`) as rich
tables and writes the HTML page (:mod:`deft_clean.outputs.html_report`) after checking where it may go.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..inputs.listing import DatasetSpec, dataset_root
from ..run.errors import DataError, DeftCleanError, UsageError, option, warn_result
from ..run.files import run_lock
from ..run.safety import Output, check_outputs, printable, read_file
from .results import Results, load_results
from .summary import HTML_TOP, TERMINAL_TOP, ReportData, rate, summarize
from .verdict import CAVEATS, CLASS_RATE, RELIABLE

MAX_METRICS_BYTES = 64 << 20  # a train folder's metrics.json is a few KB; anything near this is not one


def report(
    results: str | os.PathLike[str] | Results,
    *,
    html: str | os.PathLike[str] | None = None,
    top: int | None = None,
    dataset: str | os.PathLike[str] | None = None,
    decisions: str | os.PathLike[str] | None = None,
    console: Console | None = None,
    overwrite: bool = False,
    model: str | os.PathLike[str] | None = None,
    predictions: str | os.PathLike[str] | None = None,
    thumbnails: int | None = None,
) -> ReportData:
    """Print the terminal report (unless ``console`` is None) and write the HTML page if ``html`` is given.

    ``top`` caps the most-suspicious table (default 20) and the HTML gallery's thumbnails (default 200).
    ``decisions`` (a review CSV) adds how many flagged rows were reviewed and how. An existing ``html`` file
    is only replaced with ``overwrite``; it may never be the results, the dataset table or a file inside the
    dataset. ``model`` (a train output folder) adds its training curves from ``metrics.json`` to the page,
    ``predictions`` (a predict Parquet with labels) its confusion matrix. ``thumbnails`` caps the flagged rows
    that get an image on the page (default 5,000, lowest p_clean first).
    """
    if isinstance(results, (str, os.PathLike)):
        frame, metadata = load_results(results)
    else:
        frame, metadata = results.frame, results.metadata
    data = summarize(frame, metadata, top=TERMINAL_TOP if top is None else top)
    if decisions is not None:
        from .review_decisions import review_counts

        data = replace(data, reviewed=review_counts(decisions, frame, metadata))
    root = _given_root(metadata, frame, dataset)
    if html is not None:
        from .html_report import write_html

        extra = [p for p in (model, predictions) if p is not None]
        _check_html_out(html, results, frame, metadata, root, overwrite=overwrite, decisions=decisions, extra=extra)
        if thumbnails is not None and thumbnails < 0:
            raise UsageError(f"{option('thumbnails')} must be 0 or more, got {thumbnails}")
        pictures = {"training": read_metrics(model), "predictions": read_predictions(predictions)}
        if thumbnails is not None:
            pictures["thumbnails"] = thumbnails
        with run_lock(html):  # after the check (the lock file sits beside the page); a second report fails at once
            write_html(frame, metadata, html, top=HTML_TOP if top is None else top, dataset_root=root, **pictures)
    if console is not None:
        print_report(data, console)
    elif data.evidence_warning:  # quiet: no summary, but the line that says what the flags mean
        warn_result(printable(f"verdict: {data.evidence_warning}"))
    return data


def _given_root(metadata: dict[str, Any], frame: pd.DataFrame, dataset: Any) -> Path | None:
    """The ``--dataset`` folder the thumbnails come from, once the rows are ones its reader lists; None without."""
    if dataset is None:
        return None
    if DatasetSpec.of(metadata).packed:
        return dataset_root(metadata, dataset)
    from ..inputs.readers.recorded import checked_root

    return checked_root(metadata, frame["path"].astype(str).tolist(), dataset)


def _check_html_out(
    html: str | os.PathLike[str],
    results: Any,
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    root: Path | None,
    *,
    overwrite: bool,
    decisions: Any = None,
    extra: list[Any] | None = None,
) -> None:
    """The page may not replace the results, the decisions, the dataset table, an image, a model folder or
    predictions it draws, or land inside an image folder."""
    inputs: list[Any] = [p for p in (results, decisions, *(extra or [])) if isinstance(p, (str, os.PathLike))]
    spec = DatasetSpec.of(metadata)
    table = spec.table
    if table and spec.location:
        inputs.append(spec.location)
    if root is None:
        with contextlib.suppress(DeftCleanError):
            root = dataset_root(metadata)
    datasets = []
    if root is not None and table and len(frame) <= 1_000_000:
        inputs.extend(root / str(p) for p in frame["path"])
    elif root is not None:
        datasets.append(root)
    check_outputs([Output(html, "html", overwrite=overwrite, kind="report")], inputs=inputs, datasets=datasets)


def read_metrics(model: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """A train output folder's ``metrics.json`` (bounded regular-file read), for the page's training curves."""
    if model is None:
        return None
    path = Path(model) / "metrics.json"
    try:
        value = json.loads(read_file(path, limit=MAX_METRICS_BYTES))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the training metrics ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object of training metrics")
    return value


def read_predictions(path: str | os.PathLike[str] | None) -> pd.DataFrame | None:
    """The ``label`` and ``predicted_label`` columns of a predict Parquet, for the page's confusion matrix."""
    if path is None:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(read_file(path)), columns=["label", "predicted_label"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read labelled predictions ({exc}); predict a labelled folder") from None
    frame = table.to_pandas()
    for column in frame.columns:
        if not all(v is None or isinstance(v, str) for v in frame[column]):
            raise DataError(f"{path}: column {column!r} must hold strings")
    return frame


# ----------------------------------------------------------------------------------------------------
# Terminal


def print_report(data: ReportData, console: Console, *, max_rows: int = 30) -> None:
    """Print the totals, per-class, pairs and most-suspicious tables; long tables stop at ``max_rows``."""
    print_verdict(data, console)
    totals = Table(title="totals")
    for column in ("samples", "usable", "flagged", "flagged %", "unusable"):
        totals.add_column(column, justify="right")
    totals.add_row(
        str(data.samples), str(data.usable), str(data.flagged), f"{data.flagged_pct:.1f}", str(data.unusable)
    )
    console.print(totals)

    classes = Table(title=_title("per class", data.per_class, max_rows))
    classes.add_column("class")
    for column in ("samples", "flagged", "flagged %"):
        classes.add_column(column, justify="right")
    for row in data.per_class.head(max_rows).itertuples(index=False):
        classes.add_row(Text(printable(row[0])), str(row.samples), str(row.flagged), rate(row.noise_rate))
    console.print(classes)
    console.print(Text(CLASS_RATE))

    if len(data.pairs):
        pairs = Table(title=_title("flagged: given -> suggested label", data.pairs, max_rows))
        pairs.add_column("given")
        pairs.add_column("suggested")
        pairs.add_column("flagged", justify="right")
        for row in data.pairs.head(max_rows).itertuples(index=False):
            pairs.add_row(Text(printable(row.given)), Text(printable(row.suggested)), str(row[2]))
        console.print(pairs)

    if data.health is not None:
        h = data.health
        console.print(
            Text(
                f"health: {h['groups']} duplicate groups ({h['duplicates']} samples; export --drop-duplicates "
                f"keeps one each), {h['outliers']} outliers (export --drop-outliers)"
            )
        )

    if data.reviewed is not None:
        r = data.reviewed
        console.print(
            Text(
                f"reviewed {r['reviewed']} of {r['flagged']} flagged ({r['keep']} keep, {r['drop']} drop, "
                f"{r['relabel']} relabel); {r['other']} decisions on rows detect kept"
            )
        )

    if len(data.suspicious):
        suspicious = Table(title=f"{len(data.suspicious)} most suspicious samples (lowest p_clean)")
        suspicious.add_column("path", overflow="fold")
        suspicious.add_column("given")
        suspicious.add_column("suggested")
        suspicious.add_column("p_clean", justify="right")
        suspicious.add_column("why flagged", overflow="fold")
        for row in data.suspicious.itertuples(index=False):
            mark = "" if row.flagged else " (kept)"
            reason = "" if pd.isna(row.flag_reason) else str(row.flag_reason)
            suspicious.add_row(
                Text(printable(row.path)),
                Text(printable(row.label)),
                Text(printable(row.predicted_label)),
                f"{row.p_clean:.3f}{mark}",
                Text(printable(reason)),  # a results file's text: escapes never reach the terminal
            )
        console.print(suspicious)


def print_verdict(data: ReportData, console: Console) -> None:
    """The verdict (red when flags were withheld or are not to be trusted) and what the run did with its prompts."""
    if data.verdict is not None:
        style = {RELIABLE: "bold green", CAVEATS: "bold yellow"}.get(data.verdict.state, "bold red")
        style = "bold red" if data.verdict.banner else style
        console.print(Text(f"verdict: {printable(data.verdict.sentence)}", style=style))
        if data.verdict.what_to_do:
            console.print(Text(f"  what to do: {printable(data.verdict.what_to_do)}"))
    if data.prompts:
        console.print(Text(printable(data.prompts)))


def _title(title: str, table: pd.DataFrame, max_rows: int) -> str:
    return title if len(table) <= max_rows else f"{title}, first {max_rows} of {len(table)}"
