"""The one verdict on a detect result: can its flags be trusted? Every view (the terminal summary, ``report``,
the HTML page, the notebook view, the result's repr) shows what :func:`verdict` returns, and detect records it
in the metadata as ``verdict``, so no two of them can disagree.

Three states, from the evidence check's metadata (:mod:`deft_clean.detecting.evidence_check`) and the frame:

- ``reliable``: the evidence supports the flags and none was withheld or cleared;
- ``reliable with caveats``: the flags that stand are supported, but some were withheld (classes or pairs the
  model cannot tell apart) or cleared as hard cases, or the clean set had not settled; the caveat names the
  classes concerned;
- ``not reliable``: the evidence cannot support flags at all; every flag is withheld.

A red banner (``banner``) only when flags are withheld or the flags are not to be trusted. A results file
written before the check existed reads ``not checked``.

The one per-class rate every view shows is :data:`CLASS_RATE`: the share of a class's usable images that stay
flagged (``flagged / usable``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from .results import flagged_rows

RELIABLE, CAVEATS, NOT_RELIABLE, NOT_CHECKED = "reliable", "reliable with caveats", "not reliable", "not checked"
CLASS_RATE = (
    "flagged %: the share of the class's usable images that stay flagged as probably mislabelled (flagged / usable)"
)
MAX_NAMED = 5  # classes named in a caveat; the rest are counted


@dataclass(frozen=True)
class Verdict:
    """What every view says about a result's flags."""

    state: str  # RELIABLE, CAVEATS, NOT_RELIABLE or NOT_CHECKED
    classes: list[str]  # the classes a caveat or a withholding concerns (empty when reliable)
    sentence: str  # the verdict in one sentence, classes named
    banner: bool  # flags were withheld or are not to be trusted: the views show a red banner
    precision: float | None  # expected share of the flags that stand whose label is wrong (None: not estimated)
    precision_range: list[float] | None  # its plausible range [low, high] (None: not estimated)
    flags: int  # rows that stay flagged
    withheld: int  # flags kept because the evidence cannot support them
    cleared: int  # flags returned to the clean set as hard cases between classes
    advice: str = ""  # what to do about it ("" when reliable)

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def what_to_do(self) -> str:
        """The advice, unless the sentence already ends with it."""
        return "" if not self.advice or self.advice in self.sentence else self.advice

    @property
    def headline(self) -> str:
        """``verdict: <state>`` with the expected precision, for one line of a summary."""
        return f"verdict: {self.state}{precision_text(self.precision, self.precision_range, prefix=', ')}"


def precision_text(precision: float | None, interval: Any = None, *, prefix: str = "") -> str:
    """ "expected flag precision 85% (78-90%)", a range alone when the point cannot be pinned, "" when unknown."""
    if precision is None and not interval:
        return ""
    if interval and len(interval) == 2 and interval[0] is not None and interval[1] is not None:
        low, high = 100 * float(interval[0]), 100 * float(interval[1])
        if precision is None or high - low > 30:  # too wide to pin: the range is the statement
            return f"{prefix}expected flag precision {low:.0f}-{high:.0f}%"
        return f"{prefix}expected flag precision {100 * float(precision):.0f}% ({low:.0f}-{high:.0f}%)"
    return f"{prefix}expected flag precision {100 * float(precision):.0f}%"


def verdict(metadata: dict[str, Any], frame: pd.DataFrame | None = None) -> Verdict:
    """The verdict of a result from its metadata (``evidence``) and, when given, its frame (the flags that stand
    and the classes of the cleared and withheld rows). A recorded ``verdict`` entry is not trusted: it is
    recomputed, so an old file and a new one read the same way."""
    evidence = metadata.get("evidence")
    flags = int(flagged_rows(frame).sum()) if frame is not None else 0
    if not isinstance(evidence, dict) or "reliable" not in evidence:
        sentence = "not checked: this results file has no evidence check"
        return Verdict(NOT_CHECKED, [], sentence, False, None, None, flags, 0, 0)
    reliable = bool(evidence.get("reliable"))
    withheld, cleared = int(evidence.get("flags_withheld") or 0), int(evidence.get("flags_cleared") or 0)
    raised = int(evidence.get("flags_raised") or 0)
    if frame is None:
        flags = max(raised - withheld - cleared, 0)
    precision = _number(evidence.get("expected_flag_precision"))
    interval = _interval(evidence.get("flag_precision_interval"))
    advice = str(evidence.get("advice") or "")
    if not reliable:
        sentence = f"not reliable: {evidence_line(evidence)}"
        advice = advice or "try a model that can see these classes (--model/--pretrained)"
        return Verdict(NOT_RELIABLE, [], sentence, True, None, None, flags, withheld, cleared, advice)
    caveats, classes = [], []
    if withheld:
        named = _withheld_classes(evidence, frame)
        classes += named
        caveats.append(f"{withheld} of {raised} flags withheld on {_names(named)} (the model cannot tell them apart)")
    if cleared:
        named = _reason_classes(frame, "cleared")
        classes += [c for c in named if c not in classes]
        caveats.append(
            f"{cleared} of {raised} flags cleared as hard cases between classes"
            + (f" ({_names(named)})" if named else "")
        )
    if not evidence.get("settled", True):
        caveats.append("the clean set was still changing after the last round")
    if not caveats:
        sentence = f"reliable: {_flags_stand(flags)}{precision_text(precision, interval, prefix=', ')}"
        return Verdict(RELIABLE, [], sentence, False, precision, interval, flags, 0, 0)
    sentence = f"reliable with caveats: {_flags_stand(flags)}{precision_text(precision, interval, prefix=', ')}; "
    sentence += "; ".join(caveats)
    if withheld and not advice:
        advice = f"check the names and a few images of {_names(classes)}"
    return Verdict(CAVEATS, classes, sentence, bool(withheld), precision, interval, flags, withheld, cleared, advice)


def evidence_line(evidence: dict[str, Any] | None) -> str | None:
    """The warning for a results file's ``evidence`` metadata (None: reliable, nothing withheld, or no check)."""
    if not isinstance(evidence, dict) or "reliable" not in evidence:
        return None
    reliable, withheld = bool(evidence.get("reliable")), int(evidence.get("flags_withheld") or 0)
    cleared, raised = int(evidence.get("flags_cleared") or 0), int(evidence.get("flags_raised") or 0)
    if reliable and not withheld and evidence.get("settled", True):
        if not cleared:
            return None
        return (
            f"{cleared} of {raised} flags looked like hard cases between classes rather than wrong labels and were "
            f"cleared (flag_reason says so), {raised - cleared} stay flagged: the labels may be cleaner than the "
            "model can tell"
        )
    head = (
        f"image evidence predicts the labels {100 * float(evidence.get('image_accuracy') or 0):.0f}% of the time "
        f"where chance is {100 * float(evidence.get('chance') or 0):.0f}%"
    )
    if evidence.get("expected_flag_precision") is not None:
        head += f", expected flag precision {100 * float(evidence['expected_flag_precision']):.0f}%"
    reasons = [str(r) for r in evidence.get("reasons") or []]
    body = "; ".join(reasons) if reasons else "the clean set had not settled"
    tail = f"{withheld} of {int(evidence.get('flags_raised') or 0)} flags withheld"
    advice = str(evidence.get("advice") or "") or (
        "try a model that can see these classes (--model/--pretrained)"
        if not reliable
        else f"check the names and a few images of {_names(_withheld_classes(evidence, None))}"
    )
    return f"{head}: {body}; {tail}; {advice}"


def _flags_stand(n: int) -> str:
    return "no flag stands" if n == 0 else f"{n} flag{'s' * (n != 1)} stand{'s' * (n == 1)}"


def _interval(value: Any) -> list[float] | None:
    """``[low, high]`` of a results file, or None when it is missing or not two numbers in [0, 1]."""
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        return None
    low, high = float(value[0]), float(value[1])
    return [low, high] if 0.0 <= low <= high <= 1.0 else None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _names(classes: list[str]) -> str:
    if not classes:
        return "some classes"
    more = f" and {len(classes) - MAX_NAMED} more" if len(classes) > MAX_NAMED else ""
    return ", ".join(repr(c) for c in classes[:MAX_NAMED]) + more


def _withheld_classes(evidence: dict[str, Any], frame: pd.DataFrame | None) -> list[str]:
    """The classes withheld flags concern: hidden classes and unseen pairs from the check, else the frame's
    withheld rows' given and suggested labels."""
    named = [
        str(e.get("class"))
        for e in evidence.get("per_class") or []
        if isinstance(e, dict) and not e.get("visible", True)
    ]
    for pair in evidence.get("pairs") or []:
        if isinstance(pair, dict) and not pair.get("seen", True):
            named += [str(c) for c in pair.get("classes") or [] if str(c) not in named]
    if not named and frame is not None and "withheld" in frame.columns:
        rows = frame[frame["withheld"].fillna(False).astype(bool)]
        named = _by_count(rows)
    return named


def _reason_classes(frame: pd.DataFrame | None, prefix: str) -> list[str]:
    """Given and suggested classes of the rows whose flag_reason starts with ``prefix``, most frequent first."""
    if frame is None or "flag_reason" not in frame.columns:
        return []
    reason = frame["flag_reason"].astype("string").fillna("")
    return _by_count(frame[reason.str.startswith(prefix)])


def _by_count(rows: pd.DataFrame) -> list[str]:
    if not len(rows):
        return []
    both = pd.concat([rows["label"].astype(str), rows["predicted_label"].dropna().astype(str)])
    return [str(c) for c in both.value_counts(sort=True).index]
