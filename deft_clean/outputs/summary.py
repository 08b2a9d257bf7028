"""What a results file says, as numbers and sentences: the summary behind the terminal and HTML reports
(:func:`summarize`), and the evidence check's warning and per-class noise estimates read back from the metadata.

:mod:`deft_clean.outputs.terminal_report` prints it and :mod:`deft_clean.outputs.html_report` renders it as a page.
Flagged means usable and not is_clean. The one per-class rate every view shows is the flagged share of a
class's usable samples (:data:`deft_clean.outputs.verdict.CLASS_RATE`); the verdict on the flags is
:func:`deft_clean.outputs.verdict.verdict`'s and the prompt record :func:`deft_clean.outputs.run_record.prompt_line`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..run.errors import UsageError, option
from .results import flagged_rows, usable_rows
from .run_record import prompt_line
from .verdict import Verdict, verdict
from .verdict import evidence_line as evidence_line  # where detect and older callers import it

TERMINAL_TOP = 20  # default rows of the most-suspicious table in the terminal
HTML_TOP = 200  # default gallery size


@dataclass(frozen=True)
class ReportData:
    """Counts and tables of a report, computed once from the results frame."""

    samples: int  # rows in the results
    usable: int  # rows with status "ok"
    flagged: int  # usable rows that are not is_clean
    unusable: int  # rows whose image could not be used
    per_class: pd.DataFrame  # class, samples, usable, flagged, noise_rate (= flagged / usable); most flagged first
    pairs: pd.DataFrame  # given, suggested, count over flagged rows; most frequent first
    suspicious: pd.DataFrame  # `top` usable rows, lowest p_clean first: path, label, predicted_label, ...
    reviewed: dict[str, int] | None = None  # with --decisions: flagged, reviewed, keep, drop, relabel
    health: dict[str, int] | None = None  # duplicate groups, rows in them, outliers; None: not computed
    verdict: Verdict | None = None  # the one verdict on the flags (None: a frame without metadata)
    prompts: str = ""  # what the run did with its prompts, one line (:func:`run_record.prompt_line`)

    @property
    def evidence_warning(self) -> str | None:
        """The verdict's sentence when it calls for a red banner (flags withheld or not to be trusted), else None."""
        return self.verdict.sentence if self.verdict is not None and self.verdict.banner else None

    @property
    def flagged_pct(self) -> float:
        """Flagged share of usable rows, in percent."""
        return 100.0 * self.flagged / self.usable if self.usable else 0.0


def class_table(frame: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per class, indexed by class in ``classes`` order (labels outside it after them): samples, usable,
    flagged and noise_rate = flagged / usable (NaN without usable rows). The one per-class table."""
    usable = pd.Series(usable_rows(frame), index=frame.index)
    flagged = pd.Series(flagged_rows(frame), index=frame.index)
    order = list(classes) + sorted(set(frame["label"]) - set(classes))
    table = pd.DataFrame(
        {
            "samples": frame.groupby("label").size(),
            "usable": usable.groupby(frame["label"]).sum(),
            "flagged": flagged.groupby(frame["label"]).sum(),
        }
    ).reindex(order, fill_value=0)
    table = table.astype("int64").rename_axis("class")
    table["noise_rate"] = table["flagged"] / table["usable"].where(table["usable"] > 0)
    return table


def label_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Given -> suggested label pairs among flagged rows (columns given, suggested, count), most frequent first."""
    flagged = flagged_rows(frame)
    given, suggested = frame.loc[flagged, "label"], frame.loc[flagged, "predicted_label"].fillna("?")
    return (
        pd.DataFrame({"given": given, "suggested": suggested})
        .value_counts(sort=False)
        .rename("count")
        .reset_index()
        .sort_values(["count", "given", "suggested"], ascending=[False, True, True], kind="stable")
        .reset_index(drop=True)
    )


def summarize(frame: pd.DataFrame, metadata: dict[str, Any], *, top: int = TERMINAL_TOP) -> ReportData:
    """Counts per dataset, per class and per (given, suggested) pair, plus the `top` most suspicious rows."""
    if top < 0:
        raise UsageError(f"{option('top')} must be 0 or more, got {top}")
    usable = pd.Series(usable_rows(frame), index=frame.index)
    flagged = pd.Series(flagged_rows(frame), index=frame.index)
    per_class = class_table(frame, list(metadata.get("classes") or [])).reset_index()
    per_class = per_class.sort_values("flagged", ascending=False, kind="stable").reset_index(drop=True)

    pairs = label_pairs(frame)
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
        verdict=verdict(metadata, frame),
        prompts=prompt_line(metadata) if metadata.get("kind", "detect") == "detect" else "",
        health=health,
        samples=int(len(frame)),
        usable=int(usable.sum()),
        flagged=int(flagged.sum()),
        unusable=int((~usable).sum()),
        per_class=per_class,
        pairs=pairs,
        suspicious=suspicious[["path", "label", "predicted_label", "p_clean", "p_predicted", "flagged", "flag_reason"]],
    )


def class_noise(evidence: dict[str, Any] | None) -> dict[str, tuple[float, float, float]]:
    """class -> (estimated wrong-label share, 95% low, high) from a results file's ``evidence`` metadata."""
    out: dict[str, tuple[float, float, float]] = {}
    if not isinstance(evidence, dict):
        return out
    for entry in evidence.get("per_class") or []:
        if isinstance(entry, dict) and entry.get("noise") is not None and entry.get("noise_interval"):
            low, high = entry["noise_interval"]
            out[str(entry.get("class"))] = (float(entry["noise"]), float(low), float(high))
    return out


def estimate(value: tuple[float, float, float]) -> str:
    """(share, low, high) -> "12.0% (9.1-15.2)", or "n/a" when not estimated."""
    share, low, high = value
    return "n/a" if pd.isna(share) else f"{100 * share:.1f}% ({100 * low:.1f}-{100 * high:.1f})"


def rate(value: float) -> str:
    """A noise rate as a percentage; "-" for a class without usable samples."""
    return "-" if pd.isna(value) else f"{100 * value:.1f}%"


def describe(frame: pd.DataFrame, metadata: dict[str, Any], path: Any = None) -> str:
    """A few lines about a result (its repr): rows, flagged, withheld, the evidence verdict, the model."""
    usable, flagged = usable_rows(frame), flagged_rows(frame)
    withheld = int(frame["withheld"].fillna(False).astype(bool).sum()) if "withheld" in frame.columns else 0
    n_usable = int(usable.sum())
    share = f" ({100 * int(flagged.sum()) / n_usable:.1f}% of usable)" if n_usable else ""
    said = verdict(metadata, frame)
    lines = [
        f"DetectResult{f' ({path})' if path else ''}",
        f"  rows {len(frame)}, usable {n_usable}, flagged {int(flagged.sum())}{share}, withheld {withheld}",
        f"  {said.sentence}",
        f"  {prompt_line(metadata)}",
        f"  model {metadata.get('model', '?')} ({metadata.get('pretrained', '?')}), "
        f"{len(metadata.get('classes') or [])} classes, selection "
        f"{(metadata.get('selection') or {}).get('rule', '?') if isinstance(metadata.get('selection'), dict) else '?'}",
        "  .flagged() .noise_rates() .confusions() .to_cleanlab() .to_fiftyone(folder) .frame .metadata",
    ]
    return "\n".join(lines)
