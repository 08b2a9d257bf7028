"""The review section of the HTML report: every flagged sample as data, cards rendered a page at a time.

Decisions (keep / drop / relabel) are made in the page, with no server: they live in the browser's
localStorage under a key of this detect run (reload-safe) and leave as a downloaded CSV
``path,decision,label`` that ``export --decisions`` and ``train --decisions`` read
(:mod:`deft_clean.outputs.review_decisions`).

All flagged rows travel as one JSON block (``<script type="application/json">``, never executed), so
100k flagged rows cost one parse and a page of 100 cards at a time, not 100k DOM nodes. Every flagged row
gets a thumbnail (up to ``MAX_THUMBNAILS``, lowest p_clean first): the ``top`` most suspicious at
``THUMBNAIL_PX``, the rest smaller. They travel in a second JSON block that the script parses when the
first page needs it, and an image is only decoded when its card is on the page shown. Images are opened
through :func:`deft_clean.inputs.readers.recorded.row_opener`, never from a path taken as it stands.
A row costs about 150-250 bytes without its thumbnail, a thumbnail 2-8 KB more. The script builds every
element with textContent, so a label or path is never parsed as HTML, and keeps decisions in a ``Map``
(a path named ``constructor`` or ``__proto__`` is an ordinary key).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..inputs.readers.recorded import Opener
from ..run.safety import printable
from .results import flagged_rows

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

THUMBNAIL_PX = 160  # longest side of the `top` most suspicious rows' thumbnails (enlarged on click)
SMALL_PX = 112  # longest side of the other flagged rows' thumbnails
MAX_THUMBNAILS = 5_000  # default: flagged rows with a thumbnail, lowest p_clean first (3-8 KB, 4-20 ms each)
PAGE_SIZE = 100  # cards per page
GIVE_UP = 100  # when the first this many images all fail, stop trying (placeholders for the rest)


def review_data(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    *,
    top: int,
    opener: Opener | None,
    thumbnails: int = MAX_THUMBNAILS,
) -> dict[str, Any]:
    """The JSON the page script reads: classes, reason kinds, flagged rows (lowest p_clean first), thumbnails.

    A row is ``[path, given index, suggested index (-1 unknown), p_clean, p_predicted, reason, reason kind
    index, thumbnail index (-1 none), image evidence, text evidence]`` (the last two null when not recorded).
    The first ``thumbnails`` rows get a thumbnail from ``opener`` (None: placeholders), the first ``top``
    of them at full size.
    """
    flagged = frame[flagged_rows(frame)].sort_values("p_clean", kind="stable")
    for column in ("flag_reason", "visual_score", "text_score"):  # a frame built by hand, or an older file
        if column not in flagged.columns:
            flagged = flagged.assign(**{column: None})
    classes = list(metadata.get("classes") or [])
    classes += sorted(set(flagged["label"].astype(str)) - set(classes))
    classes += sorted(set(flagged["predicted_label"].dropna().astype(str)) - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    kinds: dict[str, int] = {}
    thumbs: list[str] = []
    rows, failures = [], 0
    for n, row in enumerate(flagged.itertuples(index=False)):
        if failures == n == GIVE_UP:  # not one image found: the dataset is not where the results say
            opener = None
        reason = None if pd.isna(row.flag_reason) else printable(row.flag_reason)  # shown, never a key
        kind = kinds.setdefault(reason_kind(reason), len(kinds))
        thumb = -1
        if n < thumbnails and opener is not None:
            uri = thumbnail_of(lambda s, p=str(row.path), o=opener: o(p, s), px=THUMBNAIL_PX if n < top else SMALL_PX)
            failures += uri is None
            if uri is not None:
                thumb = len(thumbs)
                thumbs.append(uri)
        suggested = -1 if pd.isna(row.predicted_label) else index[str(row.predicted_label)]
        rows.append(
            [str(row.path), index[str(row.label)], suggested, round(float(row.p_clean), 4), _round(row.p_predicted)]
            + [reason, kind, thumb, _round(row.visual_score), _round(row.text_score)]
        )
    if failures:
        tried = min(thumbnails, len(rows)) if opener is not None else failures  # None: gave up after GIVE_UP
        log.warning("%d of %d gallery images could not be read; shown as placeholders", failures, tried)
    key = f"{metadata.get('dataset', '?')}|{metadata.get('created', '?')}"
    return {"key": key, "classes": classes, "kinds": list(kinds), "rows": rows, "thumbs": thumbs, "page": PAGE_SIZE}


def _round(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 3)


def reason_kind(reason: str | None) -> str:
    """A reason's wording without its class names and numbers, to filter by: "looks like", ..."""
    if reason is None:
        return "(no reason recorded)"
    head = re.split(r"['\"(:;0-9]", reason, maxsplit=1)[0].strip()
    return head or "other"


def embed_json(value: Any) -> str:
    """JSON safe inside a <script> element: no "<", ">" or "&" can end it or open a tag."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def review_html(data: dict[str, Any], flagged_per_class: pd.DataFrame) -> str:
    """The review section: the cards (first on the page), controls, progress, the enlarge overlay and the data."""
    n = len(data["rows"])
    cards: dict[str, int] = {}  # class -> cards the class filter shows for it (given or suggested)
    for r in data["rows"]:
        for c in {data["classes"][r[1]], *([data["classes"][r[2]]] if r[2] >= 0 else [])}:
            cards[c] = cards.get(c, 0) + 1
    order = [str(c) for c in flagged_per_class["class"] if str(c) in cards]  # most flagged first, then the rest
    order += sorted(set(cards) - set(order))
    options = "".join(
        f'<option value="{escape(c)}">{escape(printable(c))} ({cards[c]} card{"s" * (cards[c] != 1)})</option>'
        for c in order
    )
    kinds = "".join(f'<option value="{i}">{escape(printable(k))}</option>' for i, k in enumerate(data["kinds"]))
    payload = {k: v for k, v in data.items() if k != "thumbs"}
    return (
        '<section id="review"><h2>Most suspicious first</h2>'
        f'<p class="lead">{n} flagged samples, lowest p_clean first: the given label, the suggested one and why. '
        "Click a class in the per-class table or a heatmap cell above to show only its cards. Keys: <kbd>k</kbd> keep, "
        "<kbd>d</kbd> drop, <kbd>a</kbd> accept the suggestion, <kbd>r</kbd> relabel, <kbd>u</kbd> undo, "
        "<kbd>&larr;</kbd>/<kbd>&rarr;</kbd> move, <kbd>e</kbd> enlarge; "
        "<code>deft-clean export --decisions decisions.csv</code> applies the downloaded decisions.</p>"
        '<div class="controls">'
        '<label>Class (given or suggested) <select id="class-filter"><option value="">all</option>'
        f"{options}</select></label>"
        '<span id="pair-chip" hidden>given <b id="pair-given"></b> &rarr; suggested <b id="pair-suggested"></b> '
        '<button id="pair-clear" type="button">&times;</button></span>'
        f'<label>Reason <select id="reason-filter"><option value="">all</option>{kinds}</select></label>'
        '<label>Decision <select id="decision-filter"><option value="">all</option>'
        '<option value="none">undecided</option><option value="keep">keep</option><option value="drop">drop'
        '</option><option value="relabel">relabel</option></select></label>'
        '<label>Search <input id="search" type="search" placeholder="path or reason"></label>'
        '<label>Sort <select id="sort"><option value="p">p_clean, lowest first</option>'
        '<option value="-p">p_clean, highest first</option><option value="class">given class</option>'
        '<option value="reason">reason</option><option value="-pp">p_predicted, highest first</option>'
        "</select></label></div>"
        '<p class="progress"><span id="n-reviewed">0</span> of <span id="n-review">'
        f'{n}</span> reviewed (<span id="n-keep">0</span> keep, <span id="n-drop">0</span> drop, '
        '<span id="n-relabel">0</span> relabel) <button id="download" type="button">Download decisions</button> '
        '<button id="clear-all" type="button">Clear all decisions</button> &middot; '
        f'showing <span id="n-shown">{n}</span> of <span id="n-gallery">{n}</span>; page '
        '<span id="page-no">1</span> of <span id="page-count">1</span> '
        '<button id="prev" type="button">&larr; previous</button> <button id="next" type="button">next &rarr;'
        '</button></p><div id="cards"></div>'
        '<div class="controls">For the rows shown by the filters: <select id="bulk-action">'
        '<option value="accept">accept the suggestion</option><option value="keep">keep</option>'
        '<option value="drop">drop</option><option value="clear">clear the decision</option></select>'
        '<label>where p_predicted &ge; <input id="bulk-min" type="number" min="0" max="1" step="0.05" value="0.9">'
        '</label><button id="bulk-apply" type="button">apply</button></div></section>'
        '<div id="lightbox" hidden><figure><img alt=""><figcaption></figcaption></figure></div>'
        f'<script type="application/json" id="review-data">{embed_json(payload)}</script>'
        f'<script type="application/json" id="review-thumbs">{embed_json(data["thumbs"])}</script>'
    )


def thumbnail(file: Path, root: Path) -> str | None:
    """A small JPEG data URI of an image, or None when it cannot be read or its real path leaves ``root``."""
    from ..inputs.decode import load_image

    return thumbnail_of(lambda size: load_image(file, draft_size=size, root=root))


def thumbnail_of(open_image: Callable[[int], Image.Image], *, px: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data URI of ``open_image(draft_size)`` at most ``px`` a side (a file, a Hugging Face row, a shard
    member), or None when it cannot be read."""
    try:
        image = open_image(2 * px)
        image.thumbnail((px, px))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=75 if px >= THUMBNAIL_PX else 65)
    except Exception:  # a missing or corrupt file is a placeholder, never a failed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CSS = """
.controls{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0}
.progress{font-weight:600}
#cards{display:flex;flex-wrap:wrap;gap:10px}
.lead{margin:4px 0}#pair-chip{background:#fdecea;padding:2px 6px;border-radius:4px}
.card{margin:0;width:200px;border:2px solid #ddd;padding:6px;font-size:12px;word-break:break-all}
.card:focus{outline:3px solid #4a7bd0}
.card img,.card .ph{display:block;width:188px;height:188px;object-fit:contain;margin:0 auto 4px;background:#eee;
 cursor:zoom-in;image-rendering:auto}
.card .ph{line-height:188px;text-align:center;color:#999;cursor:default}
.card .pair{font-size:14px;font-weight:600}.card .path{color:#666}
.card .given{color:#b00}.card .suggested{color:#070}
.card .reason{color:#555;font-style:italic}.card .reason,.card .evidence{word-break:normal;overflow-wrap:anywhere}
#classes tr[data-class],#pairs tr[data-given],#heatmap td[data-given]{cursor:pointer}
#classes tr[data-class]:hover,#pairs tr[data-given]:hover{background:#f3f6fc}
.card .actions{display:flex;flex-wrap:wrap;gap:3px;margin-top:4px}.card .actions select{max-width:100%}
.card button.on{background:#333;color:#fff}
.card[data-decision=keep]{border-color:#4a7bd0}.card[data-decision=drop]{border-color:#d04a4a;opacity:.7}
.card[data-decision=relabel]{border-color:#070}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.8);display:flex;align-items:center;justify-content:center}
#lightbox[hidden]{display:none}#lightbox img{width:min(80vw,80vh);height:auto;image-rendering:auto;background:#fff}
#lightbox figcaption{color:#fff;max-width:80vw;word-break:break-all}
"""

SCRIPT = r"""
(function () {
  var data = JSON.parse(document.getElementById('review-data').textContent);
  var rows = data.rows, classes = data.classes, pageSize = data.page;
  var storeKey = 'deft-clean-review:' + data.key;
  // path -> [decision, label]. A Map, not an object: a path named "constructor", "toString" or "__proto__"
  // would otherwise find Object.prototype's members and read as already reviewed.
  var decisions = new Map();
  try {
    var stored = JSON.parse(localStorage.getItem(storeKey) || '{}') || {};
    Object.keys(stored).forEach(function (k) { if (Array.isArray(stored[k])) { decisions.set(k, stored[k]); } });
  } catch (e) { decisions = new Map(); }
  var thumbs = null;  // parsed when a card first needs one
  function thumb(i) {
    if (thumbs === null) { thumbs = JSON.parse(document.getElementById('review-thumbs').textContent); }
    return thumbs[i];
  }
  var pair = null;  // [given, suggested] from a heatmap cell or a pairs-table row
  var $ = function (id) { return document.getElementById(id); };
  var filters = { cls: $('class-filter'), reason: $('reason-filter'), decision: $('decision-filter'),
                  search: $('search'), sort: $('sort') };
  var view = [], page = 0, focus = 0;

  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(Object.fromEntries(decisions))); }
    catch (e) { /* private mode: memory only */ }
  }
  function decisionOf(r) { var d = decisions.get(r[0]); return d ? d[0] : 'none'; }
  function decide(r, word, label) {
    if (word === null) { decisions.delete(r[0]); }
    else if (word === 'keep') { decisions.set(r[0], ['keep', classes[r[1]]]); }
    else if (word === 'drop') { decisions.set(r[0], ['drop', '']); }
    else if (label === classes[r[1]]) { decisions.set(r[0], ['keep', label]); }
    else { decisions.set(r[0], ['relabel', label]); }
  }
  function progress() {
    var n = { keep: 0, drop: 0, relabel: 0 }, total = 0;
    rows.forEach(function (r) { var d = decisions.get(r[0]); if (d) { n[d[0]] += 1; total += 1; } });
    $('n-reviewed').textContent = String(total);
    $('n-keep').textContent = String(n.keep);
    $('n-drop').textContent = String(n.drop);
    $('n-relabel').textContent = String(n.relabel);
  }
  function matches(r) {
    var c = filters.cls.value, k = filters.reason.value, d = filters.decision.value;
    var q = filters.search.value.toLowerCase();
    if (c !== '' && classes[r[1]] !== c && classes[r[2]] !== c) { return false; }
    if (pair && (classes[r[1]] !== pair[0] || (r[2] >= 0 ? classes[r[2]] : '?') !== pair[1])) { return false; }
    if (k !== '' && String(r[6]) !== k) { return false; }
    if (d !== '' && decisionOf(r) !== d) { return false; }
    if (q && r[0].toLowerCase().indexOf(q) < 0 && (r[5] || '').toLowerCase().indexOf(q) < 0) { return false; }
    return true;
  }
  function compare(a, b) {
    var s = filters.sort.value;
    if (s === '-p') { return b[3] - a[3]; }
    if (s === '-pp') { return (b[4] || 0) - (a[4] || 0); }
    if (s === 'class') { return classes[a[1]] < classes[b[1]] ? -1 : classes[a[1]] > classes[b[1]] ? 1 : a[3] - b[3]; }
    if (s === 'reason') { return a[6] - b[6] || a[3] - b[3]; }
    return a[3] - b[3];
  }
  function refilter() {
    view = rows.filter(matches).sort(compare);
    page = Math.min(page, Math.max(0, Math.ceil(view.length / pageSize) - 1));
    render();
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function button(cls, text, key) {
    var b = el('button', cls, text);
    b.type = 'button'; b.dataset.action = key;
    return b;
  }
  function fillClasses(select) {
    if (select.options.length > 1) { return; }
    classes.forEach(function (c) { var o = el('option', '', c); o.value = c; select.appendChild(o); });
  }
  function card(r, i) {
    var fig = el('figure', 'card');
    var given = classes[r[1]], suggested = r[2] >= 0 ? classes[r[2]] : '?';
    fig.tabIndex = 0;
    fig.dataset.i = String(i); fig.dataset.path = r[0];
    fig.dataset.given = given; fig.dataset.suggested = suggested; fig.dataset.pClean = String(r[3]);
    fig.dataset.decision = decisionOf(r);
    if (r[7] >= 0) {
      var img = el('img'); img.alt = ''; img.decoding = 'async'; img.src = thumb(r[7]);
      img.dataset.action = 'enlarge';
      fig.appendChild(img);
    } else { fig.appendChild(el('div', 'ph', 'no image')); }
    var cap = el('figcaption');
    var head = el('div', 'pair');
    var pp = r[4] === null ? '' : ' (' + r[4].toFixed(2) + ')';
    head.appendChild(el('span', 'given', given));
    head.appendChild(document.createTextNode(' \u2192 '));
    head.appendChild(el('span', 'suggested', suggested + pp));
    cap.appendChild(head);
    var evidence = 'p_clean ' + r[3].toFixed(3);
    var given_p = [];  // the given label's probability under each kind of evidence
    if (r[8] !== null && r[8] !== undefined) { given_p.push('image ' + r[8].toFixed(2)); }
    if (r[9] !== null && r[9] !== undefined) { given_p.push('text ' + r[9].toFixed(2)); }
    if (given_p.length) { evidence += '; given label: ' + given_p.join(', '); }
    cap.appendChild(el('div', 'evidence', evidence));
    cap.appendChild(el('div', 'path', r[0]));
    if (r[5]) { cap.appendChild(el('div', 'reason', 'why: ' + r[5])); }
    var actions = el('div', 'actions');
    var d = decisions.get(r[0]);
    var keep = button('keep', 'keep', 'keep'), drop = button('drop', 'drop', 'drop');
    actions.appendChild(keep); actions.appendChild(drop);
    if (r[2] >= 0 && r[2] !== r[1]) { actions.appendChild(button('accept', '\u2192 ' + suggested, 'accept')); }
    var select = el('select', 'relabel');
    var first = el('option', '', 'relabel to\u2026'); first.value = ''; select.appendChild(first);
    select.addEventListener('mousedown', function () { fillClasses(select); });
    select.addEventListener('focus', function () { fillClasses(select); });
    actions.appendChild(select);
    if (d) {
      if (d[0] === 'keep') { keep.classList.add('on'); }
      if (d[0] === 'drop') { drop.classList.add('on'); }
      if (d[0] === 'relabel') {
        var acc = actions.querySelector('.accept');
        if (acc && d[1] === suggested) { acc.classList.add('on'); }
        else { fillClasses(select); select.value = d[1]; }
      }
    }
    cap.appendChild(actions);
    cap.appendChild(el('div', 'state', d ? (d[0] === 'relabel' ? 'relabel \u2192 ' + d[1] : d[0]) : ''));
    fig.appendChild(cap);
    return fig;
  }
  function render() {
    var box = $('cards'), pages = Math.max(1, Math.ceil(view.length / pageSize));
    var start = page * pageSize, frag = document.createDocumentFragment();
    view.slice(start, start + pageSize).forEach(function (r, j) { frag.appendChild(card(r, start + j)); });
    box.replaceChildren(frag);
    $('n-shown').textContent = String(view.length);
    $('page-no').textContent = String(page + 1);
    $('page-count').textContent = String(pages);
    $('prev').disabled = page === 0;
    $('next').disabled = page >= pages - 1;
    progress();
  }
  function rowOf(fig) { return view[Number(fig.dataset.i)]; }
  function focusCard(i) {
    if (!view.length) { return; }
    i = Math.max(0, Math.min(view.length - 1, i));
    if (Math.floor(i / pageSize) !== page) { page = Math.floor(i / pageSize); render(); }
    var fig = $('cards').querySelector('[data-i="' + i + '"]');
    if (fig) { focus = i; fig.focus(); }
  }
  function act(fig, action, label) {
    var r = rowOf(fig), d = decisions.get(r[0]);
    if (action === 'enlarge') { enlarge(fig); return; }
    if (action === 'undo') { decide(r, null); }
    else if (action === 'accept') {
      if (r[2] < 0) { return; }
      var same = d && d[0] === 'relabel' && d[1] === classes[r[2]];
      decide(r, same ? null : 'relabel', classes[r[2]]);
    } else if (action === 'relabel') { decide(r, label ? 'relabel' : null, label); }
    else if (d && d[0] === action) { decide(r, null); }
    else { decide(r, action); }
    save();
    var i = Number(fig.dataset.i);
    var fresh = card(r, i);
    fig.replaceWith(fresh);
    progress();
    if (action !== 'relabel') { focusCard(i + (decisions.has(r[0]) ? 1 : 0)); } else { fresh.focus(); }
  }
  function enlarge(fig) {
    var r = rowOf(fig), box = $('lightbox');
    if (r[7] < 0) { return; }
    box.querySelector('img').src = thumb(r[7]);
    box.querySelector('figcaption').textContent = r[0] + ' \u2014 given ' + classes[r[1]] + (r[5] ? '; ' + r[5] : '');
    box.hidden = false;
  }
  $('lightbox').addEventListener('click', function () { $('lightbox').hidden = true; });
  $('cards').addEventListener('click', function (ev) {
    var t = ev.target, fig = t.closest('.card');
    if (!fig) { return; }
    focus = Number(fig.dataset.i);
    if (t.dataset.action) { act(fig, t.dataset.action); }
  });
  $('cards').addEventListener('change', function (ev) {
    if (ev.target.classList.contains('relabel')) { act(ev.target.closest('.card'), 'relabel', ev.target.value); }
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    if (ev.key === 'Escape') { $('lightbox').hidden = true; return; }
    var tag = ev.target.tagName;
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA') { return; }
    if (tag === 'BUTTON' && (ev.key === 'Enter' || ev.key === ' ')) { return; }
    var fig = document.activeElement && document.activeElement.closest ? document.activeElement.closest('.card') : null;
    if (ev.key === 'ArrowRight' || ev.key === 'j') { focusCard(fig ? Number(fig.dataset.i) + 1 : focus); }
    else if (ev.key === 'ArrowLeft') { focusCard(fig ? Number(fig.dataset.i) - 1 : focus); }
    else if (!fig) { return; }
    else if (ev.key === 'k') { act(fig, 'keep'); }
    else if (ev.key === 'd') { act(fig, 'drop'); }
    else if (ev.key === 'a') { act(fig, 'accept'); }
    else if (ev.key === 'u') { act(fig, 'undo'); }
    else if (ev.key === 'e' || ev.key === 'Enter') { enlarge(fig); }
    else if (ev.key === 'r') { var s = fig.querySelector('select.relabel'); fillClasses(s); s.focus(); }
    else { return; }
    ev.preventDefault();
  });
  function csvCell(v) { v = String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
  $('download').addEventListener('click', function () {
    var lines = ['path,decision,label'];
    rows.forEach(function (r) {
      var d = decisions.get(r[0]);
      if (d) { lines.push([r[0], d[0], d[1]].map(csvCell).join(',')); }
    });
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], { type: 'text/csv' }));
    a.download = 'decisions.csv';
    document.body.appendChild(a); a.click(); a.remove();
  });
  $('clear-all').addEventListener('click', function () {
    if (window.confirm('Clear every decision made in this report?')) { decisions = new Map(); save(); refilter(); }
  });
  $('bulk-apply').addEventListener('click', function () {
    var action = $('bulk-action').value, min = Number($('bulk-min').value) || 0;
    view.forEach(function (r) {
      if ((r[4] || 0) < min) { return; }
      if (action === 'clear') { decide(r, null); }
      else if (action === 'accept') { if (r[2] >= 0) { decide(r, 'relabel', classes[r[2]]); } }
      else { decide(r, action); }
    });
    save(); refilter();
  });
  $('prev').addEventListener('click', function () { page -= 1; render(); });
  $('next').addEventListener('click', function () { page += 1; render(); });
  ['cls', 'reason', 'decision', 'sort'].forEach(function (k) {
    filters[k].addEventListener('change', function () { page = 0; refilter(); });
  });
  filters.search.addEventListener('input', function () { page = 0; refilter(); });
  filters.cls.addEventListener('change', function () {
    var v = filters.cls.value;
    history.replaceState(null, '', v ? '#class=' + encodeURIComponent(v) : '#');
  });
  function setClass(v) {
    filters.cls.value = v;
    if (v && filters.cls.value !== v) {  // a class with no flagged rows: an option that shows none
      var o = el('option', '', v); o.value = v; filters.cls.appendChild(o); filters.cls.value = v;
    }
    history.replaceState(null, '', v ? '#class=' + encodeURIComponent(v) : '#');
  }
  function setPair(p) {
    pair = p;
    $('pair-chip').hidden = !p;
    if (p) { $('pair-given').textContent = p[0]; $('pair-suggested').textContent = p[1]; }
  }
  $('pair-clear').addEventListener('click', function () { setPair(null); page = 0; refilter(); });
  // Clicking a class row, a pairs-table row or a heatmap cell shows only its cards.
  document.addEventListener('click', function (ev) {
    var t = ev.target.closest ? ev.target : ev.target.parentElement;
    if (!t) { return; }
    var cell = t.closest('#heatmap td[data-given], #pairs tr[data-given]');
    var row = t.closest('#classes tr[data-class]');
    if (cell && cell.dataset.given !== '(other)' && cell.dataset.suggested !== '(other)') {
      setClass(''); setPair([cell.dataset.given, cell.dataset.suggested]);
    } else if (row) { setPair(null); setClass(row.dataset.class); }
    else { return; }
    page = 0; refilter();
    $('review').scrollIntoView();
  });
  if (location.hash.indexOf('#class=') === 0) {
    filters.cls.value = decodeURIComponent(location.hash.slice(7));
    if (filters.cls.selectedIndex < 0) { filters.cls.value = ''; }
  }
  refilter();
  document.documentElement.dataset.ready = '1';
})();
"""
