"""Issue 22: the 8 holes of the hand attack, each on the real thing (a FIFO, a symlink, a saved Hugging Face
dataset with path-only rows, a WebDataset shard with duplicate keys).

Every refused command is checked to leave every input byte-for-byte as it was (sha256 of the whole
temporary tree). Nothing reads a FIFO or a device unbounded: such reads run under an alarm.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from deft_clean import testing as toy
from deft_clean.cli.app import app
from deft_clean.detecting.health import content_hashes
from deft_clean.inputs.decode import describe_failure, load_image
from deft_clean.inputs.listing import list_dataset
from deft_clean.outputs.results import load_results, write_results
from deft_clean.run.errors import DataError, UsageError
from deft_clean.run.options import DetectConfig, TrainConfig
from deft_clean.run.safety import MAX_FILE_BYTES, Output, check_outputs, printable, read_file
from tests.review_data import Review, checksums, make_review

runner = CliRunner()


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds``."""

    def hung(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(tmp_path: Path, args: list[str], code: int, *fragments: str) -> str:
    """Run the CLI; assert one clean error line with ``code`` and every file under tmp_path unchanged."""
    before = checksums(tmp_path)
    with within(120):
        result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    assert checksums(tmp_path) == before
    return message


def no_model(tmp_path: Path) -> list[str]:
    """Options that make detect fail if it ever got as far as loading a model (every check comes first)."""
    return ["--model", str(tmp_path / "absent-model.json"), "--quiet"]


# 1. a table's folder is the dataset: export never replaces a folder of its images


def table_results(tmp_path: Path, source: str = "table") -> tuple[Path, Path, Path]:
    """A CSV listing red/*.png and blue/*.png and a results Parquet for it (detect on the table, or with
    ``source="folder"`` on the folder); returns (folder, table, results)."""
    folder = tmp_path / "table"
    images, labels = toy.synthetic_images(3, 2, seed=3)
    classes = ["blue", "red"]
    paths = toy.write_image_folder(folder, images, labels, classes)
    table = folder / "list.csv"
    pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths]}).to_csv(table, index=False)
    rows = [
        {
            "path": p,
            "label": classes[k],
            "label_index": int(k),
            "p_clean": 0.9,
            "is_clean": True,
            "predicted_label": classes[k],
            "predicted_index": int(k),
            "p_predicted": 0.9,
            "sim_pos": 0.3,
            "sim_neg": 0.1,
            "status": "ok",
        }
        for p, k in sorted(zip(paths, labels, strict=True))
    ]
    dataset = table if source == "table" else folder
    metadata = {
        "kind": "detect",
        "model": "tiny",
        "classes": classes,
        "dataset": str(dataset.resolve()),
        "source": source,
        "created": "2024-01-01T00:00:00+00:00",
    }
    results = write_results(pd.DataFrame(rows), metadata, tmp_path / "results.parquet")
    return folder, table, results


@pytest.mark.parametrize("inside", ["red", ".", "new"])
def test_export_never_replaces_a_folder_inside_a_tables_folder(tmp_path, inside):
    folder, _, results = table_results(tmp_path)
    out = folder / inside
    refused(tmp_path, ["export", results, "--out", out, "--overwrite", "--mode", "copy"], 2, "dataset")
    assert len(list((folder / "red").glob("*.png"))) == 3


def test_export_never_replaces_a_folder_holding_a_tables_images(tmp_path):
    folder, _, results = table_results(tmp_path)
    refused(tmp_path, ["export", results, "--out", tmp_path, "--overwrite", "--mode", "copy"], 2)
    result = runner.invoke(app, ["export", str(results), "--out", str(tmp_path / "clean"), "--mode", "copy"])
    assert result.exit_code == 0, result.output  # a folder outside the table's folder is fine
    assert len(list((tmp_path / "clean" / "red").glob("*.png"))) == 3


# 2. the decisions file is an input


def decisions_file(review: Review, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    first = review.frame.loc[review.flagged, "path"].iloc[0]
    path.write_text(f"path,decision,label\n{first},keep,\n")
    return path


def test_export_csv_refuses_to_write_over_the_decisions(review, tmp_path):
    decisions = decisions_file(review, tmp_path / "dec.csv")
    args = ["export", review.results, "--out", decisions, "--mode", "csv", "--overwrite", "--decisions", decisions]
    refused(tmp_path, args, 2, "input")


def test_report_refuses_to_write_its_page_over_the_decisions(review, tmp_path):
    decisions = decisions_file(review, tmp_path / "dec.csv")
    args = ["report", review.results, "--html", decisions, "--overwrite", "--decisions", decisions]
    refused(tmp_path, args, 2, "input")


def test_export_folder_refuses_to_replace_a_folder_holding_the_decisions(review, tmp_path):
    decisions = decisions_file(review, tmp_path / "dir" / "decisions.csv")
    args = ["export", review.results, "--out", tmp_path / "dir", "--overwrite", "--decisions", decisions]
    refused(tmp_path, args, 2, "input")
    assert decisions.is_file()


# 3. the cache is never inside the dataset (directly, through a link, or on train)


def test_detect_refuses_a_cache_inside_the_dataset(small_folder, tmp_path):
    args = ["detect", small_folder, "--out", tmp_path / "r.parquet", "--cache", small_folder / "cache"]
    refused(tmp_path, [*args, *no_model(tmp_path)], 2, "--cache", "inside the dataset")
    assert not (small_folder / "cache").exists()


def test_detect_refuses_a_cache_linked_into_the_dataset(small_folder, tmp_path):
    (tmp_path / "cache").symlink_to(small_folder / "cat", target_is_directory=True)
    args = ["detect", small_folder, "--out", tmp_path / "r.parquet", "--cache", tmp_path / "cache"]
    refused(tmp_path, [*args, *no_model(tmp_path)], 2, "--cache", "inside the dataset")


def test_train_refuses_a_cache_inside_the_dataset(tmp_path):
    folder, _, results = table_results(tmp_path, "folder")
    args = ["train", folder, "--results", results, "--out", tmp_path / "model", "--cache", folder / "red" / "c"]
    refused(tmp_path, args, 2, "--cache", "inside the dataset")


# 4. outputs are checked against each other


@pytest.mark.parametrize(
    ("out", "extra", "fragment"),
    [
        ("arrs/features.npy", ["--save-arrays", "arrs"], "inside --save-arrays"),
        ("run/r.parquet", ["--run-dir", "run"], "inside --run-dir"),
        ("c/r.parquet", ["--cache", "c"], "inside --cache"),
        ("r.parquet", ["--save-arrays", "s", "--cache", "s"], "same path"),
        ("r.parquet", ["--run-dir", "k", "--cache", "k/cache"], "inside --run-dir"),
    ],
)
def test_detect_outputs_never_overlap(small_folder, tmp_path, out, extra, fragment):
    options = [str(tmp_path / e) if not e.startswith("--") else e for e in extra]
    args = ["detect", small_folder, "--out", tmp_path / out, *options, *no_model(tmp_path)]
    refused(tmp_path, args, 2, fragment)
    assert not (tmp_path / out).exists()


def test_arrays_folder_may_hold_the_results_file(tmp_path, monkeypatch):
    # Only features.npy, probs.npy and arrays.json are written in --save-arrays: results beside them are safe.
    monkeypatch.chdir(tmp_path)  # the relative outputs are checked for a writable folder: not the checkout's
    check_outputs([Output("a/r.parquet"), Output("a", "save_arrays", folder=True, files=("features.npy",))])
    with pytest.raises(UsageError, match="inside save_arrays"):
        check_outputs([Output("a/features.npy"), Output("a", "save_arrays", folder=True, files=("features.npy",))])


# 5. FIFOs, devices and huge files are never read


def test_health_hashes_never_open_a_fifo(small_folder):
    os.mkfifo(small_folder / "cat" / "x.png")
    listing = list_dataset(small_folder)
    with within(20):
        hashes = content_hashes(listing.root, listing.paths)
    position = listing.paths.index("cat/x.png")
    assert hashes[position] is None
    assert sum(h is not None for h in hashes) == len(hashes) - 1


def test_a_device_file_is_refused_before_any_read(tmp_path):
    with within(10), pytest.raises(OSError, match="not a regular file"):
        read_file("/dev/zero")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "zero.png").symlink_to("/dev/zero")
    with within(10), pytest.raises(OSError):
        load_image(tmp_path / "cat" / "zero.png", root=tmp_path)


def test_a_huge_sparse_file_is_refused_by_its_size(small_folder):
    big = small_folder / "cat" / "big.png"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk space used
    with within(10), pytest.raises(OSError, match="over the"):
        load_image(big, root=small_folder)
    listing = list_dataset(small_folder)
    with within(10):
        assert content_hashes(listing.root, listing.paths)[listing.paths.index("cat/big.png")] is None


# 6 and 8. Hugging Face rows: only bytes in the Arrow data or files inside the saved folder are read


def png_bytes(seed: int) -> bytes:
    images, _ = toy.synthetic_images(1, 1, seed=seed)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    return buffer.getvalue()


def saved_path_rows(tmp_path: Path) -> tuple[Path, list[str]]:
    """A saved dataset with an Image column whose rows hold bytes, paths (inside, outside, cwd-relative,
    a FIFO, /dev/zero) or nothing. save_to_disk would embed the files, so the Image feature is put back in
    the saved dataset_info.json, as a hand-made Arrow file would have it. Returns (folder, row kinds)."""
    datasets = pytest.importorskip("datasets")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(1))
    folder = tmp_path / "hf"
    rows = {
        "bytes": {"bytes": png_bytes(2), "path": None},
        "inside": {"bytes": None, "path": "inside.png"},
        "absolute": {"bytes": None, "path": str(outside)},
        "cwd": {"bytes": None, "path": "outside.png"},  # resolves to tmp_path/outside.png from the cwd
        "fifo": {"bytes": None, "path": "fifo.png"},
        "device": {"bytes": None, "path": "/dev/zero"},
        "empty": {"bytes": None, "path": None},
        "none": None,
    }
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(list(rows.values()), type=image_type), "label": ["a", "b"] * 4})
    datasets.Dataset(table).save_to_disk(str(folder))
    info_file = folder / "dataset_info.json"
    info = json.loads(info_file.read_text())
    info["features"]["image"] = {"_type": "Image"}
    info_file.write_text(json.dumps(info))
    (folder / "inside.png").write_bytes(png_bytes(3))
    os.mkfifo(folder / "fifo.png")
    return folder, list(rows)


def test_hf_rows_read_only_arrow_bytes_and_files_inside_the_saved_folder(tmp_path, monkeypatch):
    folder, kinds = saved_path_rows(tmp_path)
    monkeypatch.chdir(tmp_path)
    listing = list_dataset(folder)
    statuses = {}
    with within(30):
        for i, kind in enumerate(kinds):
            try:
                listing.images.open(i)
                statuses[kind] = "ok"
            except Exception as exc:  # what the engine turns into a row status
                statuses[kind] = describe_failure(exc)
    assert statuses["bytes"] == statuses["inside"] == "ok"
    for kind in ("absolute", "device"):
        assert "outside the dataset root" in statuses[kind], statuses
    assert "FileNotFoundError" in statuses["cwd"]  # relative paths start in the saved folder, never in the cwd
    assert "not a regular file" in statuses["fifo"]
    assert "no image" in statuses["empty"] and "no image" in statuses["none"]
    with within(30):
        hashes = content_hashes(listing.root, listing.paths, images=listing.images)
    assert [h is not None for h in hashes] == [k in ("bytes", "inside") for k in kinds]


def test_hf_detect_marks_path_rows_unusable_and_finishes(tiny_clip, tmp_path, monkeypatch):
    folder, kinds = saved_path_rows(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.parquet"
    with within(240):
        result = runner.invoke(app, ["detect", str(folder), "--out", str(out), *tiny_clip.cli_args()])
    assert result.exit_code == 0, result.output
    frame, _ = load_results(out)
    usable = (frame["status"] == "ok").tolist()
    assert usable == [k in ("bytes", "inside") for k in kinds]


def test_hf_string_image_column_reads_no_outside_file(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "outside.png").write_bytes(png_bytes(1))
    table = datasets.Dataset.from_dict({"file": [str(tmp_path / "outside.png"), "outside.png"], "label": ["a", "b"]})
    table.save_to_disk(str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    listing = list_dataset(tmp_path / "hf", path_col="file")
    with pytest.raises(OSError, match="outside the dataset root"):
        listing.images.open(0)
    with pytest.raises(FileNotFoundError):  # relative to the saved folder, not to the working directory
        listing.images.open(1)


def test_hf_object_path_rows_are_read_only_inside_the_given_root(tmp_path):
    datasets = pytest.importorskip("datasets")
    inside, outside = tmp_path / "images", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.png").write_bytes(png_bytes(1))
    (outside / "b.png").write_bytes(png_bytes(2))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = {"image": [str(inside / "a.png"), str(outside / "b.png")], "label": ["a", "b"]}
    table = datasets.Dataset.from_dict(rows, features=features)  # in memory: rows are paths, no bytes
    with pytest.raises(OSError, match="pass root="):
        list_dataset(table).images.open(0)
    listing = list_dataset(table, root=inside)
    assert listing.images.open(0).mode == "RGB"
    with pytest.raises(OSError, match="outside the dataset root"):
        listing.images.open(1)


# 7. duplicate WebDataset keys


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("order", ["later", "adjacent"])
def test_duplicate_webdataset_keys_are_an_error_naming_shard_and_key(tmp_path, order):
    pytest.importorskip("webdataset")
    one = [("s0.png", png_bytes(1)), ("s0.cls", b"cat")]
    two = [("s1.png", png_bytes(2)), ("s1.cls", b"dog")]
    again = [("s0.png", png_bytes(3)), ("s0.cls", b"dog")]
    members = [*one, *two, *again] if order == "later" else [*one, *again[:1], *two]
    shard = write_shard(tmp_path / "shard-000.tar", members)
    with pytest.raises(DataError, match=r"shard-000\.tar: sample key 's0' appears twice"):
        list_dataset(str(shard))
    refused(tmp_path, ["detect", shard, "--out", tmp_path / "r.parquet", *no_model(tmp_path)], 1, "'s0'")


# 8. one clear line (or an unusable row) instead of a generic error


def test_label_key_json_without_a_field_is_a_usage_error(tmp_path):
    pytest.importorskip("webdataset")
    shard = write_shard(tmp_path / "s.tar", [("s0.png", png_bytes(1)), ("s0.json", b'{"label": "cat"}')])
    args = ["detect", shard, "--out", tmp_path / "r.parquet", "--label-key", "json:", *no_model(tmp_path)]
    refused(tmp_path, args, 2, "--label-key")


def test_deeply_nested_json_label_is_one_line(tmp_path):
    pytest.importorskip("webdataset")
    deep = b"[" * 100_000 + b"]" * 100_000
    shard = write_shard(tmp_path / "s.tar", [("s0.png", png_bytes(1)), ("s0.json", deep)])
    with pytest.raises(DataError, match="no field 'label'"):
        list_dataset(str(shard), label_key="json:label")


def test_symlink_loop_is_an_unusable_row(small_folder):
    (small_folder / "cat" / "a.png").symlink_to("b.png")
    (small_folder / "cat" / "b.png").symlink_to("a.png")
    listing = list_dataset(small_folder)
    with pytest.raises(OSError):
        listing.images.open(listing.paths.index("cat/a.png"))


def test_symlink_loop_in_a_table_is_one_line(small_folder):
    (small_folder / "cat" / "a.png").symlink_to("a.png")
    table = small_folder / "t.csv"
    table.write_text("path,label\ncat/a.png,cat\n")
    with pytest.raises(DataError, match="do not exist"):
        list_dataset(table)


def nest(folder: Path, depth: int) -> None:
    """``depth`` folders one inside the other (far past PATH_MAX), made through fds, two open at a time."""
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def unnest(folder: Path) -> None:
    """Remove what :func:`nest` made, deepest first, through one fd every 100 levels (26 open for 2,500 levels:
    the default limit of 1,024 open files holds)."""

    def chain(levels: int) -> str:
        return os.path.join(*["d"] * levels)

    def exists(levels: int, fd: int) -> bool:
        try:
            os.stat(chain(levels), dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    anchors = [os.open(folder, os.O_RDONLY)]
    while exists(100, anchors[-1]):
        anchors.append(os.open(chain(100), os.O_RDONLY, dir_fd=anchors[-1]))
    depth = next(k for k in range(100) if not exists(k + 1, anchors[-1]))
    while anchors:
        anchor = anchors.pop()
        for levels in range(depth, 0, -1):
            os.rmdir(chain(levels), dir_fd=anchor)
        os.close(anchor)
        depth = 100


def test_2500_nested_folders_are_one_line(small_folder):
    nest(small_folder / "cat", 2500)
    try:
        with pytest.raises(DataError, match="nested more than"):
            list_dataset(small_folder)
    finally:
        unnest(small_folder / "cat")


def test_deeply_nested_results_metadata_is_one_line(review, tmp_path):
    table = pq.read_table(review.results)
    deep = table.replace_schema_metadata({b"deft_clean": b"[" * 100_000 + b"]" * 100_000})
    pq.write_table(deep, tmp_path / "deep.parquet")
    with pytest.raises(DataError, match="not valid JSON"):
        load_results(tmp_path / "deep.parquet")


@pytest.mark.parametrize("damage", ["nan", "duplicate"])
def test_results_with_nan_scores_or_duplicate_paths_are_one_line(review, tmp_path, damage):
    table = pq.read_table(review.results)
    name = "p_clean" if damage == "nan" else "path"
    values = table.column(name).to_pylist()
    values[2] = float("nan") if damage == "nan" else values[1]
    position = table.column_names.index(name)
    bad = table.set_column(position, table.schema.field(name), pa.array(values, type=table.schema.field(name).type))
    pq.write_table(bad, tmp_path / "bad.parquet")
    fragment = "NaN" if damage == "nan" else "more than one row"
    with pytest.raises(DataError, match=fragment):
        load_results(tmp_path / "bad.parquet")
    refused(tmp_path, ["export", tmp_path / "bad.parquet", "--out", tmp_path / "x"], 1, fragment)


def test_binary_class_names_file_is_one_line(small_folder, tmp_path):
    names = tmp_path / "names.csv"
    names.write_bytes(bytes(range(256)) * 4)
    args = ["detect", small_folder, "--out", tmp_path / "r.parquet", "--class-names", names, *no_model(tmp_path)]
    refused(tmp_path, args, 1, "names.csv", "UTF-8")


def test_enlarged_clip_config_is_refused_before_allocating(tmp_path):
    import torch
    from safetensors.torch import save_file

    from deft_clean.models.classifier import load_model

    folder = tmp_path / "model"
    folder.mkdir()
    clip_config = {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 32, "layers": 48, "width": 2048, "patch_size": 8},  # about 2.4G parameters
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    config = {
        "backbone": "clip",
        "model_name": "enlarged",
        "model": "enlarged.json",
        "pretrained": "none",
        "clip_config": clip_config,
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "classes": ["cat", "dog"],
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"head.weight": torch.zeros(2, 1024)}, str(folder / "model.safetensors"))  # a real, small file
    with within(60), pytest.raises(DataError, match="MB of weights"):
        load_model(folder)


@pytest.mark.parametrize("epochs", [10**12, 1e12, 10_001])
def test_absurd_epoch_counts_are_refused(epochs):
    for config in (DetectConfig, TrainConfig):
        with pytest.raises(UsageError, match="epochs"):
            config(epochs=epochs)


def test_absurd_epochs_on_the_command_line(small_folder, tmp_path):
    args = ["detect", small_folder, "--out", tmp_path / "r.parquet", "--epochs", "1000000000000", *no_model(tmp_path)]
    refused(tmp_path, args, 2, "--epochs")


def test_bidi_and_format_characters_are_escaped():
    assert printable("cat\u202egnp.exe") == "cat\\u202egnp.exe"
    assert printable("a\u200bb\u2028c") == "a\\u200bb\\u2028c"
    assert printable("chat noir é") == "chat noir é"


def test_bidi_override_in_an_error_line_is_escaped(tmp_path):
    message = refused(tmp_path, ["detect", tmp_path / "evil\u202egnp.csv", "--out", tmp_path / "r.parquet"], 2)
    assert "\u202e" not in message and "\\u202e" in message


def test_export_copy_refuses_a_source_swapped_for_a_fifo(review, tmp_path):
    kept = review.frame.loc[review.usable & review.frame["is_clean"], "path"].iloc[0]
    source = review.root / kept
    source.unlink()
    os.mkfifo(source)
    with within(30):
        result = runner.invoke(app, ["export", str(review.results), "--out", str(tmp_path / "x"), "--mode", "copy"])
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "x").exists()


def test_a_shard_swapped_for_a_fifo_after_listing_is_an_unusable_row(tmp_path):
    pytest.importorskip("webdataset")
    members = [("s0.png", png_bytes(1)), ("s0.cls", b"cat"), ("s1.png", png_bytes(2)), ("s1.cls", b"dog")]
    shard = write_shard(tmp_path / "s.tar", members)
    listing = list_dataset(str(shard))
    shard.unlink()
    os.mkfifo(shard)
    with within(10), pytest.raises(OSError, match="not a regular file"):
        listing.images.open(0)
