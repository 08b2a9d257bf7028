"""The decoded-image cache: same pixels as decoding, reused across runs, invalidated on change."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import deft_clean
from deft_clean.inputs import image_cache as cache_module
from deft_clean.inputs.dataset import ImageDataset
from deft_clean.inputs.image_cache import cache_folder, prepare_cache
from deft_clean.inputs.listing import list_dataset
from deft_clean.inputs.transforms import eval_transform
from deft_clean.run.checkpoints import Interrupted, StopOnSignal

from ..run.test_long_runs import noisy_folder, options, uninterrupted  # noqa: F401  (module fixtures)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture()
def odd_folder(tmp_path):
    """3 classes of JPEGs and PNGs of uneven sizes (resize and crop really happen) and one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(5):
            h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
            pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    (root / "owl" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = cache_module.load_image

    def counting(path, **kwargs):
        calls.append(str(path))
        return original(path, **kwargs)

    monkeypatch.setattr(cache_module, "load_image", counting)
    return calls


def items(listing, size, cache=None):
    dataset = ImageDataset(
        listing.root,
        listing.paths,
        listing.label_indices,
        eval_transform(size, MEAN, STD),
        image_size=size,
        cache=cache,
    )
    return [dataset[i] for i in range(len(dataset))]


def test_cached_pixels_score_exactly_like_decoded_files(odd_folder, tmp_path):
    listing = list_dataset(odd_folder)
    cached = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    for (x0, y0, i0, s0), (x1, y1, i1, s1) in zip(items(listing, 24), items(listing, 24, cached), strict=True):
        assert (y0, i0, s0) == (y1, i1, s1)
        assert torch.equal(x0, x1)
    broken = listing.paths.index("owl/broken.jpg")
    assert items(listing, 24, cached)[broken][3].startswith("unreadable: ")
    assert len(cached.failures) == 1  # failures only: the view keeps arrays, not per-sample objects


def test_second_run_decodes_nothing_and_changed_files_are_decoded_again(odd_folder, tmp_path, monkeypatch):
    listing = list_dataset(odd_folder)
    calls = count_decodes(monkeypatch)
    first = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert len(calls) == len(listing)
    calls.clear()
    again = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert calls == []  # every file, the corrupt one included, comes from the cache
    assert np.array_equal(first.pixels(0), again.pixels(0))

    changed = odd_folder / listing.paths[0]
    Image.new("RGB", (50, 30), (0, 0, 255)).save(changed, format="PNG")
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    updated = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert calls == [str(changed)]
    assert (updated.pixels(0) == [0, 0, 255]).all(axis=-1).mean() > 0.95

    calls.clear()
    prepare_cache(tmp_path / "cache", listing, size=16, num_workers=0)  # another input size: its own entries
    assert len(calls) == len(listing)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["16px-v1", "24px-v1"]


def test_interrupted_fill_keeps_finished_shards(odd_folder, tmp_path, monkeypatch):
    listing = list_dataset(odd_folder)
    monkeypatch.setattr(cache_module, "SHARD_BYTES", 4 * 24 * 24 * 3)  # 4 images per shard
    calls = count_decodes(monkeypatch)

    class StopAfterSixImages:
        def start_task(self, description, total):
            pass

        def advance(self, n, **metrics):
            if len(calls) >= 6:
                os.kill(os.getpid(), signal.SIGINT)

    with StopOnSignal("rerun") as stop, pytest.raises(Interrupted):
        prepare_cache(
            tmp_path / "cache", listing, size=24, num_workers=0, batch_size=2, progress=StopAfterSixImages(), stop=stop
        )
    folder = cache_folder(tmp_path / "cache", 24)
    assert len(list(folder.glob("shard-*.npy"))) == 1 and not list(folder.glob("*.tmp"))
    calls.clear()
    prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert len(calls) == len(listing) - 4  # the finished shard's images are not decoded again


def test_detect_and_train_share_the_cache(tiny_clip, noisy_folder, uninterrupted, tmp_path, monkeypatch):  # noqa: F811
    calls = count_decodes(monkeypatch)
    result = deft_clean.detect(noisy_folder.root, cache=str(tmp_path / "cache"), **options(tiny_clip))
    assert len(calls) == len(result.frame)  # decoded once, for every epoch and for scoring
    p_cached = result.frame["p_clean"].to_numpy(dtype=float)
    p_files = uninterrupted.frame["p_clean"].to_numpy(dtype=float)
    # These images are already 32x32 squares, the model's input: the cache changes nothing but speed.
    np.testing.assert_allclose(p_cached, p_files, atol=1e-6)
    assert (result.frame["is_clean"] == uninterrupted.frame["is_clean"]).all()

    path = result.save(tmp_path / "results.parquet")
    calls.clear()
    trained = deft_clean.train(
        noisy_folder.root,
        results=path,
        out=tmp_path / "model",
        clean_only=True,
        epochs=1,
        batch_size=12,
        device="cpu",
        num_workers=0,
        cache=str(tmp_path / "cache"),
        val=noisy_folder.root,  # the same files: the validation pass reads the cache too
        quiet=True,
    )
    assert calls == [] and trained.n_train == int(result.frame["is_clean"].sum())
    assert trained.history[0]["val_accuracy"] is not None


def test_workers_read_the_cache_and_persist_across_epochs(tiny_clip, noisy_folder, uninterrupted, tmp_path):  # noqa: F811
    cached = tmp_path / "cache"
    result = deft_clean.detect(noisy_folder.root, cache=str(cached), **options(tiny_clip, num_workers=2))
    frame = result.frame
    assert (frame["status"] == "ok").all() and len(frame) == len(uninterrupted.frame)
    # worker processes draw other augmentations than the main process: close, not equal
    p_workers = frame["p_clean"].to_numpy(dtype=float)
    p_main = uninterrupted.frame["p_clean"].to_numpy(dtype=float)
    assert np.corrcoef(p_workers, p_main)[0, 1] > 0.8
    assert len(result.history) == 3


def test_a_file_listed_twice_is_decoded_once(odd_folder, tmp_path, monkeypatch):
    # Listing refuses a table with one file twice (issue 13), so the duplicate is put in the listing here:
    # the cache must still decode a repeated key once.
    table = odd_folder / "listing.csv"
    table.write_text("path,label\ncat/0.png,cat\ndog/1.jpg,dog\n")
    listing = list_dataset(table)
    listing = dataclasses.replace(
        listing,
        paths=["cat/0.png", "cat/0.png", "dog/1.jpg"],
        labels=["cat", "dog", "dog"],
        label_indices=np.array([0, 1, 1], dtype=np.int64),
    )
    calls = count_decodes(monkeypatch)
    cached = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert len(calls) == 2
    assert np.array_equal(cached.pixels(0), cached.pixels(1))


def test_torchrun_ranks_fill_their_share_of_the_cache(tiny_clip, noisy_folder, uninterrupted, tmp_path):  # noqa: F811
    import subprocess
    import sys

    out, cached = tmp_path / "results.parquet", tmp_path / "cache"
    opts = options(tiny_clip)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "deft_clean", "detect", str(noisy_folder.root), "--out", str(out), "--quiet"]
    command += ["--model", opts["model"], "--pretrained", opts["pretrained"], "--ctx-init", opts["ctx_init"]]
    command += ["--epochs", "1", "--device", "cpu", "--num-workers", "0", "--cache", str(cached)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frame, _ = deft_clean.load_results(out)
    assert (frame["status"] == "ok").all() and len(frame) == len(uninterrupted.frame)
    folder = cache_folder(cached, 32)
    assert len(list(folder.glob("shard-*.npy"))) == 2  # one per rank
    import pyarrow.parquet as pq

    index = pq.read_table(folder / "index.parquet")
    assert index.num_rows == len(frame) and len(set(index["key"].to_pylist())) == len(frame)  # each file once


def test_a_deleted_or_truncated_shard_is_decoded_again(odd_folder, tmp_path, monkeypatch):
    listing = list_dataset(odd_folder)
    monkeypatch.setattr(cache_module, "SHARD_BYTES", 8 * 24 * 24 * 3)  # 8 images per shard: 2 shards
    prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    first, second = sorted(cache_folder(tmp_path / "cache", 24).glob("shard-*.npy"))
    second.unlink()
    calls = count_decodes(monkeypatch)
    again = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert len(calls) == 8 and len(again.failures) == 1  # only the corrupt file is unusable
    with open(first, "r+b") as handle:
        handle.truncate(first.stat().st_size // 2)
    calls.clear()
    again = prepare_cache(tmp_path / "cache", listing, size=24, num_workers=0)
    assert len(calls) == 8
    assert items(listing, 24, again)[0][3] == "ok"
