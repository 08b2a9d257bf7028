"""Results as objects (``deft_clean.load``) and the hand-offs to cleanlab (its column names, checked against the
real cleanlab) and FiftyOne (a folder its CSV importer reads; checked with FiftyOne where it is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import deft_clean
from deft_clean.outputs.handoff import CLEANLAB_COLUMNS, FIFTYONE_COLUMNS, write_fiftyone
from tests.review_data import make_review


@pytest.fixture()
def review(tmp_path):
    return make_review(tmp_path)


def test_load_returns_the_detect_result(review):
    result = deft_clean.load(review.results)
    assert isinstance(result, deft_clean.DetectResult) and result.path == Path(review.results)
    frame, metadata = deft_clean.load_results(review.results)  # still (frame, metadata)
    pd.testing.assert_frame_equal(result.frame, frame)
    assert result.metadata == metadata
    flagged = result.flagged()
    assert list(flagged.index) == list(frame[review.flagged].sort_values("p_clean").index)
    rates = result.noise_rates()
    assert int(rates["flagged"].sum()) == int(review.flagged.sum())
    assert "most suspicious" in result._repr_html_()


def test_repr_is_a_few_lines(review):
    result = deft_clean.load(review.results)
    text = repr(result)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6 and len(text) < 800
    n_flagged = int(review.flagged.sum())
    assert f"rows {len(review.frame)}" in text and f"flagged {n_flagged}" in text and "withheld 0" in text
    assert "not checked" in text and "model tiny" in text
    result.metadata["evidence"] = {"reliable": False, "image_accuracy": 0.5, "chance": 0.5, "flags_withheld": 2}
    assert "not reliable" in repr(result)


def test_cleanlab_columns_match_cleanlab(review):
    from cleanlab import Datalab

    result = deft_clean.load(review.results)
    issues = result.to_cleanlab()
    # cleanlab's own label-issue table on the same rows, from probabilities built out of the results.
    usable = review.frame[review.usable]
    classes = list(result.classes)
    probs = np.full((len(usable), len(classes)), 0.05)
    probs[np.arange(len(usable)), usable["predicted_index"].to_numpy()] = 0.9
    probs /= probs.sum(axis=1, keepdims=True)
    lab = Datalab(data={"label": usable["label"].tolist()}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probs, issue_types={"label": {}})
    theirs = lab.get_issues("label")
    assert list(issues.columns) == list(theirs.columns) == CLEANLAB_COLUMNS
    for column in CLEANLAB_COLUMNS:
        assert issues[column].dtype.kind == theirs[column].dtype.kind or column.endswith("label"), column
    assert set(issues["given_label"]) <= set(classes) and set(theirs["given_label"]) <= set(classes)
    assert list(issues.index) == list(usable.index) and issues["label_score"].between(0, 1).all()
    assert int(issues["is_label_issue"].sum()) == int(review.flagged.sum())
    # The rows cleanlab ranks as most suspicious by label_score are the ones deft-clean ranks lowest too.
    from cleanlab.rank import find_top_issues

    worst = find_top_issues(issues["label_score"].to_numpy(), top=3)
    assert set(issues.index[worst]) == set(issues.sort_values("label_score").index[:3])


FIFTYONE_CHECK = """
import json, sys
from fiftyone.utils.csv import CSVDatasetImporter
from deft_clean.outputs.handoff import fiftyone_fields
importer = CSVDatasetImporter(sys.argv[1], fields=fiftyone_fields())
with importer:
    samples = [s for s in importer]
print(json.dumps([
    {"filepath": s.filepath, "ground_truth": s.ground_truth.label, "suggested": s.suggested.label,
     "type": type(s.ground_truth).__name__, "p_clean": s.p_clean, "is_flagged": s.is_flagged,
     "duplicate_group": s.get_field("duplicate_group") if s.has_field("duplicate_group") else None}
    for s in samples
]))
"""


def fiftyone_samples(folder: Path) -> list[dict]:
    """The samples FiftyOne's own CSV importer makes of ``folder``: in this interpreter when it has
    fiftyone, else in ``DEFT_FIFTYONE_PYTHON`` (a Python with fiftyone installed), else a skip."""
    python = sys.executable
    try:
        import fiftyone  # noqa: F401
    except ImportError:
        python = os.environ.get("DEFT_FIFTYONE_PYTHON", "")
        if not python:
            pytest.skip("fiftyone is not installed (pip install 'deft-clean[fiftyone]' or set DEFT_FIFTYONE_PYTHON)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [python, "-c", FIFTYONE_CHECK, str(folder)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fiftyone_folder_imports_with_fiftyone(review, tmp_path):
    frame = review.frame.copy()
    frame["duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame.loc[0, "duplicate_group"] = 4
    out = write_fiftyone(frame, review.root, tmp_path / "fo")
    table = pd.read_csv(out / "labels.csv", keep_default_na=False)
    assert list(table.columns) == FIFTYONE_COLUMNS and len(table) == int(review.usable.sum())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["filepath"])
    samples = {s["filepath"]: s for s in fiftyone_samples(out)}  # the importer orders them its own way
    assert set(samples) == set(table["filepath"])
    usable = frame[review.usable].assign(filepath=list(table["filepath"]))
    for row in usable.itertuples(index=False):
        sample = samples[row.filepath]
        assert (sample["ground_truth"], sample["suggested"], sample["type"]) == (
            row.label,
            row.predicted_label,
            "Classification",
        )
        assert sample["is_flagged"] is (not row.is_clean) and abs(sample["p_clean"] - float(row.p_clean)) < 1e-6
        assert sample["duplicate_group"] == (4 if row.path == frame.loc[0, "path"] else None)


def test_to_fiftyone_through_the_result(review, tmp_path):
    result = deft_clean.load(review.results)
    out = result.to_fiftyone(tmp_path / "fo")
    assert (out / "labels.csv").is_file()
    frame = review.frame.copy()
    frame.loc[frame.index[0], "path"] = "../outside.png"
    with pytest.raises(deft_clean.UsageError, match="leaves the dataset root"):
        write_fiftyone(frame, review.root, tmp_path / "bad")
