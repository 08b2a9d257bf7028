"""The one verdict and the prompt record every view shows (issue 40): unit tests on hand-made metadata."""

from __future__ import annotations

import pandas as pd
import pytest

from deft_clean.outputs.notebook import to_html
from deft_clean.outputs.run_record import prompt_line, prompt_record
from deft_clean.outputs.summary import describe, summarize
from deft_clean.outputs.verdict import CAVEATS, NOT_CHECKED, NOT_RELIABLE, RELIABLE, precision_text, verdict


def frame(flag_reasons: list[str | None], withheld: list[bool] | None = None) -> pd.DataFrame:
    n = len(flag_reasons)
    flagged = [r is not None and not r.startswith(("cleared", "withheld")) for r in flag_reasons]
    return pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(n)],
            "label": ["cat" if i % 2 else "dog" for i in range(n)],
            "label_index": [i % 2 for i in range(n)],
            "p_clean": [0.1 if f else 0.9 for f in flagged],
            "is_clean": [not f for f in flagged],
            "predicted_label": ["dog" if i % 2 else "cat" for i in range(n)],
            "p_predicted": [0.8] * n,
            "flag_reason": flag_reasons,
            "withheld": withheld or [False] * n,
            "status": ["ok"] * n,
        }
    )


def evidence(**changes) -> dict:
    base = {
        "reliable": True,
        "image_accuracy": 0.9,
        "chance": 0.5,
        "flags_raised": 2,
        "flags_withheld": 0,
        "flags_cleared": 0,
        "settled": True,
        "expected_flag_precision": 0.85,
        "flag_precision_interval": [0.8, 0.9],
        "reasons": [],
        "per_class": [{"class": "cat", "visible": True}, {"class": "dog", "visible": True}],
        "pairs": [],
    }
    return base | changes


def test_reliable_is_one_plain_sentence_without_banner():
    said = verdict({"evidence": evidence()}, frame(["looks like", "looks like", None, None]))
    assert said.state == RELIABLE and not said.banner and said.flags == 2
    assert said.sentence == "reliable: 2 flags stand, expected flag precision 85% (80-90%)"
    assert summarize(frame(["x", None]), {"evidence": evidence(), "classes": ["dog", "cat"]}).evidence_warning is None


def test_cleared_hard_cases_are_a_caveat_naming_classes_without_a_red_banner():
    reasons = ["looks like", "cleared (a hard case between classes, not a wrong label): x", None, None]
    said = verdict({"evidence": evidence(flags_raised=2, flags_cleared=1)}, frame(reasons))
    assert said.state == CAVEATS and not said.banner
    assert "1 of 2 flags cleared as hard cases" in said.sentence and "'cat'" in said.sentence


def test_withheld_classes_are_named_and_get_the_banner():
    meta = {
        "evidence": evidence(
            flags_raised=3,
            flags_withheld=2,
            per_class=[{"class": "cat", "visible": False}, {"class": "dog", "visible": True}],
            reasons=["the images of 'cat' look like the other classes'"],
        )
    }
    said = verdict(meta, frame(["looks like", "withheld (...)", "withheld (...)", None], [False, True, True, False]))
    assert said.state == CAVEATS and said.banner and said.classes == ["cat"]
    assert "2 of 3 flags withheld on 'cat'" in said.sentence and "'cat'" in said.advice


def test_not_reliable_and_not_checked():
    said = verdict({"evidence": evidence(reliable=False, flags_withheld=2, reasons=["weak"])}, frame([None, None]))
    assert said.state == NOT_RELIABLE and said.banner and said.precision is None
    assert said.sentence.startswith("not reliable: image evidence predicts the labels 90%")
    assert verdict({}, frame([None])).state == NOT_CHECKED


def test_precision_range_replaces_a_point_that_cannot_be_pinned():
    assert precision_text(0.8, [0.75, 0.85]) == "expected flag precision 80% (75-85%)"
    assert precision_text(0.6, [0.3, 0.9]) == "expected flag precision 30-90%"
    assert precision_text(None, None) == ""


@pytest.mark.parametrize(
    ("metadata", "want"),
    [
        ({"options": {"quick": True}, "text_evidence": "zero-shot"}, ("quick", 0, "none")),
        (
            {
                "options": {"vpt_tokens": 4, "vpt_depth": None},
                "text_evidence": "learned prompts",
                "history": [{"epoch": 1, "stop": ""}, {"epoch": 2, "stop": "still"}],
            },
            ("learned", 2, "vpt 4 tokens, every layer"),
        ),
        (
            {
                "options": {"vpt_tokens": 4},
                "text_evidence": "zero-shot",
                "history": [{"epoch": 1, "stop": ""}, {"epoch": 2, "stop": "collapse"}],
                "warnings": ["the learned prompts collapsed in epoch 2 (...); zero-shot prompts used instead"],
            },
            ("fallback", 2, "none"),
        ),
    ],
)
def test_prompt_record_is_derived_from_old_metadata(metadata, want):
    record = prompt_record(metadata)
    assert (record["outcome"], record["epochs"], record["adaptation"]) == want
    assert (record["reason"] == "") == (want[0] == "learned")
    if want[0] == "fallback":
        assert "collapsed in epoch 2" in record["reason"]
        assert "zero-shot fallback after 2 epochs" in prompt_line(metadata)


def test_a_recorded_prompts_entry_wins():
    metadata = {"prompts": {"outcome": "learned", "reason": "", "epochs": 3, "adaptation": "norm+bias tuning"}}
    assert prompt_record(metadata) == metadata["prompts"]
    assert "norm+bias tuning" in prompt_line(metadata)


def test_every_view_states_the_same_verdict_and_prompts():
    meta = {
        "kind": "detect",
        "classes": ["dog", "cat"],
        "evidence": evidence(reliable=False, flags_withheld=2),
        "options": {"quick": True},
        "text_evidence": "zero-shot",
    }
    rows = frame([None, None, None, None], [True, True, False, False])
    said = verdict(meta, rows)
    data = summarize(rows, meta)
    assert data.verdict == said and data.evidence_warning == said.sentence and "--quick" in data.prompts
    assert said.sentence in describe(rows, meta) and prompt_line(meta) in describe(rows, meta)
    page = to_html(rows, meta)
    assert "Verdict: not reliable." in page and "Evidence warning." in page and "no prompt training" in page


def test_export_counts_the_duplicates_it_drops():
    from deft_clean.outputs.export import plan_export

    rows = frame([None, None, None, "looks like"]).assign(
        duplicate_group=[0.0, 0.0, 0.0, None], duplicate_kind=["exact", "exact", "exact", None]
    )
    plan = plan_export(rows, drop_duplicates=True)
    assert len(plan) == 1 and plan.attrs["duplicates"] == 2
    assert plan_export(rows).attrs["duplicates"] == 0
