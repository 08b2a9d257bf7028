"""Reports on a detect Parquet: the counts and tables (:func:`summarize`), printed as rich tables.

Flagged means usable and not is_clean. A class's estimated noise rate is its flagged share of its
usable samples. The HTML page is built from the same summary in :mod:`deft_clean.report_html`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..detecting.evidence_check import class_noise, evidence_line
from ..run.errors import DeftCleanError, UsageError, option
from ..run.safety import Output, check_outputs, printable
from .export import dataset_root
from .results import STATUS_OK, load_results

if TYPE_CHECKING:
    from ..detecting.detection import DetectResult

TERMINAL_TOP = 20  # default rows of the most-suspicious table in the terminal
HTML_TOP = 200  # default gallery size


@dataclass(frozen=True)
class ReportData:
    """Counts and tables of a report, computed once from the results frame."""

    samples: int  # rows in the results
    usable: int  # rows with status "ok"
    flagged: int  # usable rows that are not is_clean
    unusable: int  # rows whose image could not be used
    per_class: pd.DataFrame  # class, samples, usable, flagged, noise_rate; most flagged first
    pairs: pd.DataFrame  # given, suggested, count over flagged rows; most frequent first
    suspicious: pd.DataFrame  # `top` usable rows, lowest p_clean first: path, label, predicted_label, ...
    reviewed: dict[str, int] | None = None  # with --decisions: flagged, reviewed, keep, drop, relabel
    health: dict[str, int] | None = None  # duplicate groups, rows in them, outliers; None: not computed
    evidence_warning: str | None = None  # the evidence check's warning (flags withheld / weak evidence); None: fine

    @property
    def flagged_pct(self) -> float:
        """Flagged share of usable rows, in percent."""
        return 100.0 * self.flagged / self.usable if self.usable else 0.0


def summarize(frame: pd.DataFrame, metadata: dict[str, Any], *, top: int = TERMINAL_TOP) -> ReportData:
    """Counts per dataset, per class and per (given, suggested) pair, plus the `top` most suspicious rows."""
    if top < 0:
        raise UsageError(f"{option('top')} must be 0 or more, got {top}")
    usable = frame["status"] == STATUS_OK
    flagged = usable & ~frame["is_clean"]
    classes = list(metadata.get("classes") or [])
    classes += sorted(set(frame["label"]) - set(classes))
    per_class = pd.DataFrame(
        {
            "samples": frame.groupby("label").size(),
            "usable": usable.groupby(frame["label"]).sum(),
            "flagged": flagged.groupby(frame["label"]).sum(),
        }
    ).reindex(classes, fill_value=0)
    per_class = per_class.astype("int64").rename_axis("class").reset_index()
    per_class["noise_rate"] = per_class["flagged"] / per_class["usable"].where(per_class["usable"] > 0)
    estimates = class_noise(metadata.get("evidence"))  # the evidence check's estimate, with its 95% interval
    per_class["est_noise"] = [estimates.get(str(c), (np.nan, np.nan, np.nan)) for c in per_class["class"]]
    per_class = per_class.sort_values("flagged", ascending=False, kind="stable").reset_index(drop=True)

    given, suggested = frame.loc[flagged, "label"], frame.loc[flagged, "predicted_label"].fillna("?")
    pairs = (
        pd.DataFrame({"given": given, "suggested": suggested})
        .value_counts(sort=False)
        .rename("count")
        .reset_index()
        .sort_values(["count", "given", "suggested"], ascending=[False, True, True], kind="stable")
        .reset_index(drop=True)
    )
    scored = frame[usable].assign(flagged=flagged[usable])
    if "flag_reason" not in scored.columns:  # a frame built by hand, not read from a Parquet
        scored = scored.assign(flag_reason=None)
    suspicious = scored.sort_values("p_clean", kind="stable").head(top).reset_index(drop=True)
    health = None
    if "duplicate_group" in frame.columns and frame["outlier_score"].notna().any():
        groups = frame["duplicate_group"].dropna()
        health = {
            "groups": int(groups.nunique()),
            "duplicates": int(len(groups)),
            "outliers": int(frame["is_outlier"].fillna(False).astype(bool).sum()),
        }
    return ReportData(
        evidence_warning=evidence_line(metadata.get("evidence")),
        health=health,
        samples=int(len(frame)),
        usable=int(usable.sum()),
        flagged=int(flagged.sum()),
        unusable=int((~usable).sum()),
        per_class=per_class,
        pairs=pairs,
        suspicious=suspicious[["path", "label", "predicted_label", "p_clean", "p_predicted", "flagged", "flag_reason"]],
    )


def report(
    results: str | os.PathLike[str] | DetectResult,
    *,
    html: str | os.PathLike[str] | None = None,
    top: int | None = None,
    dataset: str | os.PathLike[str] | None = None,
    decisions: str | os.PathLike[str] | None = None,
    console: Console | None = None,
    overwrite: bool = False,
) -> ReportData:
    """Print the terminal report (unless ``console`` is None) and write the HTML page if ``html`` is given.

    ``top`` caps the most-suspicious table (default 20) and the HTML gallery's thumbnails (default 200).
    ``decisions`` (a review CSV) adds how many flagged rows were reviewed and how. An existing ``html`` file
    is only replaced with ``overwrite``; it may never be the results, the dataset table or a file inside the
    dataset.
    """
    if isinstance(results, (str, os.PathLike)):
        frame, metadata = load_results(results)
    else:
        frame, metadata = results.frame, results.metadata
    data = summarize(frame, metadata, top=TERMINAL_TOP if top is None else top)
    if decisions is not None:
        from .decisions import review_counts

        data = replace(data, reviewed=review_counts(decisions, frame, metadata))
    root = dataset_root(metadata, dataset) if dataset is not None else None
    if html is not None:
        from .report_html import write_html

        _check_html_out(html, results, frame, metadata, root, overwrite=overwrite, decisions=decisions)

        write_html(frame, metadata, html, top=HTML_TOP if top is None else top, dataset_root=root)
    if console is not None:
        print_report(data, console)
    return data


def _check_html_out(
    html: str | os.PathLike[str],
    results: Any,
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    root: Path | None,
    *,
    overwrite: bool,
    decisions: Any = None,
) -> None:
    """The page may not replace the results, the decisions, the dataset table, an image, or land inside an
    image folder."""
    inputs: list[Any] = [p for p in (results, decisions) if isinstance(p, (str, os.PathLike))]
    table = metadata.get("source") == "table"
    if table and metadata.get("dataset"):
        inputs.append(metadata["dataset"])
    if root is None:
        with contextlib.suppress(DeftCleanError):
            root = dataset_root(metadata)
    datasets = []
    if root is not None and table and len(frame) <= 1_000_000:
        inputs.extend(root / str(p) for p in frame["path"])
    elif root is not None:
        datasets.append(root)
    check_outputs([Output(html, "html", overwrite=overwrite)], inputs=inputs, datasets=datasets)


# ----------------------------------------------------------------------------------------------------
# Terminal


def print_report(data: ReportData, console: Console, *, max_rows: int = 30) -> None:
    """Print the totals, per-class, pairs and most-suspicious tables; long tables stop at ``max_rows``."""
    if data.evidence_warning:
        console.print(Text(f"warning: {printable(data.evidence_warning)}", style="bold red"))
    totals = Table(title="totals")
    for column in ("samples", "usable", "flagged", "flagged %", "unusable"):
        totals.add_column(column, justify="right")
    totals.add_row(
        str(data.samples), str(data.usable), str(data.flagged), f"{data.flagged_pct:.1f}", str(data.unusable)
    )
    console.print(totals)

    title = "per class (noise rate = flagged / usable; est. wrong = the evidence check's estimate, 95%)"
    classes = Table(title=_title(title, data.per_class, max_rows))
    classes.add_column("class")
    for column in ("samples", "flagged", "noise rate", "est. wrong"):
        classes.add_column(column, justify="right")
    for row in data.per_class.head(max_rows).itertuples(index=False):
        classes.add_row(
            Text(printable(row[0])), str(row.samples), str(row.flagged), rate(row.noise_rate), estimate(row.est_noise)
        )
    console.print(classes)

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
                Text(reason),
            )
        console.print(suspicious)


def _title(title: str, table: pd.DataFrame, max_rows: int) -> str:
    return title if len(table) <= max_rows else f"{title}, first {max_rows} of {len(table)}"


def estimate(value: tuple[float, float, float]) -> str:
    """(share, low, high) -> "12.0% (9.1-15.2)", or "n/a" when not estimated."""
    share, low, high = value
    return "n/a" if pd.isna(share) else f"{100 * share:.1f}% ({100 * low:.1f}-{100 * high:.1f})"


def rate(value: float) -> str:
    """A noise rate as a percentage; "-" for a class without usable samples."""
    return "-" if pd.isna(value) else f"{100 * value:.1f}%"
