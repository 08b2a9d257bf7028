"""Inputs beyond folders and tables: Hugging Face datasets, WebDataset shards, DataFrames (detect and train).

The same images reached through another reader must give the same verdicts as the folder they came from:
rows are listed in the folder's order, decoded from the same bytes, and trained with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import deft_clean
from deft_clean.cli.app import app
from deft_clean.inputs.listing import list_dataset
from deft_clean.outputs.export import export_dataset
from deft_clean.outputs.terminal_report import report
from deft_clean.run.errors import DataError, UsageError

from ..conftest import make_noisy_folder

datasets = pytest.importorskip("datasets")
webdataset = pytest.importorskip("webdataset")

runner = CliRunner()
N_SHARDS = 3


def options(tiny_clip, **extra):
    """3 short epochs of 5 steps (10 images per class, batch 12), as in test_scale."""
    return tiny_clip.options(**{"epochs": 3, "warmup_epochs": 1, "seed": 0, "batch_size": 12, **extra})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_noisy_folder(tmp_path_factory.mktemp("inputs") / "data", per_class=10).root


@pytest.fixture(scope="module")
def folder_run(tiny_clip, folder):
    return deft_clean.detect(folder, **options(tiny_clip))


def write_hf(folder: Path, target: Path, *, dict_split: str | None = "train") -> Path:
    """The folder's images (in listing order) as a saved Hugging Face dataset: Image + ClassLabel columns."""
    listing = list_dataset(folder)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=listing.classes)})
    columns = {"image": [str(folder / p) for p in listing.paths], "label": listing.label_indices.tolist()}
    table = datasets.Dataset.from_dict(columns, features=features)
    (datasets.DatasetDict({dict_split: table}) if dict_split else table).save_to_disk(str(target))
    return target


def write_shards(folder: Path, target: Path) -> str:
    """The folder's images (in listing order) as N_SHARDS WebDataset shards with .cls and .json labels."""
    listing = list_dataset(folder)
    target.mkdir(parents=True)
    per_shard = -(-len(listing) // N_SHARDS)
    for shard in range(N_SHARDS):
        with webdataset.TarWriter(str(target / f"shards-{shard:03d}.tar")) as writer:
            for i in range(shard * per_shard, min(len(listing), (shard + 1) * per_shard)):
                writer.write(
                    {
                        "__key__": f"sample{i:05d}",
                        "png": (folder / listing.paths[i]).read_bytes(),
                        "cls": int(listing.label_indices[i]),
                        "json": {"label": listing.labels[i]},
                    }
                )
    return str(target / f"shards-{{000..{N_SHARDS - 1:03d}}}.tar")


def assert_same_verdicts(frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(frame) == len(expected)
    assert frame["is_clean"].tolist() == expected["is_clean"].tolist()
    np.testing.assert_allclose(frame["p_clean"].to_numpy(float), expected["p_clean"].to_numpy(float), atol=1e-6)
    assert frame["label"].tolist() == expected["label"].tolist()


def test_hf_dataset_gives_the_folder_verdicts(tiny_clip, folder, folder_run, tmp_path):
    saved = write_hf(folder, tmp_path / "hf")
    out = tmp_path / "hf.parquet"
    result = deft_clean.detect(saved, out=out, **options(tiny_clip))
    assert_same_verdicts(result.frame, folder_run.frame)
    frame, metadata = deft_clean.load_results(out)
    assert frame["path"].tolist() == [f"hf://{i}" for i in range(len(frame))]  # rows by index in the split
    assert metadata["source"] == "hf" and metadata["dataset"] == str(saved.resolve())
    assert metadata["reader"] == {"split": "train", "path_col": "image", "label_col": "label"}
    assert "data:image/png;base64," in result._repr_html_()  # notebook thumbnails read the Arrow rows
    # the same split as a Python object, and the DatasetDict object with its split named
    split = datasets.load_from_disk(str(saved))["train"]
    assert_same_verdicts(deft_clean.detect(split, **options(tiny_clip)).frame, folder_run.frame)
    both = datasets.DatasetDict({"other": split.select(range(12)), "train": split})
    in_memory = deft_clean.detect(both, split="train", **options(tiny_clip, quick=True))
    assert len(in_memory.frame) == len(split) and in_memory.metadata["reader"]["split"] == "train"
    loaded = deft_clean.detect(datasets.load_from_disk(str(saved)), split="train", **options(tiny_clip, quick=True))
    assert loaded.metadata["dataset"] == str(saved.resolve())  # so train and thumbnails can list it again


def test_hf_train_clean_only_and_export_refusal(tiny_clip, folder, tmp_path):
    saved = write_hf(folder, tmp_path / "hf", dict_split="validation")
    results = tmp_path / "r.parquet"
    deft_clean.detect(saved, out=results, split="validation", **options(tiny_clip, quick=True))
    out = tmp_path / "model"
    train_args = ["train", str(saved), "--results", str(results), "--out", str(out), "--clean-only"]
    train_args += ["--epochs", "1", "--batch-size", "12", "--device", "cpu", "--num-workers", "0", "--quiet"]
    done = runner.invoke(app, train_args)
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_held_out"] == int(pd.read_parquet(results)["is_clean"].sum())
    # predict reads the same inputs (labels optional): the HF split, its shards and its folder agree
    predicted = deft_clean.predict(out, str(saved), split="validation", device="cpu", num_workers=0, quiet=True)
    pattern = write_shards(folder, tmp_path / "shards")
    from_shards = deft_clean.predict(out, [pattern], label_key="json:label", device="cpu", num_workers=0, quiet=True)
    from_folder = deft_clean.predict(out, [folder], device="cpu", num_workers=0, quiet=True)
    assert predicted.accuracy is not None and predicted.accuracy == from_shards.accuracy == from_folder.accuracy
    unlabelled = deft_clean.predict(out, [pattern], label_key="txt", device="cpu", num_workers=0, quiet=True)
    assert unlabelled.accuracy is None and unlabelled.frame["path"].iloc[0] == "shards-000.tar#sample00000"
    assert unlabelled.frame["predicted_label"].tolist() == from_shards.frame["predicted_label"].tolist()
    with pytest.raises(UsageError, match=r"ds\.select"):
        export_dataset(results, out=tmp_path / "exported")
    assert not (saved / "model").exists() and sorted(p.name for p in saved.iterdir())[0] == "dataset_dict.json"


def test_hf_columns_splits_and_missing_package(folder, tmp_path, monkeypatch):
    saved = write_hf(folder, tmp_path / "hf")
    with pytest.raises(UsageError, match=r"no split 'test'; its splits are \['train'\] \(choose one with split\)"):
        list_dataset(saved, split="test")
    table = datasets.load_from_disk(str(saved))["train"]
    two = table.add_column("coarse", [0] * len(table)).cast_column("coarse", datasets.ClassLabel(names=["a", "b"]))
    assert list_dataset(two).classes == list_dataset(table).classes  # a column called label wins
    two = two.rename_column("label", "fine")
    with pytest.raises(DataError, match="no 'label' column and 2 ClassLabel columns .* with label_col"):
        list_dataset(two)
    assert list_dataset(two, label_col="fine").classes == list_dataset(table).classes
    named = table.add_column("uid", [f"u{i}" for i in range(len(table))])
    assert list_dataset(named, id_col="uid").paths[:2] == ["hf://0#u0", "hf://1#u1"]
    with pytest.raises(UsageError, match="id_col is for Hugging Face datasets"):
        list_dataset(folder, id_col="uid")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'deft-clean\[hf\]'"):
        list_dataset(saved)


def test_webdataset_shards_give_the_folder_verdicts(tiny_clip, folder, folder_run, tmp_path):
    pattern = write_shards(folder, tmp_path / "shards")
    out = tmp_path / "wds.parquet"
    result = deft_clean.detect(pattern, out=out, label_key="json:label", **options(tiny_clip))
    assert_same_verdicts(result.frame, folder_run.frame)
    frame, metadata = deft_clean.load_results(out)
    assert frame["path"].iloc[0] == "shards-000.tar#sample00000"  # shard + key
    assert metadata["source"] == "webdataset" and metadata["reader"] == {"label_key": "json:label"}
    report(out, html=tmp_path / "report.html", console=None)
    assert "data:image/jpeg;base64," in (tmp_path / "report.html").read_text()  # thumbnails from the shards
    trained = deft_clean.train(
        pattern,
        results=out,
        out=tmp_path / "model",
        clean_only=True,
        epochs=1,
        batch_size=12,
        device="cpu",
        num_workers=0,
        quiet=True,
    )
    assert trained.n_train + trained.n_held_out == int(frame["is_clean"].sum())
    with pytest.raises(UsageError, match="drop cache"):
        deft_clean.detect(pattern, label_key="json:label", **options(tiny_clip, quick=True, cache=str(tmp_path / "c")))
    # the .cls labels are class indices: class names give their prompt text
    names = {str(i): c for i, c in enumerate(list_dataset(folder).classes)}
    listed = list_dataset(pattern, class_names=names)
    assert listed.prompt_names == [n.replace("_", " ") for n in names.values()]


def test_webdataset_detect_resumes_to_identical_results(tiny_clip, folder, tmp_path, monkeypatch):
    from deft_clean.run.checkpoints import Interrupted
    from deft_clean.run.progress import RichProgress

    pattern = write_shards(folder, tmp_path / "shards")
    straight = deft_clean.detect(pattern, label_key="json:label", **options(tiny_clip))
    out = tmp_path / "results.parquet"
    original = RichProgress.start_epoch

    def stop_at_epoch_2(self, *args, **kwargs):
        if args[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(RichProgress, "start_epoch", stop_at_epoch_2)
        with pytest.raises(Interrupted):
            deft_clean.detect(pattern, label_key="json:label", out=out, checkpoint_every=3, **options(tiny_clip))
    resumed = deft_clean.detect(
        pattern, label_key="json:label", out=out, resume=True, checkpoint_every=3, **options(tiny_clip)
    )
    np.testing.assert_array_equal(resumed.frame["p_clean"].to_numpy(float), straight.frame["p_clean"].to_numpy(float))


def test_webdataset_errors(folder, tmp_path):
    pattern = write_shards(folder, tmp_path / "shards")
    with pytest.raises(UsageError, match="shard not found: .*shards-003.tar"):
        list_dataset(pattern.replace("002", "009"))
    with pytest.raises(DataError, match="no 'txt' member; see label_key"):
        list_dataset(pattern, label_key="txt")
    with pytest.raises(DataError, match="no field 'name'"):
        list_dataset(pattern, label_key="json:name")


def run_torchrun(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command += ["-m", "deft_clean", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_webdataset_under_two_process_torchrun_matches_the_folder(tiny_clip, folder, tmp_path):
    pattern = write_shards(folder, tmp_path / "shards")
    opts = options(tiny_clip)
    common = ["--quiet", "--model", opts["model"], "--pretrained", opts["pretrained"], "--ctx-init", opts["ctx_init"]]
    for name in ("lr", "vpt_tokens", "epochs", "warmup_epochs", "seed", "batch_size", "device", "num_workers"):
        common += [f"--{name.replace('_', '-')}", str(opts[name])]
    run_torchrun(["detect", pattern, "--label-key", "json:label", "--out", str(tmp_path / "wds.parquet"), *common])
    run_torchrun(["detect", str(folder), "--out", str(tmp_path / "folder.parquet"), *common])
    frame, metadata = deft_clean.load_results(tmp_path / "wds.parquet")
    expected, _ = deft_clean.load_results(tmp_path / "folder.parquet")
    assert metadata["world_size"] == 2 and (frame["status"] == "ok").all()
    assert_same_verdicts(frame, expected)


def test_dataframe_detect_and_train(tiny_clip, folder, tmp_path):
    listing = list_dataset(folder)
    frame = pd.DataFrame({"file": [str(folder / p) for p in listing.paths], "label": listing.labels})
    results = tmp_path / "r.parquet"
    deft_clean.detect(frame, image_col="file", out=results, **options(tiny_clip, quick=True))
    out = tmp_path / "model"
    trained = deft_clean.train(
        frame,
        results=results,
        out=out,
        clean_only=True,
        epochs=1,
        batch_size=12,
        device="cpu",
        num_workers=0,
        quiet=True,
    )
    assert trained.n_train + trained.n_held_out == int(pd.read_parquet(results)["is_clean"].sum())


def test_missing_dataset_is_a_usage_error_without_importing_torch(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from deft_clean.cli.app import app\n"
        f"done = CliRunner().invoke(app, ['detect', {str(tmp_path / 'nope')!r}])\n"
        "print(done.exit_code, 'torch' in sys.modules)\n"
        "print(done.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    first, _, output = done.stdout.partition("\n")
    assert first == "2 False", done.stdout + done.stderr
    assert "dataset not found" in output
