"""Issue 27: deft-clean deletes or replaces only what it wrote itself, on real files.

A fake home folder full of files is the ``--out`` of every command, with and without ``--overwrite``; the
sha256 of every file under the test's folder is compared before and after. Folders deft-clean wrote carry a
manifest (``.deft-clean-manifest.json``), and ``--overwrite`` removes only what it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean.cli.app import app
from deft_clean.run.errors import DataError
from deft_clean.run.files import LOCK_MARK, run_lock
from deft_clean.run.ownership import MANIFEST, read_manifest, remove_owned, write_manifest
from tests.review_data import Review, make_review

from ..conftest import detected_and_trained, fails

runner = CliRunner()
FAST = {"device": "cpu", "num_workers": 0, "quiet": True, "hflip": False}


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): sha256 of a regular file, else its kind and target."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISREG(info.st_mode):
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                entries[rel] = f"link -> {os.readlink(path)}"
            else:
                entries[rel] = f"mode {stat.S_IFMT(info.st_mode):o}"
    return entries


def fake_home(folder: Path) -> Path:
    """A folder that looks like someone's home: dotfiles, documents, a nested project, a Parquet of theirs."""
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (home / ".bashrc").write_text("export PATH=$PATH\n")
    (home / "Documents" / "taxes").mkdir(parents=True)
    (home / "Documents" / "taxes" / "2025.pdf").write_bytes(os.urandom(2048))
    (home / "notes.html").write_text("<!doctype html><p>my notes</p>")
    import pandas as pd

    pd.DataFrame({"path": ["a.png"], "label": ["a"]}).to_parquet(home / "mine.parquet")
    (home / "config.json").write_text('{"mine": true}')
    return home


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    """A small folder, its detect --quick results and a model trained for one epoch on it."""
    return detected_and_trained(tiny_clip, tmp_path_factory.mktemp("owned"), seed=4)


# ----------------------------------------------------------------------------------------------------
# 1. a folder or file deft-clean did not write is never deleted or replaced


@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_export_never_touches_a_home_folder(review, tmp_path, extra):
    home = fake_home(tmp_path)
    before = tree(tmp_path)
    for mode in ("symlink", "copy"):
        args = ["export", str(review.results), "--out", str(home), "--mode", mode, *extra]
        message = fails(runner.invoke(app, args), 2, "did not write it")
        assert "--overwrite" not in message
    csv = ["export", str(review.results), "--out", str(home / "mine.parquet"), "--mode", "csv", *extra]
    assert "--overwrite" not in fails(runner.invoke(app, csv), 2, "not a file deft-clean wrote")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_report_and_predict_never_replace_a_file_of_yours(review, trained, tmp_path, extra):
    home = fake_home(tmp_path)
    data, _, model = trained
    before, model_before = tree(tmp_path), tree(model)
    page = ["report", str(review.results), "--html", str(home / "notes.html"), "-q", *extra]
    assert "--overwrite" not in fails(runner.invoke(app, page), 2, "not a file deft-clean wrote")
    for target in (home / "mine.parquet", home / ".bashrc", home / "Documents"):
        args = ["predict", str(model), str(data), "--out", str(target), "--device", "cpu", "-q", *extra]
        fails(runner.invoke(app, args), 2)
    assert tree(tmp_path) == before and tree(model) == model_before


def test_overwrite_replaces_only_a_deft_clean_file_of_the_same_kind(review, trained, tmp_path):
    """A report never replaces the results or predictions it sits beside; predict never replaces results."""
    data, results, model = trained
    predictions = tmp_path / "predictions.parquet"
    base = ["predict", str(model), str(data), "--device", "cpu", "-q"]
    assert runner.invoke(app, [*base, "--out", str(predictions)]).exit_code == 0
    page = tmp_path / "page.html"
    assert runner.invoke(app, ["report", str(review.results), "--html", str(page), "-q"]).exit_code == 0
    table = tmp_path / "table.csv"
    assert runner.invoke(app, ["export", str(review.results), "--out", str(table), "--mode", "csv"]).exit_code == 0
    other = tmp_path / "other-results.parquet"
    shutil.copyfile(review.results, other)
    before = tree(tmp_path)
    for target, kind in ((predictions, "predictions"), (other, "results"), (table, "export")):
        args = ["report", str(review.results), "--html", str(target), "-q", "--overwrite"]
        fails(runner.invoke(app, args), 2, f"holds deft-clean {kind}, not report")
    for target in (other, page, table):
        fails(runner.invoke(app, [*base, "--out", str(target), "--overwrite"]), 2, "not predictions")
    for target in (predictions, other):
        args = ["export", str(review.results), "--out", str(target), "--mode", "csv", "--overwrite"]
        fails(runner.invoke(app, args), 2, "not export")
    assert tree(tmp_path) == before
    # the same kind is still replaced on request
    assert runner.invoke(app, [*base, "--out", str(predictions), "--overwrite"]).exit_code == 0
    assert runner.invoke(app, ["report", str(review.results), "--html", str(page), "-q", "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("extra", [(), ("--overwrite",), ("--resume",)])
def test_train_never_writes_into_a_home_folder(trained, tmp_path, extra):
    home = fake_home(tmp_path)
    data, results, _ = trained
    before = tree(tmp_path)
    args = ["train", str(data), "--results", str(results), "--out", str(home), "--device", "cpu", "-q", *extra]
    assert "--overwrite" not in fails(runner.invoke(app, args), 2, "did not write it")
    assert tree(tmp_path) == before


def test_train_never_replaces_the_clip_config_and_checkpoint_it_loads(tiny_clip, trained, tmp_path):
    data, _, _ = trained
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(tiny_clip.config, folder / "config.json")  # the names train writes
    shutil.copy(tiny_clip.checkpoint, folder / "checkpoint.pt")
    results = tmp_path / "r.parquet"
    options = tiny_clip.options(model=str(folder / "config.json"), pretrained=str(folder / "checkpoint.pt"))
    deft_clean.detect(data, out=results, quick=True, **options)
    write_manifest(folder, ["config.json", "checkpoint.pt"])  # even a manifest claiming them does not help
    before = tree(tmp_path)
    for extra in ((), ("--overwrite",)):
        args = ["train", str(data), "--results", str(results), "--out", str(folder), "--device", "cpu", *extra]
        fails(runner.invoke(app, args), 2, "contains an input")
    assert tree(tmp_path) == before


def test_overwrite_of_a_model_folder_removes_only_what_train_wrote(trained, tmp_path):
    data, results, _ = trained
    out = tmp_path / "model"
    deft_clean.train(data, results=results, out=out, epochs=1, **FAST)
    listed = read_manifest(out)
    assert {"config.json", "model.safetensors", "checkpoint.pt"} <= set(listed)
    (out / "README.txt").write_text("my notes on this model")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"png")
    args = ["train", str(data), "--results", str(results), "--out", str(out), "--device", "cpu", "-q"]
    fails(runner.invoke(app, [*args, "--epochs", "1"]), 2, "not empty", "--overwrite")  # ours: --overwrite offered
    result = runner.invoke(app, [*args, "--epochs", "1", "--num-workers", "0", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "README.txt").read_text() == "my notes on this model" and (out / "plots" / "loss.png").exists()
    assert (out / "model.safetensors").is_file() and read_manifest(out) == listed


def test_device_nodes_and_fifos_are_never_replaced(review, tmp_path):
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:
        node = tmp_path / "null.html"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(node)
    for target in targets:
        mode = os.lstat(target).st_mode
        for extra in ((), ("--overwrite",)):
            args = ["report", str(review.results), "--html", str(target), "-q", *extra]
            fails(runner.invoke(app, args), 2, "not a regular file")
            csv = ["export", str(review.results), "--out", str(target.with_suffix(".csv")), "--mode", "csv", *extra]
            if target.with_suffix(".csv").exists():
                fails(runner.invoke(app, csv), 2)
        assert os.lstat(target).st_mode == mode
    folder = tmp_path / "page.html"
    folder.mkdir()
    fails(runner.invoke(app, ["report", str(review.results), "--html", str(folder), "-q", "--overwrite"]), 2, "folder")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_predict_never_replaces_a_device_node(trained, tmp_path):
    data, _, model = trained
    node = tmp_path / "null.parquet"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    args = ["predict", str(model), str(data), "--out", str(node), "--device", "cpu", "-q", "--overwrite"]
    fails(runner.invoke(app, args), 2, "not a regular file")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


# ----------------------------------------------------------------------------------------------------
# 2. the manifest is untrusted data


def test_a_hostile_manifest_never_removes_anything_outside_the_folder(review, tmp_path):
    out = tmp_path / "clean"
    assert runner.invoke(app, ["export", str(review.results), "--out", str(out)]).exit_code == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_text("keep too")
    (out / "linked").symlink_to(elsewhere)
    manifest = out / MANIFEST
    for entry in ("../victim.txt", str(victim), "a/../../victim.txt"):
        manifest.write_text(json.dumps({"format": "deft-clean-manifest", "version": 1, "files": [entry]}))
        with pytest.raises(DataError, match="not a plain path"):
            read_manifest(out)
        args = ["export", str(review.results), "--out", str(out), "--overwrite"]
        assert runner.invoke(app, args).exit_code == 1
    # through a linked folder: listed, but never followed
    write_manifest(out, ["linked/x.png"])
    remove_owned(out)
    assert victim.read_text() == "keep" and (elsewhere / "x.png").read_text() == "keep too"
    manifest.write_text("[1, 2")
    with pytest.raises(DataError, match="damaged"):
        read_manifest(out)


# ----------------------------------------------------------------------------------------------------
# 3. every output is locked


def test_a_second_command_on_a_locked_output_fails_at_once(review, trained, tmp_path):
    data, _, model = trained
    out, page, table = tmp_path / "clean", tmp_path / "r.html", tmp_path / "p.parquet"
    with run_lock(out), run_lock(page), run_lock(table):
        fails(runner.invoke(app, ["export", str(review.results), "--out", str(out)]), 2, "another deft-clean run")
        fails(runner.invoke(app, ["report", str(review.results), "--html", str(page), "-q"]), 2, "another")
        args = ["predict", str(model), str(data), "--out", str(table), "--device", "cpu", "-q"]
        fails(runner.invoke(app, args), 2, "another deft-clean run")
    assert not out.exists() and not page.exists() and not table.exists()
    assert runner.invoke(app, ["export", str(review.results), "--out", str(out)]).exit_code == 0


def test_a_file_or_link_where_the_lock_goes_is_the_users(review, tmp_path):
    """The lock beside an output is deft-clean's only when it holds deft-clean's mark: a user's file of that
    name is refused and kept, a dangling symlink there is refused and its target never created."""
    mine = tmp_path / ".clean.lock"
    mine.write_text("notes")
    elsewhere = tmp_path / "elsewhere" / "created.txt"
    (tmp_path / ".r.html.lock").symlink_to(elsewhere)
    before = tree(tmp_path)
    fails(runner.invoke(app, ["export", str(review.results), "--out", str(tmp_path / "clean")]), 2, "not a deft")
    fails(runner.invoke(app, ["report", str(review.results), "--html", str(tmp_path / "r.html"), "-q"]), 2, "lock")
    assert tree(tmp_path) == before and not elsewhere.exists() and not elsewhere.parent.exists()
    mine.write_bytes(LOCK_MARK)  # a lock a crashed run left (deft-clean's mark) is taken over and removed
    with run_lock(tmp_path / "clean"):
        pass
    assert not mine.exists()
    assert runner.invoke(app, ["export", str(review.results), "--out", str(tmp_path / "clean")]).exit_code == 0
    assert not mine.exists()


# ----------------------------------------------------------------------------------------------------
# 4. copies get the umask, not the source's mode


def test_export_copy_gets_the_umask(review, tmp_path):
    for source in review.root.rglob("*.png"):
        source.chmod(0o777)
    previous = os.umask(0o027)
    try:
        assert (
            runner.invoke(
                app, ["export", str(review.results), "--out", str(tmp_path / "c"), "--mode", "copy"]
            ).exit_code
            == 0
        )
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c").rglob("*.png")}
    assert modes == {0o640}


# ----------------------------------------------------------------------------------------------------
# results files are data: every score column in range, no terminal escapes on the page


@pytest.mark.parametrize(
    ("column", "value"), [("text_score", float("nan")), ("sim_pos", 9.0), ("outlier_score", float("inf"))]
)
def test_score_columns_out_of_range_are_refused(review, tmp_path, column, value):
    from deft_clean.outputs.results import load_results, write_results

    frame, metadata = load_results(review.results)
    frame[column] = frame[column].astype(float)
    frame.loc[0, column] = value
    crafted = tmp_path / "crafted.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(write_results(frame, metadata, crafted))
    values = table.column(column).to_pylist()
    values[0] = value  # written as given: to_table clips cosines and NaN becomes null, a crafted file need not
    table = table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )
    pq.write_table(table, crafted)
    with pytest.raises(DataError, match=column):
        load_results(crafted)


def test_the_page_shows_control_characters_as_escapes(review, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(review.results)
    reasons = table.column("flag_reason").to_pylist()
    first = table.column("is_clean").to_pylist().index(False)  # a flagged row: its reason is on the page
    reasons[first] = "looks like \x1b[31mred\x1b[0m \u202etxt.exe"
    import pyarrow as pa

    crafted = tmp_path / "esc.parquet"
    index = table.schema.get_field_index("flag_reason")
    pq.write_table(table.set_column(index, "flag_reason", pa.array(reasons, pa.string())), crafted)
    page = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(crafted), "--html", str(page), "-q"]).exit_code == 0
    text = page.read_text()
    assert "\x1b" not in text and "\u202e" not in text


@pytest.mark.parametrize(("key", "value"), [("image_size", -5), ("image_size", 100_000), ("std", [0.5, 0.0, 0.5])])
def test_metadata_a_model_cannot_be_given_is_refused(review, tmp_path, key, value):
    from deft_clean.outputs.results import load_results, write_results

    frame, metadata = load_results(review.results)
    crafted = write_results(frame, {**metadata, key: value}, tmp_path / "crafted.parquet")
    with pytest.raises(DataError, match=key):
        load_results(crafted)
