"""A detect result in a notebook: DataFrames of what was flagged, and an HTML view for Jupyter.

:class:`~deft_clean.detecting.detect.DetectResult` exposes these as ``flagged()`` and ``_repr_html_()``
(its ``noise_rates()`` and ``confusions()`` are :mod:`deft_clean.outputs.summary`'s tables). They read only
the result's frame and metadata, so they work the same on a result returned by ``detect()`` and on one built
from a saved Parquet.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..inputs.readers.recorded import row_opener
from .results import flagged_rows, usable_rows
from .run_record import prompt_line
from .summary import class_table
from .verdict import CAVEATS, CLASS_RATE, RELIABLE, verdict

if TYPE_CHECKING:
    from PIL import Image

FLAGGED_COLUMNS = ["path", "label", "predicted_label", "p_clean", "p_predicted", "flag_reason"]
THUMBNAILS = 16  # flagged samples shown in the HTML view
THUMB_PX = 96  # shown at this size whatever the image's own (a 28 px digit is scaled up, not shown at 28 px)


def _flag_mask(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(flagged_rows(frame), index=frame.index)


def flagged(frame: pd.DataFrame) -> pd.DataFrame:
    """Flagged usable rows, most suspicious (lowest ``p_clean``) first; the index is the Parquet row."""
    rows = frame.loc[_flag_mask(frame), [c for c in FLAGGED_COLUMNS if c in frame.columns]]
    return rows.sort_values("p_clean", ascending=True, kind="stable", na_position="last")


def to_html(frame: pd.DataFrame, metadata: dict[str, Any], *, thumbnails: int = THUMBNAILS) -> str:
    """A compact HTML summary: totals, the per-class table and the most suspicious flagged samples."""
    esc = html.escape
    classes = list(metadata.get("classes", []))
    usable = int(usable_rows(frame).sum())
    worst = flagged(frame)
    n_flagged = len(worst)
    share = f"{100 * n_flagged / usable:.1f}%" if usable else "n/a"
    model = f"{metadata.get('model', '?')} ({metadata.get('pretrained', '?')})"
    said = verdict(metadata, frame)
    colours = {RELIABLE: ("#e8f5e9", "#2e7d32"), CAVEATS: ("#fff8e1", "#f9a825")}
    background, border = ("#fdecea", "#b71c1c") if said.banner else colours.get(said.state, ("#fff8e1", "#f9a825"))
    title = "Evidence warning. " if said.banner else ""
    advice = f"<br>What to do: {esc(said.what_to_do)}" if said.what_to_do else ""
    banner = (
        f'<p class="deft-clean-verdict" style="background:{background};border:2px solid {border};padding:6px">'
        f"<b>{title}Verdict: {esc(said.state)}.</b> {esc(said.sentence.split(': ', 1)[-1])}{advice}</p>"
        f"<p>{esc(prompt_line(metadata))}</p>"
    )
    parts = [
        '<div class="deft-clean-result">',
        banner,
        f"<p><b>deft-clean detect</b>: {len(frame)} samples, <b>{n_flagged}</b> flagged ({share} of usable), "
        f"{len(frame) - usable} unusable &middot; model {esc(model)} &middot; "
        f"selection {esc(str(metadata.get('selection', {}).get('rule', '?')))}</p>",
        f'<table title="{esc(CLASS_RATE)}"><thead><tr><th>class</th><th>samples</th><th>flagged</th>'
        "<th>flagged %</th></tr></thead><tbody>",
    ]
    for name, row in class_table(frame, classes).iterrows():
        rate = "" if pd.isna(row["noise_rate"]) else f"{100 * row['noise_rate']:.1f}%"
        parts.append(
            f"<tr><td>{esc(str(name))}</td><td>{int(row['samples'])}</td><td>{int(row['flagged'])}</td>"
            f"<td>{rate}</td></tr>"
        )
    parts.append(f"</tbody></table><p><small>{esc(CLASS_RATE[0].upper() + CLASS_RATE[1:])}.</small></p>")
    if n_flagged:
        opener = row_opener(metadata, _image_root(metadata, frame))  # a file below the root, a HF row, a shard member
        parts.append(f"<p>most suspicious of the {n_flagged} flagged samples (lowest p_clean first):</p><div>")
        for _, row in worst.head(thumbnails).iterrows():
            path = str(row["path"])
            image = None if opener is None else _thumbnail(lambda s, p=path: opener(p, s))
            img = (
                f'<img src="data:image/png;base64,{image}" alt="{esc(row["path"])}" '
                f'style="display:block;width:{THUMB_PX}px;height:{THUMB_PX}px;object-fit:contain;'
                'image-rendering:pixelated;background:#eee">'
                if image
                else f'<div style="width:{THUMB_PX}px;height:{THUMB_PX}px;background:#eee"></div>'
            )
            p_clean = "" if pd.isna(row["p_clean"]) else f"{float(row['p_clean']):.2f}"
            parts.append(
                f'<figure style="display:inline-block;margin:4px;width:{THUMB_PX + 24}px;font-size:small" '
                f'title="{esc(str(row.get("flag_reason") or ""))}">{img}<figcaption>{esc(str(row["label"]))} '
                f"&rarr; {esc(str(row['predicted_label']))}<br>p_clean {p_clean}<br>"
                f"<code>{esc(str(row['path']))}</code></figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _image_root(metadata: dict[str, Any], frame: pd.DataFrame) -> Path | None:
    from ..inputs.listing import DatasetSpec
    from ..inputs.readers.recorded import checked_root
    from ..run.errors import DeftCleanError

    if DatasetSpec.of(metadata).packed:
        return None  # rows are samples: recorded_opener opens them
    try:
        return checked_root(metadata, frame["path"].astype(str).tolist())
    except DeftCleanError:  # the dataset moved: show the tables without thumbnails
        return None


def _thumbnail(open_image: Callable[[int], Image.Image]) -> str | None:
    """A small PNG of ``open_image(draft_size)`` as base64, or None when it cannot be read (or leaves its root)."""
    try:
        image = open_image(2 * THUMB_PX)
        image.thumbnail((THUMB_PX, THUMB_PX))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except Exception:  # a preview must never break the notebook cell
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")
