"""detect --save-arrays: features and class probabilities for other tools, rows aligned with the Parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean.cli.app import app
from deft_clean.outputs.arrays import load_arrays

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tiny_clip, noisy_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    result = deft_clean.detect(
        noisy_folder.root,
        out=folder / "results.parquet",
        save_arrays=folder / "arrays",
        **tiny_clip.options(quick=True),
    )
    return result, folder


def test_arrays_align_with_the_parquet(quick_run):
    result, folder = quick_run
    features, probs, info = load_arrays(folder / "arrays")
    frame, metadata = deft_clean.load_results(folder / "results.parquet")
    assert features.dtype == np.float32 and probs.dtype == np.float32
    assert features.shape == (len(frame), result.features.shape[1])
    assert probs.shape == (len(frame), len(metadata["classes"]))
    assert info["classes"] == metadata["classes"] and info["rows"] == len(frame)
    assert info["results"] == str((folder / "results.parquet").resolve())
    assert "row i" in info["row_order"] and info["probs"].startswith("cross-fitted")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs, result.visual_probs)
    # visual_score is the probability of the given label; predicted_label the most probable class
    rows = np.arange(len(frame))
    visual = frame["visual_score"].to_numpy(dtype=float)
    np.testing.assert_allclose(probs[rows, frame["label_index"]], visual, rtol=1e-5)
    assert (probs.argmax(axis=1) == frame["predicted_index"].to_numpy()).all()
    assert not list((folder / "arrays").glob(".*.tmp"))


def test_cleanlab_runs_on_the_saved_probabilities(quick_run, noisy_folder):
    filter_ = pytest.importorskip("cleanlab.filter")
    _, folder = quick_run
    _, probs, info = load_arrays(folder / "arrays")
    frame, _ = deft_clean.load_results(folder / "results.parquet")
    issues = filter_.find_label_issues(
        labels=frame["label_index"].to_numpy(), pred_probs=probs, filter_by="prune_by_noise_rate"
    )
    noisy = ~noisy_folder.truly_clean(frame)
    assert issues.shape == (len(frame),)
    precision = (issues & noisy).sum() / max(issues.sum(), 1)
    recall = (issues & noisy).sum() / noisy.sum()
    assert precision > 0.6 and recall > 0.5, (precision, recall)


def test_cli_save_arrays_with_an_unusable_file(tiny_clip, small_folder, tmp_path):
    (small_folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    out, arrays = tmp_path / "results.parquet", tmp_path / "arrays"
    args = ["detect", str(small_folder), "--out", str(out), "--save-arrays", str(arrays), "--quick"]
    result = runner.invoke(app, [*args, *tiny_clip.cli_args()])
    assert result.exit_code == 0, result.output
    frame, _ = deft_clean.load_results(out)
    features, probs, _ = load_arrays(arrays)
    unusable = (frame["status"] != "ok").to_numpy()
    assert unusable.sum() == 1 and frame["path"][unusable].item() == "dog/broken.jpg"
    assert np.isnan(features[unusable]).all() and np.isnan(probs[unusable]).all()
    assert np.isfinite(features[~unusable]).all() and np.isfinite(probs[~unusable]).all()
    assert json.loads((arrays / "arrays.json").read_text())["rows"] == len(frame) == 13


@pytest.mark.parametrize("where", ["inside", "file"])
def test_save_arrays_never_writes_into_the_dataset(tiny_clip, small_folder, tmp_path, where):
    target = small_folder / "arrays" if where == "inside" else next((small_folder / "cat").iterdir())
    before = sorted(p.relative_to(small_folder) for p in small_folder.rglob("*"))
    out = tmp_path / "results.parquet"
    args = ["detect", str(small_folder), "--out", str(out), "--save-arrays", str(target), *tiny_clip.cli_args()]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --save-arrays") and "loading model" not in result.stderr
    assert sorted(p.relative_to(small_folder) for p in small_folder.rglob("*")) == before
    assert not out.exists()


def test_save_arrays_replaces_an_earlier_run_only_with_overwrite(tiny_clip, small_folder, tmp_path):
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    (arrays / "features.npy").write_bytes(b"not written by deft-clean")
    args = ["detect", str(small_folder), "--out", str(tmp_path / "r.parquet"), "--save-arrays", str(arrays), "--quick"]
    for extra in ((), ("--overwrite",)):  # a foreign features.npy is replaced by neither
        result = runner.invoke(app, [*args, *extra, *tiny_clip.cli_args()])
        assert result.exit_code == 2 and "did not write" in result.stderr, result.output
        assert "--overwrite" not in result.stderr
    assert (arrays / "features.npy").read_bytes() == b"not written by deft-clean"
    assert not (tmp_path / "r.parquet").exists()
    (arrays / "features.npy").unlink()
    (arrays / "notes.txt").write_text("mine")
    assert runner.invoke(app, [*args, *tiny_clip.cli_args()]).exit_code == 0
    (tmp_path / "r.parquet").unlink()
    result = runner.invoke(app, [*args, *tiny_clip.cli_args()])
    assert result.exit_code == 2 and "already holds features.npy" in result.stderr, result.output
    result = runner.invoke(app, [*args, "--overwrite", *tiny_clip.cli_args()])
    assert result.exit_code == 0, result.output
    assert load_arrays(arrays)[0].shape[0] == 12 and (arrays / "notes.txt").read_text() == "mine"


def test_run_dir_that_is_a_file_is_refused(tiny_clip, small_folder, tmp_path):
    run_dir = tmp_path / "a-file"
    run_dir.write_text("keep me")
    args = ["detect", str(small_folder), "--out", str(tmp_path / "r.parquet"), "--run-dir", str(run_dir)]
    result = runner.invoke(app, [*args, *tiny_clip.cli_args()])
    assert result.exit_code == 2 and "is a file" in result.stderr, result.output
    assert run_dir.read_text() == "keep me" and not (tmp_path / "r.parquet").exists()
