"""Issue 41: results that cannot point at themselves, duplicate groups that never chain, an overwrite that checks
what it deletes, outputs swapped in whole, locks created whole, model configs bounded before allocation.

Each test runs the real command on real files in a temporary home and checks the sha256 of every file outside
the named output before and after (:func:`untouched`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.outputs.results import write_results
from tests.conftest import fails
from tests.review_data import CLASSES, Review, make_review

runner = CliRunner()


def tree_hashes(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file below ``root`` (a link: its target's text), except those inside ``skip``."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.name.endswith(".lock") or ".tmp" in path.name:
            continue  # a lock beside an output is the command's own
        if path.is_symlink():
            found[path.relative_to(root).as_posix()] = "-> " + os.readlink(path)
        elif path.is_file():
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def untouched(root: Path, out: Path | None = None) -> Iterator[None]:
    """Assert that no file under ``root`` outside ``out`` (the named output) changed, appeared or vanished."""
    before = tree_hashes(root, skip=out)
    yield
    assert tree_hashes(root, skip=out) == before


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home folder with a private key, the working directory of the test."""
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh" / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (folder / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(folder)
    return folder


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def crafted(review: Review, path: Path, rows: list[dict] | None = None, **metadata: object) -> Path:
    """A results file like ``review``'s, its rows (path, label) and metadata replaced."""
    frame = review.frame.copy()
    if rows is not None:
        frame = pd.concat([frame.iloc[[0]]] * len(rows), ignore_index=True)
        frame["path"] = [r["path"] for r in rows]
        frame["label"] = [r["label"] for r in rows]
        frame["label_index"] = [CLASSES.index(r["label"]) for r in rows]
        frame["is_clean"] = True
        frame["status"] = "ok"
    meta = {"kind": "detect", "model": "tiny", "classes": CLASSES}
    meta.update({k: v for k, v in metadata.items() if v is not None})
    return write_results(frame, meta, path)


# 1. a results file never names its own rows' source; table rows are image files


def test_results_naming_themselves_as_their_table_copy_nothing(review, home):
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}, {"path": "notes.txt", "label": "cat"}]
    results = crafted(review, home / "results.parquet", rows, source="table", dataset=str(home / "results.parquet"))
    out = home / "export"
    with untouched(home.parent):
        fails(invoke("export", results, "--out", out, "--mode", "copy"), 1, "not listed")
    assert not out.exists()


def test_a_results_file_is_never_a_dataset_table(review, home):
    images = review.root / "cat"
    rows = [{"path": f"data/cat/{p.name}", "label": "cat"} for p in sorted(images.glob("0*.png"))]
    results = crafted(review, review.root.parent / "r.parquet", rows, source="table")
    # names itself as its table: every row is an image the table's folder holds, but the table is deft-clean's
    results = crafted(review, results, rows, source="table", dataset=str(results))
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "deft-clean results file")


def test_table_rows_must_be_image_files(review, home):
    table = home / "list.csv"
    pd.DataFrame({"path": [".ssh/id_rsa", "notes.txt"], "label": ["cat", "dog [x]"]}).to_csv(table, index=False)
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}, {"path": "notes.txt", "label": "dog [x]"}]
    results = crafted(review, home / "r.parquet", rows, source="table", dataset=str(table))
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "not listed")
        fails(invoke("export", results, "--out", home / "export.csv", "--mode", "csv"), 1, "not listed")


def test_a_home_folder_recorded_as_an_image_folder_is_refused_without_a_walk(review, home, monkeypatch):
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}]
    results = crafted(review, home / "r.parquet", rows, source="folder", dataset=str(home))

    def walked(*args, **kwargs):
        raise AssertionError("the folder was walked")

    monkeypatch.setattr(os, "walk", walked)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "not listed")


# 4. export lists labels again: a label fixed in the dataset since detect is refused, as train refuses it


def test_export_refuses_rows_whose_label_changed_since_detect(review, home):
    frame = review.frame.copy()
    cats = frame.index[frame["path"].str.startswith("cat/") & (frame["status"] == "ok")]
    frame.loc[cats, "label"] = "dog [x]"
    frame.loc[cats, "label_index"] = 1
    meta = {"kind": "detect", "classes": CLASSES}
    results = write_results(frame, {**meta, "source": "folder", "dataset": str(review.root)}, home / "r.parquet")
    for mode, out in (("symlink", home / "out"), ("csv", home / "out.csv")):
        with untouched(home.parent):
            fails(invoke("export", results, "--out", out, "--mode", mode), 1, "other labels", "'cat' now")
        assert not out.exists()


def test_export_refuses_a_table_label_fixed_after_detect(review, home):
    root = review.root
    files = [*sorted(root.glob("cat/0*")), *sorted(root.glob("dog*/0*"))]
    rows = [{"path": f"data/{p.relative_to(root).as_posix()}", "label": p.parent.name} for p in files]
    table = root.parent / "list.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    results = crafted(review, home / "r.parquet", rows, source="table", dataset=str(table))
    assert invoke("export", results, "--out", home / "before.csv", "--mode", "csv").exit_code == 0
    fixed = pd.DataFrame(rows)
    fixed.loc[0, "label"] = "dog [x]"
    fixed.to_csv(table, index=False)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "after.csv", "--mode", "csv"), 1, "other labels")


# 9. crafted metadata, NUL bytes, huge paths, a FIFO or a device as results: one line each


@pytest.mark.parametrize("reader", [{"root": "/"}, {"recursive": True}, {"path_col": 3}])
def test_crafted_reader_options_are_one_line(review, home, reader):
    results = crafted(review, home / "r.parquet", source="folder", dataset=str(review.root), reader=reader)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "out"), 1, "'reader' entry is malformed")
        fails(invoke("report", results), 1, "'reader' entry is malformed")


def test_nul_bytes_and_huge_paths_in_rows_are_one_short_line(review, home):
    for bad in ("cat/a\0b.png", "cat/" + "x" * 5_000_000 + ".png"):
        rows = [{"path": bad, "label": "cat"}]
        results = crafted(review, home / "r.parquet", rows, source="folder", dataset=str(review.root))
        with untouched(home.parent):
            message = fails(invoke("export", results, "--out", home / "out"), 1)
        assert len(message) < 1000


def test_a_fifo_a_device_or_a_huge_name_as_results_is_one_line(home):
    fifo = home / "results.parquet"
    os.mkfifo(fifo)
    with untouched(home.parent):
        fails(invoke("report", fifo), 1, "not a regular file")
        fails(invoke("export", "/dev/zero", "--out", home / "out"), 1, "not a regular file")
        message = fails(invoke("report", home / ("y" * 100_000)), 2)
    assert len(message) < 1000


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path
