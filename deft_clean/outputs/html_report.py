"""The HTML report: one self-contained page that opens on an overview (the verdict, what the run did with its
prompts, a compact summary, the per-class table and the given-vs-suggested heatmap, both of which filter the
cards), then the review cards (:mod:`deft_clean.outputs.html_review`), the pair table, a p_clean histogram,
training curves, duplicate and outlier galleries.

The page loads nothing from the network: thumbnails are JPEG data URIs, the histogram and heatmap are
inline SVG and tables, and its content security policy allows nothing else (not even an inline event
handler, should a label ever slip through unescaped). Every label and path goes through html.escape.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import os
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..inputs.listing import DatasetSpec
from ..inputs.listing import dataset_root as recorded_dataset_root
from ..inputs.readers.recorded import Opener, checked_root, row_opener
from ..run.errors import DeftCleanError
from ..run.files import write_atomic
from ..run.ownership import HTML_MARKER
from ..run.safety import printable
from . import html_review as review
from .charts import confusion_svg, history_svg
from .results import flagged_rows, usable_rows
from .run_record import learned
from .summary import HTML_TOP, ReportData, rate, summarize
from .verdict import CAVEATS, CLASS_RATE, RELIABLE


def escape(text: object) -> str:
    """HTML-escaped, with control and format characters (ESC, U+202E, ...) shown as escapes (run.safety.printable):
    a results file's text must not reorder or hide what the page shows."""
    return html.escape(printable(text))


log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20  # p_clean bins over [0, 1]
HEATMAP_CLASSES = 20  # heatmap axes: the classes most involved in flagged pairs; the rest become "(other)"
GALLERY_GROUPS = 50  # duplicate groups shown as thumbnails
GALLERY_MEMBERS = 6  # thumbnails per duplicate group
GALLERY_PX = 112  # duplicate and outlier thumbnails


def write_html(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    top: int = HTML_TOP,
    dataset_root: Path | None = None,
    thumbnails: int = review.MAX_THUMBNAILS,
    training: dict[str, Any] | None = None,
    predictions: pd.DataFrame | None = None,
) -> Path:
    """Write the HTML report atomically: the flagged samples first, then summary, tables and pictures.

    The review section pages through every flagged sample (see :mod:`deft_clean.outputs.html_review`);
    the first ``thumbnails`` flagged samples (lowest p_clean first) get a thumbnail, the ``top`` most
    suspicious a large one. ``dataset_root`` is where the images are; by default the dataset recorded in
    ``metadata``. When the images cannot be found the page still renders, with placeholders.
    ``training`` (a model folder's metrics.json) adds phase 2's curves, ``predictions`` (a predict Parquet
    with a ``label`` column) its confusion matrix; detect's own per-epoch history is drawn when recorded.
    """
    data = summarize(frame, metadata, top=0)
    root = dataset_root if dataset_root is not None else _recorded_root(metadata, frame)
    opener = row_opener(metadata, root)
    page = _page(frame, metadata, data, top=top, opener=opener, thumbnails=thumbnails)
    page = page.replace("<!--pictures-->", _pictures_html(metadata, training, predictions))

    def write(tmp: Path) -> None:
        tmp.write_text(page, encoding="utf-8", errors="replace")

    return write_atomic(path, write)


def _recorded_root(metadata: dict[str, Any], frame: pd.DataFrame) -> Path | None:
    """Where the thumbnails come from: the recorded dataset, once the rows are ones its reader lists."""
    try:
        if DatasetSpec.of(metadata).packed:  # rows are samples, opened through their reader (recorded_opener)
            return recorded_dataset_root(metadata)
        return checked_root(metadata, frame["path"].astype(str).tolist())
    except DeftCleanError as exc:
        log.warning("no thumbnails in the HTML report: %s", exc)
        return None


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1800px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#666;word-break:break-all}.totals span{font-weight:600}
.scroll{max-height:420px;overflow:auto;display:inline-block}
.heat td{text-align:center;min-width:28px}.heat th.col{writing-mode:vertical-rl;transform:rotate(180deg)}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.group{display:flex;gap:4px;border:1px solid #ccc;padding:4px}
.gallery figure{margin:0;width:116px;font-size:11px;word-break:break-all}
.gallery img,.gallery .ph{display:block;width:112px;height:112px;object-fit:contain;background:#eee}
.group-head{font-size:12px;width:100%}.chart{display:inline-block;margin:0 16px 8px 0}
nav.jump{margin:4px 0 8px}nav.jump a{margin-right:12px}
.overview{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}.overview h2{margin-top:8px}
.overview>div{flex:0 1 auto;max-width:620px}
.overview .scroll{max-height:440px}#classes tr[data-class],#heatmap td[data-given]{cursor:pointer}
.verdict{padding:8px 12px;margin:8px 0;border:2px solid}.verdict.ok{background:#e8f5e9;border-color:#2e7d32}
.verdict.caveats{background:#fff8e1;border-color:#f9a825}.verdict.bad{background:#fdecea;border-color:#b71c1c}
"""


def _page(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    data: ReportData,
    *,
    top: int,
    opener: Opener | None,
    thumbnails: int,
) -> str:
    script_hash = base64.b64encode(hashlib.sha256(review.SCRIPT.encode()).digest()).decode()
    # Only data: images, inline styles and this exact script may load: no network, no injected handlers.
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    dataset = str(metadata.get("dataset", "?"))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cards = review.review_data(frame, metadata, top=top, opener=opener, thumbnails=thumbnails)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        HTML_MARKER,  # lets a later --overwrite know this page is deft-clean's own
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        f"<title>deft-clean report: {escape(Path(dataset).name)}</title>",
        f"<style>{CSS}{review.CSS}</style></head><body>",
        "<h1>deft-clean report</h1>",
        f'<p class="meta">dataset {escape(dataset)} &middot; model {escape(str(metadata.get("model", "?")))} '
        f"&middot; detect run {escape(str(metadata.get('created', '?')))} &middot; report {created}</p>",
        _verdict_html(data),
        _jump_html(frame),
        '<div class="overview" id="overview">',
        f"<div>{_summary_html(data, frame)}{_classes_html(data)}</div>",
        f"<div>{_heatmap_html(frame)}</div>",
        "</div>",
        review.review_html(cards, data.per_class),
        _pairs_html(data),
        _histogram_html(frame),
        "<!--pictures-->",
        _health_html(frame, opener),
        _unusable_html(frame),
        f"<script>{review.SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _pictures_html(metadata: dict[str, Any], training: dict[str, Any] | None, predictions: pd.DataFrame | None) -> str:
    """Detect's and train's per-epoch curves and predict's confusion matrix (empty when none is known)."""
    charts = []
    if learned(metadata):  # the curves of prompts that were dropped would describe flags that are not these
        charts.append(
            history_svg(
                metadata.get("history"),
                chart_id="detect-curves",
                title="detect: prompt training per epoch",
                names={"loss": "loss", "clean_fraction": "clean share"},
            )
        )
    if training:
        charts.append(
            history_svg(
                training.get("history"),
                chart_id="train-curves",
                title="train: fine-tuning per epoch",
                names={"loss": "loss", "val_accuracy": "held-out accuracy"},
            )
        )
    if predictions is not None and "label" in predictions.columns:
        labelled = predictions[predictions["label"].notna() & predictions["predicted_label"].notna()]
        charts.append(confusion_svg(labelled["label"], labelled["predicted_label"]))
    charts = [c for c in charts if c]
    return f'<h2>Training and prediction</h2><div id="pictures">{"".join(charts)}</div>' if charts else ""


def _verdict_html(data: ReportData) -> str:
    """The verdict, once: a red banner when flags were withheld or are not to be trusted, a quiet box otherwise;
    and what the run did with its prompts."""
    verdict = data.verdict
    parts = []
    if verdict is not None:
        kind = "bad" if verdict.banner else {RELIABLE: "ok", CAVEATS: "caveats"}.get(verdict.state, "caveats")
        role = ' role="alert"' if verdict.banner else ""
        title = "Evidence warning. " if verdict.banner else ""
        advice = f"<br>What to do: {escape(verdict.what_to_do)}" if verdict.what_to_do else ""
        element = 'id="evidence-banner" ' if verdict.banner else 'id="verdict" '
        parts.append(
            f'<div {element}class="verdict {kind}"{role} data-state="{escape(verdict.state)}"><b>{title}Verdict: '
            f"{escape(verdict.state)}.</b> {escape(verdict.sentence.split(': ', 1)[-1])}{advice}</div>"
        )
    if data.prompts:
        parts.append(f'<p id="prompts">{escape(data.prompts)}</p>')
    return "".join(parts)


def _jump_html(frame: pd.DataFrame) -> str:
    """Links to the sections below the overview."""
    links = [("review", "flagged cards"), ("pairs-section", "label pairs"), ("histogram-section", "p_clean")]
    if "duplicate_group" in frame.columns and frame["outlier_score"].notna().any():
        links += [("duplicates-section", "duplicates"), ("outliers-section", "outliers")]
    return '<nav class="jump">' + "".join(f'<a href="#{i}">{t}</a>' for i, t in links) + "</nav>"


def _summary_html(data: ReportData, frame: pd.DataFrame) -> str:
    health = ""
    if data.health is not None:
        health = (
            f'; <a href="#duplicates-section">{data.health["groups"]} duplicate groups</a> '
            f'({data.health["duplicates"]} samples), <a href="#outliers-section">{data.health["outliers"]} outliers</a>'
        )
    withheld = int(frame["withheld"].fillna(False).astype(bool).sum()) if "withheld" in frame.columns else 0
    return (
        '<h2>Summary</h2><p class="totals">'
        f'<span id="n-samples">{data.samples}</span> samples, '
        f'<span id="n-usable">{data.usable}</span> usable, '
        f'<span id="n-flagged">{data.flagged}</span> flagged '
        f'(<span id="flagged-pct">{data.flagged_pct:.1f}</span>% of usable), '
        f'<span id="n-withheld">{withheld}</span> withheld, '
        f'<span id="n-unusable">{data.unusable}</span> unusable{health}</p>'
    )


def _classes_html(data: ReportData) -> str:
    rows = "".join(
        f'<tr data-class="{escape(str(row[0]))}"><td>{escape(str(row[0]))}</td>'
        f'<td class="n samples">{row.samples}</td><td class="n flagged">{row.flagged}</td>'
        f'<td class="n">{rate(row.noise_rate)}</td></tr>'
        for row in data.per_class.itertuples(index=False)
    )
    return (
        f"<h2>Per class</h2><p>{escape(CLASS_RATE[0].upper() + CLASS_RATE[1:])}. Click a class to see its cards.</p>"
        '<div class="scroll"><table id="classes"><tr><th>class</th><th class="n">samples</th>'
        f'<th class="n">flagged</th><th class="n">flagged %</th></tr>{rows}'
        "</table></div>"
    )


def _pairs_html(data: ReportData, max_rows: int = 50) -> str:
    rows = "".join(
        f'<tr data-given="{escape(str(row.given))}" data-suggested="{escape(str(row.suggested))}">'
        f'<td>{escape(str(row.given))}</td><td>{escape(str(row.suggested))}</td><td class="n">{row[2]}</td></tr>'
        for row in data.pairs.head(max_rows).itertuples(index=False)
    )
    more = f"<p>{len(data.pairs) - max_rows} more pairs not shown.</p>" if len(data.pairs) > max_rows else ""
    return (
        '<h2 id="pairs-section">Flagged: given &rarr; suggested label</h2>'
        '<div class="scroll"><table id="pairs"><tr><th>given</th><th>suggested</th>'
        f'<th class="n">flagged</th></tr>{rows}</table></div>{more}'
    )


def _histogram_html(frame: pd.DataFrame) -> str:
    usable = usable_rows(frame)
    p = frame.loc[usable, "p_clean"].to_numpy(dtype=float, na_value=np.nan)
    is_flagged = ~frame.loc[usable, "is_clean"].to_numpy(dtype=bool)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    flagged_counts, _ = np.histogram(p[is_flagged], bins=edges)
    kept_counts, _ = np.histogram(p[~is_flagged], bins=edges)
    width, height, bar = 600, 160, 600 / HISTOGRAM_BINS
    peak = max(int((flagged_counts + kept_counts).max()), 1)
    bars = []
    for i, (f, k) in enumerate(zip(flagged_counts, kept_counts, strict=True)):
        x = i * bar
        h_kept, h_flagged = height * k / peak, height * f / peak
        tip = f"p_clean {edges[i]:.2f}-{edges[i + 1]:.2f}: {k} kept, {f} flagged"
        bars.append(
            f'<g class="bin" data-count="{int(f + k)}"><title>{tip}</title>'
            f'<rect x="{x + 1:.1f}" y="{height - h_kept:.1f}" width="{bar - 2:.1f}" height="{h_kept:.1f}" '
            'fill="#4a7bd0"/>'
            f'<rect x="{x + 1:.1f}" y="{height - h_kept - h_flagged:.1f}" width="{bar - 2:.1f}" '
            f'height="{h_flagged:.1f}" fill="#d04a4a"/></g>'
        )
    return (
        '<h2 id="histogram-section">p_clean</h2><p>Usable samples by p_clean; '
        '<span style="color:#d04a4a">flagged</span> and '
        f'<span style="color:#4a7bd0">kept</span>; tallest bar {peak}.</p>'
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18}" '
        f'viewBox="0 0 {width} {height + 18}" role="img">{"".join(bars)}'
        f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#444"/>'
        f'<text x="0" y="{height + 14}" font-size="11">0</text>'
        f'<text x="{width / 2 - 8}" y="{height + 14}" font-size="11">0.5</text>'
        f'<text x="{width - 8}" y="{height + 14}" font-size="11">1</text></svg>'
    )


def _heatmap_html(frame: pd.DataFrame) -> str:
    flagged = flagged_rows(frame)
    given = frame.loc[flagged, "label"].astype(str)
    suggested = frame.loc[flagged, "predicted_label"].fillna("?").astype(str)
    if not len(given):
        return "<h2>Given vs suggested</h2><p>No flagged samples.</p>"
    involvement = pd.concat([given, suggested]).value_counts(sort=False)
    involvement = involvement.sort_values(ascending=False, kind="stable")
    axis = list(involvement.index[:HEATMAP_CLASSES])
    other = "(other)"

    def bucket(values: pd.Series) -> pd.Series:
        return values.where(values.isin(axis), other)

    counts = pd.crosstab(bucket(given), bucket(suggested))
    labels = axis + ([other] if len(involvement) > len(axis) else [])
    counts = counts.reindex(index=labels, columns=labels, fill_value=0)
    peak = max(int(counts.to_numpy().max()), 1)
    head = "".join(f'<th class="col">{escape(c)}</th>' for c in labels)
    rows = []
    for g in labels:
        cells = []
        for s in labels:
            n = int(counts.at[g, s])
            shade = f"rgba(208,74,74,{0.1 + 0.9 * n / peak:.2f})" if n else "transparent"
            cells.append(
                f'<td data-given="{escape(g)}" data-suggested="{escape(s)}" style="background:{shade}">{n or ""}</td>'
            )
        rows.append(f"<tr><th>{escape(g)}</th>{''.join(cells)}</tr>")
    note = ""
    if len(axis) < len(labels):
        note = f" Classes beyond the {HEATMAP_CLASSES} most involved are pooled as {other}."
    return (
        "<h2>Given vs suggested</h2>"
        f"<p>Flagged samples: rows are given labels, columns suggested labels; click a cell to see its cards.{note}</p>"
        f'<div class="scroll"><table class="heat" id="heatmap"><tr><th></th>{head}</tr>'
        f"{''.join(rows)}</table></div>"
    )


def _health_html(frame: pd.DataFrame, opener: Opener | None, max_rows: int = GALLERY_GROUPS) -> str:
    """Duplicate groups (side by side) and outliers as thumbnail galleries; empty when detect did not compute
    the health columns. ``duplicate_kind`` and ``duplicate_similarity`` are shown when the file has them."""
    if "duplicate_group" not in frame.columns or not frame["outlier_score"].notna().any():
        return ""
    dup = frame[frame["duplicate_group"].notna()].sort_values(["duplicate_group"], kind="stable")
    groups = dup.groupby("duplicate_group", sort=True)
    boxes = []
    for g, members in islice(groups, max_rows):
        kind = _first(members, "duplicate_kind")
        similarity = _first(members, "duplicate_similarity")
        head = f"group {int(g)}: {len(members)} samples" + (f", {escape(str(kind))}" if kind is not None else "")
        head += f", similarity {float(similarity):.3f}" if similarity is not None else ""
        figures = "".join(
            _figure(opener, str(r.path), f"{r.label}") for r in members.head(GALLERY_MEMBERS).itertuples(index=False)
        )
        more = f"<figure>+{len(members) - GALLERY_MEMBERS} more</figure>" if len(members) > GALLERY_MEMBERS else ""
        boxes.append(
            f'<div class="group" data-group="{int(g)}"><div><div class="group-head">{head}</div>'
            f'<div class="gallery">{figures}{more}</div></div></div>'
        )
    more = f"<p>{groups.ngroups - max_rows} more groups not shown.</p>" if groups.ngroups > max_rows else ""
    outliers = frame[frame["is_outlier"].fillna(False).astype(bool)].sort_values("outlier_score", ascending=False)
    out_figures = "".join(
        _figure(opener, str(r.path), f"{r.label} · score {float(r.outlier_score):.1f}")
        for r in outliers.head(max_rows).itertuples(index=False)
    )
    out_more = f"<p>{len(outliers) - max_rows} more not shown.</p>" if len(outliers) > max_rows else ""
    return (
        '<h2 id="duplicates-section">Duplicates</h2>'
        f'<p><span id="n-dup-groups">{groups.ngroups}</span> groups of exact or near '
        f'duplicates, <span id="n-dup-rows">{len(dup)}</span> samples; <code>export --drop-duplicates</code> '
        f'keeps the first of each.</p><div class="gallery" id="duplicates">{"".join(boxes)}</div>{more}'
        '<h2 id="outliers-section">Outliers</h2>'
        f'<p><span id="n-outliers">{len(outliers)}</span> samples far from their nearest '
        "neighbours (outlier_score: robust z-score); <code>export --drop-outliers</code> leaves them out.</p>"
        f'<div class="gallery" id="outliers">{out_figures}</div>{out_more}'
    )


def _first(members: pd.DataFrame, column: str) -> Any:
    """A group's value of an optional column (None when the file lacks it or it is null)."""
    if column not in members.columns or not members[column].notna().any():
        return None
    return members[column].dropna().iloc[0]


def _figure(opener: Opener | None, path: str, caption: str) -> str:
    uri = None if opener is None else review.thumbnail_of(lambda s: opener(path, s), px=GALLERY_PX)
    image = f'<img src="{uri}" alt="">' if uri else '<div class="ph">no image</div>'
    caption = f"<figcaption>{escape(caption)}<br>{escape(path)}</figcaption>"
    return f'<figure data-path="{escape(path)}">{image}{caption}</figure>'


def _unusable_html(frame: pd.DataFrame, max_rows: int = 50) -> str:
    bad = frame[~usable_rows(frame)]
    if not len(bad):
        return ""
    rows = "".join(
        f"<tr><td>{escape(str(r.path))}</td><td>{escape(str(r.status))}</td></tr>"
        for r in bad.head(max_rows).itertuples(index=False)
    )
    more = f"<p>{len(bad) - max_rows} more not shown.</p>" if len(bad) > max_rows else ""
    return f'<h2>Unusable files</h2><table id="unusable"><tr><th>path</th><th>status</th></tr>{rows}</table>{more}'
