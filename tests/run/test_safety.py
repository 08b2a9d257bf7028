"""Issue 13: never overwrite, delete or read what the user did not name; fail fast and plainly.

One test (or a few) per numbered item of the issue, on real files in a temp dir: symlinks, a FIFO,
non-UTF-8 names, umask 022, damaged checkpoints. Where the point is that the user's files survive,
the test compares checksums before and after.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.inputs.decode import load_image
from deft_clean.inputs.listing import list_dataset
from deft_clean.models.classifier import load_model
from deft_clean.outputs.results import load_results, write_results
from deft_clean.run.atomic import DiskFullError
from deft_clean.run.checkpoints import load_checkpoint, save_checkpoint
from deft_clean.run.errors import DataError, UsageError
from deft_clean.run.files import run_lock, write_atomic
from deft_clean.run.options import DetectConfig, TrainConfig
from deft_clean.run.safety import printable
from tests.conftest import fails, folder_rows, write_table
from tests.review_data import Review, checksums, make_review

runner = CliRunner()


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


def detect(tiny_clip, dataset: Path, out: Path, *extra: str):
    return runner.invoke(app, ["detect", str(dataset), "--out", str(out), *tiny_clip.cli_args(), *extra])


def test_linked_class_folder_outside_root_is_refused_like_a_linked_file(small_folder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (small_folder / "cat").rename(photos / "cat")
    (small_folder / "cat").symlink_to(photos / "cat", target_is_directory=True)
    with pytest.raises(DataError, match="links outside the dataset root"):
        list_dataset(small_folder)


def test_linked_class_folder_inside_root_is_allowed(small_folder):
    (small_folder / "cat").rename(small_folder / ".cat-real")
    (small_folder / "cat").symlink_to(small_folder / ".cat-real", target_is_directory=True)
    listing = list_dataset(small_folder)
    assert "cat" in listing.classes


def test_export_overwrite_never_deletes_sources_behind_a_linked_class_folder(review, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (review.root / "cat").rename(photos / "cat")
    (review.root / "cat").symlink_to(photos / "cat", target_is_directory=True)
    before = checksums(photos)
    result = runner.invoke(app, ["export", str(review.results), "--out", str(photos / "cat"), "--overwrite"])
    fails(result, 1, "outside the dataset root")
    assert checksums(photos) == before


# 2. no command writes onto its inputs or into the dataset; existing outputs need --overwrite


def test_detect_refuses_its_own_table_as_out(tiny_clip, small_folder):
    table = write_table(
        small_folder.parent, [{**r, "path": f"data/{r['path']}"} for r in folder_rows(small_folder)], "list.csv"
    )
    before = table.read_bytes()
    for extra in ((), ("--overwrite",)):
        fails(detect(tiny_clip, table, table, *extra), 2, "input")
        assert table.read_bytes() == before


def test_detect_refuses_an_out_inside_the_dataset(tiny_clip, small_folder):
    before = checksums(small_folder)
    image = sorted(small_folder.rglob("*.png"))[0]
    fails(detect(tiny_clip, small_folder, image, "--overwrite"), 2, "inside the dataset")
    fails(detect(tiny_clip, small_folder, small_folder / "r.parquet"), 2, "inside the dataset")
    assert checksums(small_folder) == before


def test_detect_refuses_an_existing_out_without_overwrite(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "r.parquet"
    out.write_bytes(b"earlier results")
    for extra in ((), ("--overwrite",)):  # not a file deft-clean wrote: replaced by neither (issue 27)
        assert "--overwrite" not in fails(
            detect(tiny_clip, small_folder, out, *extra), 2, "not a file deft-clean wrote"
        )
    assert out.read_bytes() == b"earlier results"


def test_predict_refuses_an_out_inside_its_input_folder(small_folder, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    before = checksums(small_folder)
    image = sorted(small_folder.rglob("*.png"))[0]
    result = runner.invoke(app, ["predict", str(model), str(small_folder), "--out", str(image), "--overwrite"])
    fails(result, 2, "inside the dataset")
    assert checksums(small_folder) == before
    # nor inside the model folder it reads, even through a link (it would replace config.json)
    (model / "config.json").write_text("{}")
    (tmp_path / "model-link").symlink_to(model)
    for target in (model / "config.json", tmp_path / "model-link" / "p.parquet"):
        result = runner.invoke(app, ["predict", str(model), str(small_folder), "--out", str(target), "--overwrite"])
        fails(result, 2, "an input of this command")
    assert (model / "config.json").read_text() == "{}" and sorted(p.name for p in model.iterdir()) == ["config.json"]


def test_train_refuses_an_out_inside_the_dataset_or_over_its_results(small_folder, tmp_path):
    listing = list_dataset(small_folder)
    n = len(listing)
    frame = pd.DataFrame(
        {
            "path": listing.paths,
            "label": listing.labels,
            "label_index": listing.label_indices,
            "p_clean": [0.9] * n,
            "is_clean": [True] * n,
            "predicted_label": listing.labels,
            "predicted_index": listing.label_indices,
            "p_predicted": [0.9] * n,
            "sim_pos": [0.3] * n,
            "sim_neg": [0.1] * n,
            "status": ["ok"] * n,
        }
    )
    metadata = {"classes": listing.classes, "dataset": str(small_folder), "source": "folder"}
    results = write_results(frame, metadata, tmp_path / "res" / "r.parquet")
    before, saved = checksums(small_folder), results.read_bytes()
    (tmp_path / "a-file").write_text("not a folder")
    refusals = (
        (small_folder / "model", "inside the dataset"),
        (results.parent, "contains an input"),
        (results, "also an input"),  # the results file itself, with and without --overwrite
        (tmp_path / "a-file", "is a file"),
    )
    for out, why in refusals:
        args = ["train", str(small_folder), "--results", str(results), "--out", str(out)]
        fails(runner.invoke(app, [*args, "--overwrite"]), 2, why)
        fails(runner.invoke(app, args), 2)
    assert checksums(small_folder) == before and results.read_bytes() == saved
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_report_refuses_to_write_onto_results_or_images(review):
    before, results = checksums(review.root), review.results.read_bytes()
    image = sorted(review.root.rglob("*.png"))[0]
    for target in (review.results, image):
        result = runner.invoke(app, ["report", str(review.results), "--html", str(target), "--overwrite", "-q"])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert checksums(review.root) == before and review.results.read_bytes() == results


def test_report_refuses_an_existing_html_without_overwrite(review, tmp_path):
    page = tmp_path / "r.html"
    page.write_text("mine")
    args = ["report", str(review.results), "--html", str(page), "-q"]
    fails(runner.invoke(app, args), 2, "not a file deft-clean wrote")
    fails(runner.invoke(app, [*args, "--overwrite"]), 2, "not a file deft-clean wrote")
    assert page.read_text() == "mine"
    page.unlink()
    assert runner.invoke(app, args).exit_code == 0
    fails(runner.invoke(app, args), 2, "--overwrite")  # its own page: replaced only with --overwrite
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_export_never_destroys_its_own_input(review, tmp_path):
    results = review.results.read_bytes()
    csv = runner.invoke(
        app, ["export", str(review.results), "--out", str(review.results), "--mode", "csv", "--overwrite"]
    )
    fails(csv, 2, "input")
    folder = runner.invoke(app, ["export", str(review.results), "--out", str(review.results.parent), "--overwrite"])
    assert folder.exit_code == 2, folder.output
    assert review.results.read_bytes() == results
    res = tmp_path / "res"
    res.mkdir()
    moved = res / "r.parquet"
    moved.write_bytes(results)
    fails(runner.invoke(app, ["export", str(moved), "--out", str(res), "--overwrite"]), 2, "contains an input")
    assert moved.read_bytes() == results


# 3. a model folder is data


def fake_model(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {
        "backbone": "clip",
        "model_name": "ViT-B-32",
        "model": "ViT-B-32",
        "pretrained": "none",
        "clip_config": None,
        "image_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "classes": ["cat", "dog"],
    }
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.mark.parametrize("name", ["../../../../tmp/victim_deft/settings", "hf-hub:evil/model"])
def test_model_name_from_a_model_folder_cannot_write_or_go_online(tmp_path, name):
    model = fake_model(tmp_path / "model", model_name=name, clip_config={"embed_dim": 8})
    with pytest.raises(DataError, match="model_name"):
        load_model(model)
    assert not Path("/tmp/victim_deft").exists()


# 4. the same root containment at every read


def swap_for_link(review: Review, target: Path) -> Path:
    """Replace a clean row's image by a link to ``target`` (outside the root), as if done after detect."""
    row = review.frame[review.frame["is_clean"] & review.usable].iloc[0]
    file = review.root / row["path"]
    file.unlink()
    file.symlink_to(target)
    return file


def test_copy_export_never_copies_a_file_swapped_for_an_outside_link(review, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((review.root / review.frame["path"].iloc[1]).read_bytes())
    swap_for_link(review, secret)
    out = tmp_path / "out"
    fails(runner.invoke(app, ["export", str(review.results), "--out", str(out), "--mode", "copy"]), 1, "outside")
    assert not out.exists()


def test_image_reads_stay_inside_the_root(review, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((review.root / review.frame["path"].iloc[1]).read_bytes())
    link = swap_for_link(review, secret)
    with pytest.raises(OSError, match="outside the dataset root"):
        load_image(link, root=review.root)
    from deft_clean.outputs.html_review import thumbnail as _thumbnail

    assert _thumbnail(link, review.root) is None


def test_predict_table_refuses_paths_outside_its_folder(small_folder, tmp_path):
    model = fake_model(tmp_path / "model")
    image = sorted(small_folder.rglob("*.png"))[0]
    inner = tmp_path / "inner"
    inner.mkdir()
    for path in (f"../data/{image.relative_to(small_folder).as_posix()}", str(image.resolve())):
        table = write_table(inner, [{"path": path, "label": "cat"}], "list.csv")
        result = runner.invoke(app, ["predict", str(model), str(table), "--out", str(tmp_path / "p.parquet")])
        fails(result, 1, "outside")


# 5. a run folder is locked


def test_second_run_on_the_same_out_fails_at_once(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "r.parquet"
    with run_lock(out):
        fails(detect(tiny_clip, small_folder, out), 2, "another deft-clean run")
    assert not list(tmp_path.glob(".r.parquet*"))  # the lock file is gone with its holder


# 6. a FIFO never hangs the run


def test_fifo_is_an_unusable_row_not_a_hang(tiny_clip, small_folder, tmp_path):
    os.mkfifo(small_folder / "cat" / "x.png")
    with pytest.raises(OSError, match="not a regular file"):
        load_image(small_folder / "cat" / "x.png")
    out = tmp_path / "r.parquet"

    def hung(signum, frame):
        raise TimeoutError("detect hung on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(240)
    try:
        result = detect(tiny_clip, small_folder, out, "--epochs", "1")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.exit_code == 0, result.output
    frame, _ = load_results(out)
    assert frame.set_index("path").loc["cat/x.png", "status"].startswith("unreadable")


def test_second_signal_stops_a_stuck_run_at_once():
    from deft_clean.run.checkpoints import Interrupted, StopOnSignal

    with pytest.raises(Interrupted, match="second signal"), StopOnSignal("rerun") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # the first only asks the loop to stop at its next check
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)


# 7. names that are not UTF-8


def test_non_utf8_file_name_is_refused_before_training(tiny_clip, small_folder, tmp_path):
    source = sorted((small_folder / "cat").glob("*.png"))[0]
    os.rename(os.fsencode(source), os.fsencode(small_folder / "cat") + b"/img_\xff.png")
    out = tmp_path / "r.parquet"
    fails(detect(tiny_clip, small_folder, out), 1, "not valid UTF-8")
    assert not out.exists()


# 8. every file read back is validated


def test_results_with_string_is_clean_are_refused(review, small_folder, tmp_path):
    frame, metadata = load_results(review.results)
    frame["is_clean"] = frame["is_clean"].map({True: "yes", False: "no"})
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({b"deft_clean": json.dumps(metadata).encode()})
    bad = tmp_path / "bad.parquet"
    pq.write_table(table, bad)
    result = runner.invoke(app, ["train", str(review.root), "--results", str(bad), "--clean-only"])
    fails(result, 1, str(bad), "'is_clean'")


def test_results_with_label_index_out_of_range_are_refused(review, tmp_path):
    frame, metadata = load_results(review.results)
    frame.loc[0, "label_index"] = 99
    bad = write_results(frame, metadata, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="'label_index'"):
        load_results(bad)


def test_model_config_with_classes_as_a_string_is_refused(tmp_path):
    with pytest.raises(DataError, match="'classes'"):
        load_model(fake_model(tmp_path / "model", classes="cat"))


# 9. numeric options


@pytest.mark.parametrize("value", ["nan", "inf", "1e30", "-0.1"])
def test_detect_refuses_absurd_learning_rates(tiny_clip, small_folder, tmp_path, value):
    out = tmp_path / "r.parquet"
    fails(detect(tiny_clip, small_folder, out, f"--lr={value}"), 2, "--lr")
    assert not out.exists()


def test_configs_refuse_nan_and_infinity():
    for bad in ({"momentum": float("nan")}, {"weight_decay": float("inf")}, {"grad_clip": float("nan")}):
        with pytest.raises(UsageError):
            DetectConfig(**bad)
    for bad in ({"lr": float("nan")}, {"weight_decay": float("nan")}, {"lr": 1e30}):
        with pytest.raises(UsageError):
            TrainConfig(**bad)


# 10. damaged checkpoints


@pytest.mark.parametrize("kind", ["empty", "garbage", "text", "truncated", "missing"])
def test_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, kind):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"signature": json.dumps({"a": 1}), "x": torch.zeros(1000)})
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x89garbage" * 50)
    elif kind == "text":  # "echo junk > checkpoint.pt": pickle reads it as a key that does not exist
        path.write_bytes(b"junk\n")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    if kind == "missing":
        save_checkpoint(path, {"x": torch.zeros(2)})
    with pytest.raises(DataError) as info:
        load_checkpoint(path, {"a": 1})
    message = str(info.value)
    assert str(path) in message and "--resume" in message and len(message.splitlines()) == 1
    if kind == "empty":
        state = None
    else:
        save_checkpoint(path, {"signature": json.dumps({"a": 1})})
        state = load_checkpoint(path, {"a": 1})
        with pytest.raises(DataError, match="'optimizer'"):
            state["optimizer"]


def test_detect_resume_with_a_damaged_checkpoint(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "r.parquet"
    run = tmp_path / "r.parquet.run"
    run.mkdir()
    (run / "detect_checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    fails(detect(tiny_clip, small_folder, out, "--resume"), 1, "detect_checkpoint.pt", "delete it")


# 11. unwritable outputs are found before any work; a full disk is one line


def test_out_under_a_regular_file_fails_before_loading_the_model(tiny_clip, small_folder, tmp_path, monkeypatch):
    import deft_clean.models.clip as clip

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(clip, "load_clip", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(detect(tiny_clip, small_folder, blocker / "r.parquet"), 2, "not a folder")


@pytest.mark.parametrize("name", [".", "/"])
def test_out_naming_a_folder_without_a_name_is_a_usage_error(small_folder, tmp_path, monkeypatch, name):
    import deft_clean.models.clip as clip

    monkeypatch.setattr(clip, "load_clip", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["detect", str(small_folder), "--out", name, "--device", "cpu", "-q"])
    fails(result, 2, "is a folder")


def test_an_options_object_and_its_fields_are_not_both_taken(small_folder, tmp_path):
    import deft_clean
    from deft_clean.run.options import ReadOptions, RunOptions

    with pytest.raises(UsageError, match="not both"):
        deft_clean.detect(small_folder, reading=ReadOptions(), label_col="y", device="cpu", quiet=True)
    with pytest.raises(UsageError, match="not both"):
        deft_clean.detect(small_folder, run=RunOptions(), out=tmp_path / "r.parquet", device="cpu", quiet=True)
    assert not (tmp_path / "r.parquet").exists()


def test_disk_full_is_one_line(tmp_path):
    def write(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left") as info:
        write_atomic(tmp_path / "r.parquet", write)
    assert str(tmp_path / "r.parquet") in str(info.value)
    assert not list(tmp_path.iterdir())


# 12. offline with a hub model fails within seconds


def test_offline_hub_model_fails_fast(small_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["detect", str(small_folder), "--out", str(tmp_path / "r.parquet"), "--model", "ViT-B-32"]
    result = runner.invoke(app, [*args, "--pretrained", "openai", "--device", "cpu", "-q"])
    fails(result, 1, "HF_HUB_OFFLINE")


# 13. permissions follow the umask; stale temporaries are cleaned up


def test_written_files_respect_the_umask(review, tmp_path):
    frame, metadata = load_results(review.results)
    previous = os.umask(0o022)
    try:
        out = write_results(frame, metadata, tmp_path / "r.parquet")
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o644


def test_stale_temporaries_are_removed_live_ones_kept(review, tmp_path):
    frame, metadata = load_results(review.results)
    stale = tmp_path / ".r.parquet.dead1234.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / ".r.parquet.live5678.tmp"
    live.write_bytes(b"being written")
    with open(live, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        write_results(frame, metadata, tmp_path / "r.parquet")
        assert not stale.exists() and live.exists()


# 14. escape sequences never reach the terminal raw


def test_labels_with_escape_sequences_are_shown_escaped(review, tmp_path):
    frame, metadata = load_results(review.results)
    evil = "\x1b]0;pwned\x07\x1b[31mred"
    frame.loc[frame.index[0], "label"] = evil
    frame.loc[frame.index[0], "path"] = f"{evil}.png"
    metadata = {**metadata, "classes": [*metadata["classes"], evil]}  # label and index must agree
    frame.loc[frame.index[0], "label_index"] = len(metadata["classes"]) - 1
    results = write_results(frame, metadata, tmp_path / "evil.parquet")
    result = runner.invoke(app, ["report", str(results)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b]0;pwned" in result.output


def test_error_messages_escape_control_characters(tmp_path):
    result = runner.invoke(app, ["detect", str(tmp_path / "no\x1b]0;x\x07pe"), "--out", str(tmp_path / "r.parquet")])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\\x1b" in result.output
    assert printable("a\nb\x9b") == "a\\x0ab\\x9b"


# 15. small things


def test_rebuilding_a_model_prints_no_random_init_warning(tiny_clip, caplog):
    from deft_clean.models.classifier import _clip_architecture

    config = json.loads(tiny_clip.config.read_text())
    with caplog.at_level("WARNING"):
        _clip_architecture({"model_name": tiny_clip.config.stem, "clip_config": config}, torch.device("cpu"))
    assert "No pretrained weights" not in caplog.text


def test_predict_on_a_file_says_it_is_a_file(small_folder, tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    fails(
        runner.invoke(app, ["predict", str(file), str(small_folder), "-o", str(tmp_path / "p.parquet")]), 2, "is a file"
    )


def test_top_level_images_are_counted_in_a_warning(small_folder, caplog):
    image = sorted(small_folder.rglob("*.png"))[0]
    (small_folder / "loose.png").write_bytes(image.read_bytes())
    with caplog.at_level("WARNING"):
        list_dataset(small_folder)
    assert "1 image(s) at the top level" in caplog.text


def test_duplicate_paths_in_a_table_are_refused(small_folder):
    rows = folder_rows(small_folder)
    first = rows[0]["path"]
    for duplicate in (first, f"{first.split('/')[0]}/../{first}"):
        table = write_table(small_folder, [*rows, {"path": duplicate, "label": "dog"}], "list.csv")
        with pytest.raises(DataError, match="listed twice"):
            list_dataset(table)


def test_export_with_a_very_long_label_is_one_line(review, tmp_path):
    frame, metadata = load_results(review.results)
    long = "x" * 10_000
    row = frame[frame["is_clean"]].index[0]
    frame.loc[row, "label"] = long
    metadata = {**metadata, "classes": [*metadata["classes"], long]}  # label and index must agree
    frame.loc[row, "label_index"] = len(metadata["classes"]) - 1
    # such a label comes from a table (a class folder's name is at most 255 bytes): the table gives it now
    table = review.root / "list.csv"
    frame[["path", "label"]].to_csv(table, index=False)
    metadata = {**metadata, "source": "table", "dataset": str(table)}
    results = write_results(frame, metadata, tmp_path / "long.parquet")
    result = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "out")])
    fails(result, 1, "too long", "--mode csv")
