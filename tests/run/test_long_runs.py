"""Long runs: resumable detect, clean interruption, memory-bounded scoring, distributed, decoded cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import deft_clean
from deft_clean.run.checkpoints import Interrupted
from deft_clean.run.errors import UsageError
from deft_clean.run.progress import RichProgress

from ..conftest import NoisyFolder, make_noisy_folder

EPOCHS = 3


def options(tiny_clip, **extra):
    """3 short epochs of 5 steps (10 images per class, batch 12), all of them run: these tests are about stopping
    and resuming, not about the early stop (which may end a run this small after epoch 2)."""
    base = {"epochs": EPOCHS, "warmup_epochs": 1, "seed": 0, "batch_size": 12, "early_stop": False}
    return tiny_clip.options(**{**base, **extra})


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory) -> NoisyFolder:
    return make_noisy_folder(tmp_path_factory.mktemp("small") / "data", per_class=10)


@pytest.fixture(scope="module")
def uninterrupted(tiny_clip, noisy_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "results.parquet"
    result = deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip))
    assert not out.with_name("results.parquet.run").exists()  # the checkpoint goes once the Parquet is written
    return result


def interrupt_at(monkeypatch, method: str, number: int | str | None, signum: int) -> None:
    """Send ourselves ``signum`` when the progress display starts epoch ``number`` (or scoring, or the task
    named ``number``)."""
    original = getattr(RichProgress, method)

    def hook(self, *args, **kwargs):
        if number is None or args[0] == number:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RichProgress, method, hook)


@pytest.mark.parametrize(
    "method,number,signum,every",
    [
        ("start_epoch", 2, signal.SIGINT, 3),  # stops after step 1 of epoch 2: a mid-epoch resume
        ("start_epoch", 3, signal.SIGTERM, 0),  # stops after step 1 of epoch 3; resumes from epoch 2's end
        ("start_scoring", None, signal.SIGINT, 0),  # prompts trained, scoring interrupted
    ],
)
def test_interrupted_detect_resumes_to_identical_results(
    tiny_clip, noisy_folder, uninterrupted, tmp_path, monkeypatch, method, number, signum, every
):
    out = tmp_path / "results.parquet"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    with monkeypatch.context() as patch:
        interrupt_at(patch, method, number, signum)
        with pytest.raises(Interrupted) as stopped:
            deft_clean.detect(noisy_folder.root, out=out, checkpoint_every=every, **options(tiny_clip))
    assert stopped.value.exit_code == 128 + signum
    assert "--resume" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet.run"]  # no Parquet, no temp file
    run_folder = sorted(p.name for p in (tmp_path / "results.parquet.run").iterdir())
    assert run_folder == [".deft-clean-manifest.json", "detect_checkpoint.pt"]  # the manifest: the checkpoint is ours

    resumed = deft_clean.detect(noisy_folder.root, out=out, resume=True, checkpoint_every=every, **options(tiny_clip))
    np.testing.assert_array_equal(
        resumed.frame["p_clean"].to_numpy(dtype=float), uninterrupted.frame["p_clean"].to_numpy(dtype=float)
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in uninterrupted.history])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


@pytest.mark.parametrize("phase", ["selection", "health"])
def test_signal_after_the_prompts_trained_keeps_the_checkpoint(
    tiny_clip, noisy_folder, uninterrupted, tmp_path, monkeypatch, phase
):
    """A signal during selection or the health pass (no loop there checks it) stops the run as one during training
    does: no Parquet, the checkpoint kept, a resume that ends with the uninterrupted results."""
    from deft_clean.detecting import detect as detect_module
    from deft_clean.detecting import selection

    out = tmp_path / "results.parquet"
    module, name = (selection, "select") if phase == "selection" else (detect_module, "_with_health")
    original = getattr(module, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module, name, signalled)
        with pytest.raises(Interrupted, match="SIGINT.*--resume") as stopped:
            deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip))
    assert stopped.value.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet.run"]
    resumed = deft_clean.detect(noisy_folder.root, out=out, resume=True, **options(tiny_clip))
    np.testing.assert_array_equal(
        resumed.frame["p_clean"].to_numpy(dtype=float), uninterrupted.frame["p_clean"].to_numpy(dtype=float)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


def test_signal_while_the_outputs_are_written_is_said_and_the_run_ends(
    tiny_clip, noisy_folder, tmp_path, monkeypatch, caplog
):
    """After the last check the Parquet is being written: the run finishes it, and says the signal came."""
    from deft_clean.detecting import detect as detect_module

    out = tmp_path / "results.parquet"
    original = detect_module._Checkpoint.finish

    def signalled(self):
        os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(detect_module._Checkpoint, "finish", signalled)
        deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip, epochs=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]
    assert "SIGINT arrived as the outputs were written; they are complete" in caplog.text


def test_signal_before_any_checkpoint_says_there_is_nothing_to_resume(tiny_clip, noisy_folder, tmp_path, monkeypatch):
    out = tmp_path / "results.parquet"
    with monkeypatch.context() as patch:
        interrupt_at(patch, "start_task", None, signal.SIGINT)  # the image pass; --quick trains nothing
        with pytest.raises(Interrupted, match="nothing to resume; rerun the same command \\(without --resume\\)"):
            deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip, quick=True))
    assert list(tmp_path.iterdir()) == []
    deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip, quick=True))  # a plain rerun goes on


def test_resume_with_other_options_or_data_is_refused(tiny_clip, noisy_folder, tmp_path, monkeypatch):
    out = tmp_path / "results.parquet"
    with monkeypatch.context() as patch:
        interrupt_at(patch, "start_epoch", 2, signal.SIGINT)
        with pytest.raises(Interrupted):
            deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip))
    with pytest.raises(UsageError, match=r"other options or data \(lr 0.01 -> 0.02\)"):
        deft_clean.detect(noisy_folder.root, out=out, resume=True, **options(tiny_clip, lr=0.02))
    subset = tmp_path / "subset"
    shutil.copytree(noisy_folder.root, subset)
    next(p for p in sorted(subset.rglob("*.png"))).unlink()
    with pytest.raises(UsageError, match="the dataset listing"):
        deft_clean.detect(subset, out=out, resume=True, **options(tiny_clip))
    # a fresh run does not silently throw the unfinished one away
    with pytest.raises(UsageError, match="pass --resume"):
        deft_clean.detect(noisy_folder.root, out=out, **options(tiny_clip))
    # device and workers may change
    deft_clean.detect(noisy_folder.root, out=out, resume=True, **options(tiny_clip, num_workers=1))
    assert out.is_file()


def test_sigint_to_cli_exits_130_with_one_line_and_no_output(tiny_clip, noisy_folder, tmp_path):
    out = tmp_path / "results.parquet"
    command = [sys.executable, "-m", "deft_clean", "detect", str(noisy_folder.root), "--out", str(out)]
    # a long schedule, so that the signal most likely lands in training; a signal in any later phase (scoring,
    # selection, the health pass) must give the same line
    command += tiny_clip.cli_args() + ["--epochs", "500", "--no-early-stop", "--checkpoint-every", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "results.parquet.run" / "detect_checkpoint.pt"
    deadline = time.monotonic() + 300  # a loaded machine may take long to import torch and read the images
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), f"no checkpoint yet (exit {process.poll()})"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "SIGINT" in lines[0] and "--resume" in lines[0], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet.run"]
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [".deft-clean-manifest.json", checkpoint.name]


def test_interrupted_train_resumes_to_identical_weights(tiny_clip, noisy_folder, uninterrupted, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    options = {"epochs": 2, "batch_size": 12, "device": "cpu", "num_workers": 0, "quiet": True, "balanced": True}
    deft_clean.train(noisy_folder.root, results=uninterrupted.path, out=tmp_path / "full", **options)
    with monkeypatch.context() as patch:
        interrupt_at(patch, "start_epoch", 2, signal.SIGTERM)
        with pytest.raises(Interrupted) as stopped:
            deft_clean.train(noisy_folder.root, results=uninterrupted.path, out=tmp_path / "cut", **options)
    assert stopped.value.exit_code == 143
    # no model.safetensors; best.safetensors (the best epoch so far on the held-out rows) may be there
    cut = sorted(p.name for p in (tmp_path / "cut").iterdir())
    assert cut == [".deft-clean-manifest.json", "best.safetensors", "checkpoint.pt"]  # the manifest comes first
    deft_clean.train(noisy_folder.root, results=uninterrupted.path, out=tmp_path / "cut", resume=True, **options)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        np.testing.assert_array_equal(full[key].numpy(), resumed[key].numpy(), err_msg=key)


def test_train_stopped_outside_its_epochs_says_how_to_go_on(
    tiny_clip, noisy_folder, uninterrupted, tmp_path, monkeypatch
):
    """A signal in the linear probe (before any checkpoint) or after the last epoch (before the export) stops train
    with one line saying how to go on, and going on that way works."""
    from safetensors.torch import load_file

    from deft_clean.training import finetune

    options = {"epochs": 1, "batch_size": 12, "device": "cpu", "num_workers": 0, "quiet": True}
    train = lambda out, **extra: deft_clean.train(  # noqa: E731
        noisy_folder.root, results=uninterrupted.path, out=tmp_path / out, **options, **extra
    )
    with monkeypatch.context() as patch:
        interrupt_at(patch, "start_task", "linear probe", signal.SIGINT)
        with pytest.raises(Interrupted, match="nothing to resume; rerun the same command with --overwrite"):
            train("cut")
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [".deft-clean-manifest.json"]
    train("cut", overwrite=True)
    assert (tmp_path / "cut" / "model.safetensors").is_file()

    original = finetune._fit

    def then_signalled(*args, **kwargs):
        original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(finetune, "_fit", then_signalled)
        with pytest.raises(Interrupted, match="SIGTERM; checkpoint saved .*--resume") as stopped:
            train("late", overwrite=True)  # a run started with --overwrite resumes without it
    assert stopped.value.exit_code == 143
    assert "model.safetensors" not in {p.name for p in (tmp_path / "late").iterdir()}
    train("late", resume=True)
    full, resumed = (
        load_file(str(tmp_path / "cut" / "model.safetensors")),
        load_file(str(tmp_path / "late" / "model.safetensors")),
    )
    for key in full:
        np.testing.assert_array_equal(full[key].numpy(), resumed[key].numpy(), err_msg=key)


def bomb_png(path) -> None:
    """A valid 1x1 PNG whose header claims 30000 x 30000 pixels: Pillow refuses it as a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4)))


def test_decompression_bomb_is_a_status_row_and_scores_keep_failures_only(tiny_clip, noisy_folder, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(noisy_folder.root, data)
    bomb = data / "red" / "zz_bomb.png"
    bomb_png(bomb)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    result = deft_clean.detect(data, **options(tiny_clip, epochs=1))
    frame = result.frame.set_index("path")
    assert frame.loc["red/zz_bomb.png", "status"].startswith("unreadable: DecompressionBombError")
    assert pd.isna(frame.loc["red/zz_bomb.png", "p_clean"]) and not frame.loc["red/zz_bomb.png", "is_clean"]
    assert (frame.drop(index="red/zz_bomb.png")["status"] == "ok").all()


def test_torchrun_two_cpu_processes_score_every_sample_once(tiny_clip, noisy_folder, uninterrupted, tmp_path):
    out = tmp_path / "results.parquet"
    opts = options(tiny_clip)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "deft_clean", "detect", str(noisy_folder.root), "--out", str(out), "--quiet"]
    command += ["--model", opts["model"], "--pretrained", opts["pretrained"], "--ctx-init", opts["ctx_init"]]
    for name in ("lr", "vpt_tokens", "epochs", "warmup_epochs", "seed", "batch_size", "device", "num_workers"):
        command += [f"--{name.replace('_', '-')}", str(opts[name])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    frame, metadata = deft_clean.load_results(out)
    # two ranks of batch 12 take the steps of one process with batch 24 (on other augmentations)
    single = deft_clean.detect(noisy_folder.root, **options(tiny_clip, batch_size=24)).frame
    assert metadata["world_size"] == 2
    assert frame["path"].tolist() == single["path"].tolist()  # one row per sample, in listing order
    assert (frame["status"] == "ok").all() and frame["p_clean"].notna().all()
    p2, p1 = frame["p_clean"].to_numpy(dtype=float), single["p_clean"].to_numpy(dtype=float)
    correlation, mean_abs = np.corrcoef(p1, p2)[0, 1], np.abs(p1 - p2).mean()
    assert correlation > 0.85 and mean_abs < 0.1, (correlation, mean_abs)  # measured vs batch 12: 0.886, 0.071
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


def test_torchrun_two_cpu_processes_train(noisy_folder, uninterrupted, tmp_path):
    out = tmp_path / "model"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "deft_clean", "train", str(noisy_folder.root), "--results", str(uninterrupted.path)]
    command += ["--out", str(out), "--clean-only", "--epochs", "2", "--batch-size", "12", "--lr", "1e-3"]
    command += ["--optimizer", "adamw", "--device", "cpu", "--num-workers", "0", "--quiet"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        ".deft-clean-manifest.json",
        "best.safetensors",
        "checkpoint.pt",
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_held_out"] == int(uninterrupted.frame["is_clean"].sum())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and all(
        np.isfinite(h["loss"]) for h in metrics["history"]
    )
    predicted = deft_clean.predict(out, [noisy_folder.root], device="cpu", num_workers=0, quiet=True)
    assert len(predicted.frame) == len(uninterrupted.frame)


def test_ranks_get_their_own_augmentation_streams_but_one_epoch_order():
    import torch

    from deft_clean.run.distributed import Dist
    from deft_clean.run.engine import epoch_order, rank_streams, seed_everything

    generator = seed_everything(0)
    assert rank_streams(generator, Dist()) is generator  # one process: nothing changes
    draws, orders = [], []
    for rank in (0, 1):
        generator = seed_everything(0)
        loader_generator = rank_streams(generator, Dist(rank=rank, world=2))
        draws.append((torch.rand(4), torch.randint(0, 2**30, (1,), generator=loader_generator)))
        orders.append(epoch_order(20, generator))
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])
    assert orders[0] == orders[1]
