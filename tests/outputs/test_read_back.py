"""Everything deft-clean writes reads back: detect -> load_results / report / export / train for every kind of run
the tests make, and a results file is data, not instructions (labels agree, metadata typed, rows relist)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean import testing as toy
from deft_clean.cli.app import app
from deft_clean.outputs.results import METADATA_KEY, load_results, write_results
from deft_clean.run.checkpoints import Interrupted
from deft_clean.run.errors import DataError

from ..conftest import CLASSES, N_CLASSES, collapse_prompts, make_noisy_folder
from ..run.test_long_runs import interrupt_at

runner = CliRunner()
KINDS = ("reliable", "withheld", "collapsed", "unusable", "resumed")


def _options(tiny_clip, **extra):
    return tiny_clip.options(epochs=2, **extra)


def _detect(kind: str, tiny_clip, base: Path, monkeypatch) -> Path:
    """One detect run of ``kind``; returns the results file."""
    out = base / "results.parquet"
    folder = base / "data"
    if kind == "withheld":  # labels independent of the images: every flag is withheld
        images, _ = toy.synthetic_images(30, N_CLASSES, seed=4)
        labels = np.random.default_rng(0).integers(0, N_CLASSES, len(images))
        toy.write_image_folder(folder, images, labels, CLASSES)
    else:
        make_noisy_folder(folder, per_class=30, rate=0.3, seed=8)
    if kind == "unusable":
        (folder / CLASSES[0] / "zz-broken.png").write_bytes(b"not a png")
    if kind == "collapsed":
        collapse_prompts(monkeypatch)
    if kind == "resumed":
        with monkeypatch.context() as patch:
            interrupt_at(patch, "start_epoch", 2, signal.SIGINT)
            with pytest.raises(Interrupted):
                deft_clean.detect(folder, out=out, **_options(tiny_clip))
        deft_clean.detect(folder, out=out, resume=True, **_options(tiny_clip))
    else:
        deft_clean.detect(folder, out=out, **_options(tiny_clip))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_run_reads_back(tiny_clip, tmp_path, monkeypatch, kind):
    results = _detect(kind, tiny_clip, tmp_path, monkeypatch)
    frame, metadata = load_results(results)
    if kind == "withheld":
        assert metadata["evidence"]["reliable"] is False and not (~frame["is_clean"]).any()
    if kind == "collapsed":
        assert metadata["text_evidence"] == "zero-shot"
    if kind == "unusable":
        assert frame["status"].str.startswith("unreadable").sum() == 1
    for column in ("p_clean", "p_predicted", "text_score", "visual_score"):
        values = frame[column].dropna().to_numpy(dtype=float)
        assert ((values >= 0) & (values <= 1)).all(), column

    html = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(results), "--html", str(html), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "deft-clean report" in html.read_text()
    exported = tmp_path / "clean.csv"
    result = runner.invoke(app, ["export", str(results), "--out", str(exported), "--mode", "csv", "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(exported)
    assert len(table) == int(frame["is_clean"].sum())
    assert all(Path(p).is_file() for p in table["path"])
    model = tmp_path / "model"
    deft_clean.train(
        tmp_path / "data",
        results=results,
        out=model,
        epochs=1,
        batch_size=32,
        device="cpu",
        num_workers=0,
        quiet=True,
        hflip=False,
    )
    assert (model / "config.json").is_file()


def test_a_probability_rounded_past_one_is_written_as_one(tmp_path):
    frame, metadata = _frame(tmp_path)
    frame.loc[0, "p_predicted"] = np.float32(1.0000001)
    frame.loc[1, "p_clean"] = np.float32(-1e-8)
    out = write_results(frame, metadata, tmp_path / "r.parquet")
    again, _ = load_results(out)
    assert again.loc[0, "p_predicted"] == 1.0 and again.loc[1, "p_clean"] == 0.0


# A results file is data, not instructions.


def _frame(base: Path) -> tuple[pd.DataFrame, dict]:
    """A small hand-made results frame for an image folder at ``base / data`` (two classes, three images)."""
    folder = base / "data"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    images, labels = toy.synthetic_images(2, 2, seed=3)
    paths = toy.write_image_folder(folder, images, labels, ["cat", "dog"])
    label = [p.split("/")[0] for p in paths]
    index = [["cat", "dog"].index(x) for x in label]
    frame = pd.DataFrame(
        {
            "path": paths,
            "label": label,
            "label_index": index,
            "p_clean": np.float32(0.9),
            "is_clean": True,
            "predicted_label": label,
            "predicted_index": index,
            "p_predicted": np.float32(0.9),
            "sim_pos": None,
            "sim_neg": None,
            "status": "ok",
        }
    )
    metadata = {"classes": ["cat", "dog"], "dataset": str(folder.resolve()), "source": "folder", "reader": {}}
    return frame, metadata


def _crafted(path: Path, frame: pd.DataFrame, metadata: dict) -> Path:
    """Write ``frame`` and ``metadata`` as a Parquet the way a hostile tool would: no clipping, no checks."""
    import pyarrow as pa

    from deft_clean.outputs.results import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, SCHEMA

    frame = frame.assign(**{c: None for c in OPTIONAL_COLUMNS if c not in frame.columns})
    table = pa.Table.from_pandas(frame[list(REQUIRED_COLUMNS)], schema=SCHEMA, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()}), path)
    return path


def _sums(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_label_text_and_index_must_agree(tmp_path):
    frame, metadata = _frame(tmp_path)
    frame.loc[0, "label"] = "dog" if frame.loc[0, "label"] == "cat" else "cat"
    results = _crafted(tmp_path / "r.parquet", frame, metadata)
    with pytest.raises(DataError, match="label_index"):
        load_results(results)
    frame, _ = _frame(tmp_path)
    frame.loc[1, "predicted_index"] = 1 - frame.loc[1, "predicted_index"]
    with pytest.raises(DataError, match="predicted_index"):
        load_results(_crafted(tmp_path / "r2.parquet", frame, metadata))


def test_a_usable_row_without_a_score_is_refused(tmp_path):
    frame, metadata = _frame(tmp_path)
    frame["p_clean"] = frame["p_clean"].astype(object)
    frame.loc[0, ["p_clean", "is_clean"]] = [None, False]
    with pytest.raises(DataError, match="no p_clean"):
        load_results(_crafted(tmp_path / "r.parquet", frame, metadata))


@pytest.mark.parametrize(
    "entry",
    [
        {"evidence": "yes"},
        {"evidence": {"reliable": "no"}},
        {"evidence": {"reliable": False, "per_class": [{"class": 3, "rows": "many"}]}},
        {"evidence": {"reliable": False, "reasons": "all of them"}},
        {"reader": ["split", "train"]},
        {"reader": {"split": {"nested": 1}}},
        {"source": "ftp"},
        {"warnings": "collapsed"},
        {"history": [1, 2]},
    ],
)
def test_malformed_metadata_is_one_line_not_a_crash(tmp_path, entry):
    frame, metadata = _frame(tmp_path)
    results = _crafted(tmp_path / "r.parquet", frame, {**metadata, **entry})
    result = runner.invoke(app, ["report", str(results)])
    assert result.exit_code == 1, result.output
    assert "malformed" in result.output and "rerun detect" in result.output and "--debug" not in result.output


def test_a_crafted_results_file_cannot_export_a_private_file(tmp_path, monkeypatch, caplog):
    """Metadata naming a private folder and rows naming its files: export copies nothing, the page embeds nothing."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    secrets = home / "Documents"  # a folder that lists as an image folder, with a private file in a "class"
    toy.write_image_folder(secrets, *toy.synthetic_images(1, 2, seed=1), ["keys", "photos"])
    (secrets / "keys" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    frame, metadata = _frame(tmp_path)
    frame.loc[0, "path"] = "keys/id_rsa"
    crafted = {**metadata, "dataset": str(secrets), "source": "folder"}
    results = _crafted(tmp_path / "r.parquet", frame, crafted)
    before = _sums(tmp_path)
    for mode in ("copy", "symlink", "csv"):
        out = tmp_path / ("out.csv" if mode == "csv" else f"out-{mode}")
        result = runner.invoke(app, ["export", str(results), "--out", str(out), "--mode", mode])
        assert result.exit_code == 1, result.output
        assert "not listed by" in result.output and "id_rsa" in result.output
        assert not out.exists()
    flat = _crafted(
        tmp_path / "r-flat.parquet",
        frame.assign(path=["id_rsa", *frame["path"][1:]]),
        {**crafted, "dataset": str(home / ".ssh")},
    )
    result = runner.invoke(app, ["export", str(flat), "--out", str(tmp_path / "o"), "--mode", "copy"])
    # refused before anything is copied: the row is checked as an image file of that folder, never walked
    assert result.exit_code == 1 and "not listed by" in result.output and "id_rsa" in result.output, result.output
    assert not (tmp_path / "o").exists()
    # Through a table source or a DataFrame source, too: a row that is no image file never relists.
    for source in ("table", "dataframe"):
        location = str(secrets / "list.csv") if source == "table" else str(secrets)  # a table's root is its folder
        results = _crafted(tmp_path / f"r-{source}.parquet", frame, {**crafted, "source": source, "dataset": location})
        result = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "o"), "--mode", "copy"])
        assert result.exit_code == 1, result.output
        assert "not listed by" in result.output or "cannot list the recorded" in result.output, result.output
        assert not (tmp_path / "o").exists()
    html = tmp_path / "page.html"
    result = runner.invoke(app, ["report", str(tmp_path / "r.parquet"), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "not listed by" in caplog.text  # the warning says why the page has no thumbnails
    assert "data:image/png" not in html.read_text()
    assert _sums(tmp_path) == {**before, **_sums(tmp_path)} and all(
        _sums(tmp_path)[k] == v for k, v in before.items()
    )  # nothing outside the named outputs changed


def test_rows_that_relist_still_export(tmp_path):
    frame, metadata = _frame(tmp_path)
    results = _crafted(tmp_path / "r.parquet", frame, metadata)
    result = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "clean"), "--mode", "copy"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "clean").rglob("*.png"))) == len(frame)


def test_train_says_when_table_labels_changed_after_detect(tiny_clip, tmp_path):
    folder = tmp_path / "data"
    make_noisy_folder(folder, per_class=10, rate=0.0, seed=5)
    rows = [{"path": p.relative_to(tmp_path).as_posix(), "label": p.parent.name} for p in sorted(folder.rglob("*.png"))]
    table = tmp_path / "list.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    results = tmp_path / "r.parquet"
    deft_clean.detect(table, out=results, quick=True, **{k: v for k, v in tiny_clip.options().items() if k != "epochs"})
    fixed = pd.DataFrame(rows)
    fixed.loc[3, "label"] = CLASSES[(CLASSES.index(fixed.loc[3, "label"]) + 1) % N_CLASSES]
    fixed.to_csv(table, index=False)
    with pytest.raises(DataError, match="other labels than") as refused:
        deft_clean.train(table, results=results, out=tmp_path / "m", epochs=1, device="cpu", num_workers=0, quiet=True)
    assert "--decisions" not in str(refused.value) or "decisions" in str(refused.value)
    assert not (tmp_path / "m").exists()


def test_quiet_still_says_flags_were_withheld(tiny_clip, tmp_path):
    """--quiet hides progress and the summary, never the line that says the flags mean nothing (a real process:
    the CLI's own logging set-up, not the test runner's)."""
    images, _ = toy.synthetic_images(30, N_CLASSES, seed=4)
    labels = np.random.default_rng(0).integers(0, N_CLASSES, len(images))
    toy.write_image_folder(tmp_path / "data", images, labels, CLASSES)
    out = tmp_path / "r.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "deft_clean", "detect", str(tmp_path / "data"), "--out", str(out), "--quick"]
    detect = subprocess.run([*command, *tiny_clip.cli_args()], capture_output=True, text=True, env=env, check=False)
    assert detect.returncode == 0, detect.stderr
    assert "withheld" in detect.stderr and not detect.stdout.strip()
    command = [sys.executable, "-m", "deft_clean", "report", str(out), "--quiet"]
    report = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert report.returncode == 0 and "withheld" in report.stderr and not report.stdout.strip(), report.stderr


def test_report_escapes_a_crafted_flag_reason(tmp_path):
    frame, metadata = _frame(tmp_path)
    frame.loc[0, ["is_clean", "flag_reason"]] = [False, "\x1b]0;owned\x07\x1b[31mred"]
    results = _crafted(tmp_path / "r.parquet", frame, metadata)
    result = runner.invoke(app, ["report", str(results)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\\x1b" in result.stdout
