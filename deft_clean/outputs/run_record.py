"""What a detect run did with its prompts, read back from a results file: :func:`prompt_record`.

The metadata's ``prompts`` entry is ``{"outcome": "learned" | "fallback" | "quick", "reason": str, "epochs": int,
"adaptation": str}``. Files written before detect recorded it are read from what they do record: ``history``
(per-epoch records whose last ``stop`` says why training ended), ``text_evidence`` ("learned prompts" or
"zero-shot"), ``options`` (``quick``, ``vpt_tokens``, ``vpt_depth``) and ``warnings`` (the fallback's line).
Every view (summary, ``report``, the HTML page, the notebook view) shows :func:`prompt_line` of it.
"""

from __future__ import annotations

from typing import Any

OUTCOMES = ("learned", "fallback", "quick")
STOPS = {
    "still": "the clean set stopped changing",
    "collapse": "the prompts collapsed",
    "behind": "the learned prompts trailed zero-shot on the image evidence",
}


def prompt_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """``{"outcome", "reason", "epochs", "adaptation"}`` of a detect result (see the module docstring)."""
    recorded = metadata.get("prompts")
    if isinstance(recorded, dict) and recorded.get("outcome") in OUTCOMES:
        return {
            "outcome": str(recorded["outcome"]),
            "reason": str(recorded.get("reason") or ""),
            "epochs": int(recorded.get("epochs") or 0),
            "adaptation": str(recorded.get("adaptation") or _adaptation(metadata, str(recorded["outcome"]))),
        }
    options = metadata.get("options") if isinstance(metadata.get("options"), dict) else {}
    history = [h for h in metadata.get("history") or [] if isinstance(h, dict)]
    epochs = max((int(h.get("epoch") or 0) for h in history), default=0)
    if options.get("quick"):
        outcome, reason = "quick", "--quick: zero-shot prompts, no prompt training"
    elif str(metadata.get("text_evidence") or "") == "learned prompts":
        outcome, reason = "learned", ""
    else:
        outcome, reason = "fallback", _fallback_reason(metadata, history)
    return {"outcome": outcome, "reason": reason, "epochs": epochs, "adaptation": _adaptation(metadata, outcome)}


def _fallback_reason(metadata: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """Why learned prompts were dropped: the run's own warning, else the last epoch's stop."""
    for line in metadata.get("warnings") or []:
        text = str(line)
        if "learned prompts" in text and "zero-shot" in text:
            return text
    stop = str(history[-1].get("stop") or "") if history else ""
    if stop in STOPS:
        return f"{STOPS[stop]} in epoch {history[-1].get('epoch')}; zero-shot prompts used instead"
    return "the learned prompts were not used; zero-shot prompts used instead"


def _adaptation(metadata: dict[str, Any], outcome: str) -> str:
    """The image-side adaptation the flags rest on: none unless learned prompts were used."""
    options = metadata.get("options") if isinstance(metadata.get("options"), dict) else {}
    tokens = int(options.get("vpt_tokens") or 0)
    if outcome != "learned" or tokens <= 0:
        return "none"
    depth = options.get("vpt_depth")
    return f"vpt {tokens} tokens, {'every layer' if depth is None else f'{int(depth)} layers'}"


def prompt_line(metadata: dict[str, Any]) -> str:
    """One line: "prompts: learned (7 epochs; stopped: the clean set stopped changing; adaptation vpt ...)"."""
    record = prompt_record(metadata)
    epochs = record["epochs"]
    if record["outcome"] == "quick":
        return "prompts: zero-shot (--quick; no prompt training)"
    if record["outcome"] == "fallback":
        trained = f" after {epochs} epoch{'s' * (epochs != 1)}" if epochs else ""
        return f"prompts: zero-shot fallback{trained}: {record['reason']}"
    stop = _last_stop(metadata)
    ended = f"; stopped early: {STOPS[stop]}" if stop in STOPS else ""
    return f"prompts: learned ({epochs} epoch{'s' * (epochs != 1)}{ended}; adaptation: {record['adaptation']})"


def _last_stop(metadata: dict[str, Any]) -> str:
    history = [h for h in metadata.get("history") or [] if isinstance(h, dict)]
    return str(history[-1].get("stop") or "") if history else ""


def learned(metadata: dict[str, Any]) -> bool:
    """The flags rest on learned prompts (their training curves mean something)."""
    return prompt_record(metadata)["outcome"] == "learned"
