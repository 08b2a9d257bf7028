"""Pictures for the HTML report as inline SVG: per-epoch training curves and a confusion matrix.

No plotting library: a chart is a few hundred bytes of SVG built from numbers, every label through
html.escape, so the page stays self-contained and its content security policy unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

import pandas as pd

COLOURS = ("#4a7bd0", "#d04a4a", "#2e8b57", "#8a5cc2")
CONFUSION_CLASSES = 30  # classes shown in a confusion matrix: the most frequent, the rest pooled as "(other)"


def curves_svg(epochs: Sequence[int], series: dict[str, Sequence[float | None]], *, chart_id: str, title: str) -> str:
    """One chart of several per-epoch series (e.g. loss, clean share) on their own 0..max scale each.

    ``series`` maps a name to one value per epoch (None or NaN: not measured that epoch). Each line is scaled
    to its own maximum, so a loss and a share fit one chart; the legend gives each line's range.
    """
    width, height, pad = 520, 180, 30
    x_of = _scale(len(epochs), width - 2 * pad, pad)
    lines, legend = [], []
    for k, (name, values) in enumerate(series.items()):
        points = [(x_of(i), v) for i, v in enumerate(values) if _finite(v)]
        if not points:
            continue
        top = max(max(v for _, v in points), 1e-12)
        low = min(v for _, v in points)
        colour = COLOURS[k % len(COLOURS)]
        path = " ".join(f"{x:.1f},{pad + (height - 2 * pad) * (1 - v / top):.1f}" for x, v in points)
        lines.append(
            f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{path}"/>'
        )
        lines += [
            f'<circle cx="{x:.1f}" cy="{pad + (height - 2 * pad) * (1 - v / top):.1f}" r="2.5" fill="{colour}"/>'
            for x, v in points
        ]
        legend.append(
            f'<text x="{pad + 170 * k}" y="14" font-size="11" fill="{colour}">{escape(name)} '
            f"({low:.3g}-{top:.3g})</text>"
        )
    if not lines:
        return ""
    ticks = "".join(
        f'<text x="{x_of(i) - 3:.1f}" y="{height - 8}" font-size="10">{int(e)}</text>' for i, e in enumerate(epochs)
    )
    return (
        f'<figure class="chart"><svg id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>'
        f"{''.join(legend)}{''.join(lines)}{ticks}</svg><figcaption>{escape(title)}; x: epoch</figcaption></figure>"
    )


def history_svg(history: Any, *, chart_id: str, title: str, names: dict[str, str]) -> str:
    """:func:`curves_svg` of a list of per-epoch dicts (detect's metadata ``history``, train's metrics.json
    ``history``); ``names`` maps the dict keys to draw to their legend names. Empty when nothing to draw."""
    if not isinstance(history, list) or not history or not all(isinstance(h, dict) for h in history):
        return ""
    epochs = [int(h.get("epoch", i)) if _finite(h.get("epoch")) else i for i, h in enumerate(history)]
    series = {label: [_number(h.get(key)) for h in history] for key, label in names.items()}
    return curves_svg(epochs, series, chart_id=chart_id, title=title)


def confusion_svg(given: pd.Series, predicted: pd.Series, *, chart_id: str = "confusion") -> str:
    """A confusion matrix of labels (rows) against predictions (columns) as SVG cells shaded by row share."""
    given, predicted = given.astype(str), predicted.fillna("?").astype(str)
    if not len(given):
        return ""
    seen = pd.concat([given, predicted]).value_counts()  # a class only ever predicted has a column and a row
    common = list(seen.index[:CONFUSION_CLASSES])
    labels = sorted(common) + (["(other)"] if len(seen) > len(common) else [])
    counts = pd.crosstab(given.where(given.isin(common), "(other)"), predicted.where(predicted.isin(common), "(other)"))
    counts = counts.reindex(index=labels, columns=labels, fill_value=0)
    cell, margin = 22, 110
    size = margin + cell * len(labels)
    shares = counts.div(counts.sum(axis=1).where(lambda s: s > 0), axis=0).fillna(0)
    parts = []
    for i, g in enumerate(labels):
        parts.append(
            f'<text x="{margin - 4}" y="{margin + cell * i + 15}" font-size="11" text-anchor="end">{escape(g)}</text>'
        )
        parts.append(
            f'<text transform="translate({margin + cell * i + 15},{margin - 4}) rotate(-60)" font-size="11">'
            f"{escape(g)}</text>"
        )
        for j, p in enumerate(labels):
            n, share = int(counts.at[g, p]), float(shares.at[g, p])
            colour = "46,139,87" if i == j else "208,74,74"
            parts.append(
                f'<rect class="cell" data-given="{escape(g)}" data-predicted="{escape(p)}" data-count="{n}" '
                f'x="{margin + cell * j}" y="{margin + cell * i}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="rgba({colour},{0.08 + 0.92 * share:.2f})">'
                f"<title>{escape(g)} &rarr; {escape(p)}: {n}</title></rect>"
            )
    accuracy = float((given == predicted).mean())
    return (
        f'<figure class="chart"><svg id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{size + 80}" '
        f'height="{size}" viewBox="0 0 {size + 80} {size}" role="img">{"".join(parts)}</svg>'
        f"<figcaption>rows: label, columns: prediction; shade: share of the row; accuracy {100 * accuracy:.1f}% on "
        f"{len(given)} labelled images</figcaption></figure>"
    )


def _scale(n: int, span: float, start: float):
    step = span / max(n - 1, 1)
    return lambda i: start + step * i


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None
