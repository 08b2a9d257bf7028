"""The command line: bad input gives one line on stderr, the right exit code, and no output file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean.cli.app import app
from tests.conftest import fails, folder_rows, write_table

runner = CliRunner()


def run_detect(tiny_clip, dataset: Path, out: Path, *extra: str):
    return runner.invoke(app, ["detect", str(dataset), "--out", str(out), *tiny_clip.cli_args(), *extra])


def assert_clean_failure(result, out: Path, code: int, *fragments: str) -> None:
    fails(result, code, *fragments)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary left behind


def test_detect_cli_writes_parquet_and_summary(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "out" / "results.parquet"
    result = runner.invoke(app, ["detect", str(small_folder), "--out", str(out), *tiny_clip.cli_args()[:-1]])
    assert result.exit_code == 0, result.output
    frame, metadata = deft_clean.load_results(out)
    assert len(frame) == 12
    assert metadata["classes"] == ["cat", "dog", "sea_lion"]
    assert metadata["prompt_names"] == ["cat", "dog", "sea lion"]
    assert "12 samples" in result.stdout and str(out) in result.stdout


def test_missing_dataset(tiny_clip, tmp_path):
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, tmp_path / "nope", out), out, 2, "not found")


def test_not_a_folder_or_table(tiny_clip, tmp_path):
    file = tmp_path / "data.txt"
    file.write_text("hello")
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, file, out), out, 2, "neither")


def test_single_class(tiny_clip, small_folder, tmp_path):
    for name in ("dog", "sea_lion"):
        for f in (small_folder / name).iterdir():
            f.unlink()
        (small_folder / name).rmdir()
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, small_folder, out), out, 1, "at least 2")


def test_empty_class_folder(tiny_clip, small_folder, tmp_path):
    (small_folder / "empty").mkdir()
    (small_folder / "empty" / "notes.txt").write_text("not an image")
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, small_folder, out), out, 1, "empty", "holds no images")


def test_csv_without_columns(tiny_clip, small_folder, tmp_path):
    rows = [{"file": r["path"], "label": r["label"]} for r in folder_rows(small_folder)]
    out = tmp_path / "r.parquet"
    table = write_table(small_folder, rows)
    assert_clean_failure(run_detect(tiny_clip, table, out), out, 1, "missing column", "'path'")


def test_csv_with_empty_label(tiny_clip, small_folder, tmp_path):
    rows = folder_rows(small_folder)
    rows[3]["label"] = ""
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, write_table(small_folder, rows), out), out, 1, "empty 'label'")


def test_csv_listing_missing_file(tiny_clip, small_folder, tmp_path):
    rows = folder_rows(small_folder) + [{"path": "cat/ghost.png", "label": "cat"}]
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, write_table(small_folder, rows), out), out, 1, "do not exist")


def test_csv_path_escaping_root(tiny_clip, small_folder, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((small_folder / "cat").glob("*.png").__next__().read_bytes())
    rows = folder_rows(small_folder) + [{"path": "../secret.png", "label": "cat"}]
    out = tmp_path / "r.parquet"
    assert_clean_failure(
        run_detect(tiny_clip, write_table(small_folder, rows), out), out, 1, "outside the dataset root"
    )


def test_label_missing_from_class_names(tiny_clip, small_folder, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"cat": "cat", "dog": "dog"}))
    out = tmp_path / "r.parquet"
    result = run_detect(tiny_clip, small_folder, out, "--class-names", str(names))
    assert_clean_failure(result, out, 1, "missing from --class-names", "sea_lion")


def test_missing_weights_file(small_folder, tmp_path, tiny_clip):
    out = tmp_path / "r.parquet"
    args = [
        "detect",
        str(small_folder),
        "--out",
        str(out),
        "--model",
        str(tiny_clip.config),
        "--pretrained",
        str(tmp_path / "nope.pt"),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert_clean_failure(runner.invoke(app, args), out, 1, "weights file not found")


def test_unknown_model_name(small_folder, tmp_path):
    out = tmp_path / "r.parquet"
    args = ["detect", str(small_folder), "--out", str(out), "--model", "ViT-Q-99", "--device", "cpu"]
    assert_clean_failure(runner.invoke(app, args), out, 2, "unknown --model")


def test_bad_option_value_is_usage_error(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "r.parquet"
    assert_clean_failure(run_detect(tiny_clip, small_folder, out, "--clean-rule", "vibes"), out, 2, "--clean-rule")


def test_debug_shows_traceback(tiny_clip, tmp_path):
    result = run_detect(tiny_clip, tmp_path / "nope", tmp_path / "r.parquet", "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, deft_clean.UsageError)


def test_corrupt_images_become_rows_with_status(tiny_clip, small_folder, tmp_path):
    (small_folder / "cat" / "zero.png").write_bytes(b"")
    (small_folder / "dog" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = next((small_folder / "dog").glob("*.png")).read_bytes()
    (small_folder / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "r.parquet"
    result = run_detect(tiny_clip, small_folder, out)
    assert result.exit_code == 0, result.output
    frame, _ = deft_clean.load_results(out)
    assert len(frame) == 15
    bad = frame[frame["path"].isin(["cat/zero.png", "dog/garbage.jpg", "dog/truncated.png"])]
    assert len(bad) == 3
    assert bad["status"].str.startswith("unreadable").all()
    assert bad["p_clean"].isna().all() and not bad["is_clean"].any()
    assert (bad["predicted_index"] == -1).all()
    good_rows = frame[frame["status"] == "ok"]
    assert len(good_rows) == 12 and good_rows["p_clean"].notna().all()


def test_python_dash_m_matches_console_script():
    result = subprocess.run([sys.executable, "-m", "deft_clean", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "detect" in result.stdout


@pytest.mark.parametrize("args", [["detect"], ["detect", "a", "--epochs", "x"], ["nope"]])
def test_typer_usage_errors_exit_2(args):
    assert runner.invoke(app, args).exit_code == 2


def test_cache_folder_that_cannot_be_made_is_usage_error(tiny_clip, small_folder, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    out = tmp_path / "results.parquet"
    result = run_detect(tiny_clip, small_folder, out, "--cache", str(blocker))
    assert_clean_failure(result, out, 2, "--cache", "is a file")  # refused with the other outputs, before the model


def test_detect_cli_with_cache_fills_it(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "results.parquet"
    result = run_detect(tiny_clip, small_folder, out, "--cache", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cache" / "32px-v1").glob("shard-*.npy"))) == 1
