"""Issue 27, item 6: one clear line and exit 1/2 for a full disk, absurd numbers and odd rows, on real files.

A full disk is a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) in a subprocess: every write past it fails
the way a full disk does. Numeric options are bounded before anything is allocated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean.cli.app import app
from deft_clean.inputs.listing import list_dataset
from deft_clean.run.errors import DataError
from tests.review_data import make_review

from ..conftest import detected_and_trained, fails, make_noisy_folder, write_table

runner = CliRunner()
FAST = {"device": "cpu", "num_workers": 0, "quiet": True, "hflip": False}
ROOT = Path(__file__).resolve().parents[2]


def limited(args: list[str], limit: int, home: Path) -> subprocess.CompletedProcess:
    """``deft-clean ARGS`` in a subprocess that may not write a file past ``limit`` bytes (a full disk)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from deft_clean.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def one_line(done: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    return detected_and_trained(tiny_clip, tmp_path_factory.mktemp("bounds"), seed=6)


# ----------------------------------------------------------------------------------------------------
# a full disk


def test_full_disk_in_export_copy_is_one_line_and_leaves_nothing(tmp_path):
    review = make_review(tmp_path)
    out = tmp_path / "clean"
    done = limited(["export", review.results, "--out", out, "--mode", "copy"], 200, tmp_path)
    one_line(done, 1, "no space left")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".clean")]


def test_full_disk_in_train_is_one_line(trained, tmp_path):
    data, results, _ = trained
    out = tmp_path / "model"
    args = ["train", data, "--results", results, "--out", out, "--epochs", "1", "--device", "cpu", "--num-workers", "0"]
    done = limited([*args, "-q"], 64 * 1024, tmp_path)
    one_line(done, 1, "no space left")
    assert not [p for p in out.rglob("*.tmp")]


def test_full_disk_under_cache_is_one_line_not_sigbus(tiny_clip, tmp_path):
    data = make_noisy_folder(tmp_path / "data", per_class=2, rate=0.0, seed=3).root
    cache = tmp_path / "cache"
    args = ["detect", data, "--out", tmp_path / "r.parquet", "--quick", "--cache", cache, *tiny_clip.cli_args()]
    done = limited(args, 16 * 1024, tmp_path)
    one_line(done, 1, "no space left")
    assert not list(cache.rglob("*.tmp"))


def test_a_read_only_train_out_is_refused_before_loading(trained, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    data, results, _ = trained
    out = tmp_path / "model"
    out.mkdir()
    out.chmod(0o500)
    try:
        args = ["train", str(data), "--results", str(results), "--out", str(out), "--device", "cpu"]
        fails(runner.invoke(app, args), 2, "not writable")
    finally:
        out.chmod(0o700)


# ----------------------------------------------------------------------------------------------------
# numbers bounded before any allocation


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--n-ctx", "100000"], "--n-ctx"),
        (["--num-workers", "-1"], "--num-workers"),
        (["--batch-size", "0"], "batch"),
        (["--vpt-tokens", "1000000000"], "--vpt-tokens"),
        (["--vpt-depth", "-3"], "--vpt-depth"),
        (["--vpt-depth", "1000", "--epochs", "1"], "vision layers"),  # the tiny CLIP has 3
    ],
)
def test_detect_numbers_are_bounded(tiny_clip, tmp_path, extra, fragment):
    data = make_noisy_folder(tmp_path / "data", per_class=2, rate=0.0, seed=3).root
    args = ["detect", str(data), "--out", str(tmp_path / "r.parquet"), *tiny_clip.cli_args(), *extra]
    fails(runner.invoke(app, args), 2, fragment)
    assert not (tmp_path / "r.parquet").exists()


def test_n_ctx_is_bounded_by_the_models_text_tower(tiny_clip, tmp_path):
    data = make_noisy_folder(tmp_path / "data", per_class=2, rate=0.0, seed=3).root
    args = ["detect", str(data), "--out", str(tmp_path / "r.parquet"), *tiny_clip.cli_args()]
    fails(runner.invoke(app, [*args, "--n-ctx", "40"]), 2, "--n-ctx", "holds 32 tokens")  # the tiny CLIP's 32


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "-1"], "--top-k"),
        (["--batch-size", "0"], "--batch-size"),
        (["--num-workers", "-1"], "--num-workers"),
    ],
)
def test_predict_numbers_are_bounded(trained, tmp_path, extra, fragment):
    data, _, model = trained
    args = ["predict", str(model), str(data), "--out", str(tmp_path / "p.parquet"), "--device", "cpu", *extra]
    fails(runner.invoke(app, args), 2, fragment)
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize(
    ("size", "fragment"), [("100000", "at most 2048"), ("4096", "2048"), ("200", "4x"), ("8", "16")]
)
def test_train_image_size_is_bounded_by_the_model(trained, tmp_path, size, fragment):
    data, results, _ = trained
    args = ["train", str(data), "--results", str(results), "--out", str(tmp_path / "m"), "--device", "cpu"]
    fails(runner.invoke(app, [*args, "--num-workers", "0", "--image-size", size]), 2, "--image-size", fragment)


def test_a_model_folder_asking_for_100000_layers_is_refused_at_once(trained, tmp_path):
    data, _, model = trained
    hostile = tmp_path / "hostile"
    shutil.copytree(model, hostile)
    config = json.loads((hostile / "config.json").read_text())
    config["clip_config"]["vision_cfg"]["layers"] = 100_000
    (hostile / "config.json").write_text(json.dumps(config))
    out = str(tmp_path / "p.parquet")  # not the current folder's predictions.parquet: the checkout may be read-only
    args = ["predict", str(hostile), str(data), "--out", out, "--device", "cpu", "--num-workers", "0", "-q"]
    fails(runner.invoke(app, args), 1, "layers")  # refused from the config, before any layer is built


# ----------------------------------------------------------------------------------------------------
# odd rows: a FIFO is an unusable row, paths are taken byte for byte


def test_a_fifo_row_in_a_table_is_an_unusable_row(tiny_clip, tmp_path):
    data = make_noisy_folder(tmp_path / "data", per_class=3, rate=0.0, seed=3).root
    rows = [{"path": p.relative_to(data).as_posix(), "label": p.parent.name} for p in sorted(data.rglob("*.png"))]
    os.mkfifo(data / rows[0]["label"] / "pipe.png")
    rows.append({"path": f"{rows[0]['label']}/pipe.png", "label": rows[0]["label"]})
    table = write_table(data, rows)
    out = tmp_path / "r.parquet"
    result = runner.invoke(app, ["detect", str(table), "--out", str(out), "--quick", *tiny_clip.cli_args()])
    assert result.exit_code == 0, result.output
    frame, _ = deft_clean.load_results(out)
    status = dict(zip(frame["path"], frame["status"], strict=True))
    assert status[rows[-1]["path"]] != "ok" and "regular file" in status[rows[-1]["path"]]
    assert sum(s == "ok" for s in status.values()) == len(rows) - 1


def test_table_paths_are_taken_byte_for_byte(small_folder):
    first = sorted(small_folder.rglob("*.png"))[0]
    rel = first.relative_to(small_folder).as_posix()
    for padded in (f" {rel}", f"{rel} "):
        table = small_folder / "t.csv"
        table.write_text(f"path,label\n{padded},cat\n")
        with pytest.raises(DataError, match="do not exist"):
            list_dataset(table)
    twin = first.with_name(first.name + " ")
    shutil.copy(first, twin)
    table.write_text(f"path,label\n{rel},cat\n{rel} ,dog\n")
    assert list_dataset(table).paths == [rel, f"{rel} "]  # two files, two rows


def test_decision_paths_are_taken_byte_for_byte(tmp_path):
    review = make_review(tmp_path)
    path = review.frame.loc[review.flagged, "path"].iloc[0]
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(f"path,decision,label\n {path},drop,\n")
    args = ["export", str(review.results), "--out", str(tmp_path / "c"), "--decisions", str(decisions)]
    fails(runner.invoke(app, args), 1, "not in the results")
    decisions.write_text(f"path,decision,label\n{path},drop, \n")  # labels and words may still carry spaces
    assert runner.invoke(app, args).exit_code == 0
