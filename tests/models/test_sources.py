"""open_clip's model sources, as the model cards of SigLIP2, PE-Core or MobileCLIP2 tell users to load them:
``hf-hub:ORG/REPO`` and ``local-dir:FOLDER`` (open_clip_config.json with model_cfg and preprocess_cfg, the weights
and the tokenizer files beside it), and local checkpoints of built-in architectures with their own normalisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import deft_clean
from deft_clean import testing as toy
from deft_clean.cli.app import app
from deft_clean.models import clip as clip_module
from tests.conftest import CLASSES, N_CLASSES, fails, make_noisy_folder

HALF = [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SigLIP-style stand-in (HF tokenizer) written as open_clip's push_to_hf_hub writes a model: a folder with
    open_clip_config.json (SigLIP's 0.5/0.5 normalisation), open_clip_pytorch_model.bin and the tokenizer files."""
    work = tmp_path_factory.mktemp("source-build")
    images, labels = toy.synthetic_images(40, N_CLASSES, seed=1)
    config = toy.stand_in_config("siglip", work, CLASSES)
    checkpoint = toy.pretrain_tiny_clip(
        images, labels, CLASSES, config_path=work / "s.json", checkpoint_path=work / "s.pt", steps=100, config=config
    )
    folder = tmp_path_factory.mktemp("siglip-source")
    tokenizer = Path(config["text_cfg"]["hf_tokenizer_name"])
    for file in tokenizer.iterdir():
        shutil.copy2(file, folder / file.name)
    config["text_cfg"]["hf_tokenizer_name"] = "org/never-downloaded"  # local-dir reads the folder's tokenizer
    document = {"model_cfg": config, "preprocess_cfg": {"mean": HALF, "std": HALF}}
    (folder / "open_clip_config.json").write_text(json.dumps(document))
    shutil.copy2(checkpoint, folder / "open_clip_pytorch_model.bin")
    return folder


def test_local_dir_model_runs_detect_train_predict_with_its_own_preprocessing(source_folder: Path, tmp_path: Path):
    noisy = make_noisy_folder(tmp_path / "data", per_class=10, rate=0.2, seed=4)
    out = tmp_path / "quick.parquet"
    args = ["--model", f"local-dir:{source_folder}", "--quick", "--device", "cpu", "--num-workers", "0", "--quiet"]
    run = CliRunner().invoke(app, ["detect", str(noisy.root), "--out", str(out), *args])
    assert run.exit_code == 0, run.output
    result = deft_clean.load(out)
    assert result.metadata["model"] == f"local-dir:{source_folder}"
    assert result.metadata["pretrained"] == "from local-dir"  # not the default tag, which is not used
    assert result.metadata["mean"] == HALF and result.metadata["std"] == HALF
    truly_clean = noisy.truly_clean(result.frame)
    assert roc_auc_score(truly_clean, result.frame["p_clean"].to_numpy(dtype=float)) > 0.7
    model = tmp_path / "model"
    deft_clean.train(noisy.root, results=out, out=model, epochs=1, device="cpu", num_workers=0, quiet=True)
    config = json.loads((model / "config.json").read_text())
    assert str(source_folder) not in json.dumps(config["clip_config"])  # the folder is not needed to predict
    predictions = deft_clean.predict(model, [noisy.root], device="cpu", num_workers=0, quiet=True)
    assert set(np.asarray(predictions.frame["predicted_label"])) <= set(CLASSES)


def test_hf_hub_model_reads_its_files_through_the_hub_cache(
    source_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"  # the repository as the hub cache holds it (its tokenizer: a hub id, here a folder)
    hub.mkdir()
    document = json.loads((source_folder / "open_clip_config.json").read_text())
    document["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = str(source_folder)
    (hub / "open_clip_config.json").write_text(json.dumps(document))
    shutil.copy2(source_folder / "open_clip_pytorch_model.bin", hub / "open_clip_pytorch_model.bin")
    asked: list[tuple[str, tuple[str, ...]]] = []

    def hub_file(repo: str, *names: str) -> Path:
        asked.append((repo, names))
        return next(hub / n for n in names if (hub / n).is_file())

    monkeypatch.setattr(clip_module, "_hub_file", hub_file)
    noisy = make_noisy_folder(tmp_path / "data", per_class=10, rate=0.2, seed=4)
    result = deft_clean.detect(
        noisy.root,
        out=tmp_path / "quick.parquet",
        model="hf-hub:org/tiny-siglip",
        quick=True,
        device="cpu",
        num_workers=0,
        quiet=True,
    )
    assert result.metadata["model"] == "hf-hub:org/tiny-siglip" and result.metadata["mean"] == HALF
    assert {repo for repo, _ in asked} == {"org/tiny-siglip"}
    assert any("open_clip_pytorch_model.bin" in names for _, names in asked)


def test_hf_hub_model_offline_and_not_cached_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    noisy = make_noisy_folder(tmp_path / "data", per_class=2, rate=0.0, seed=4)
    run = CliRunner().invoke(
        app, ["detect", str(noisy.root), "--out", str(tmp_path / "r.parquet"), "--model", "hf-hub:org/absent"]
    )
    fails(run, 1, "open_clip_config.json of hf-hub:org/absent", "HF_HUB_OFFLINE", "local-dir:")


def test_local_dir_without_its_config_names_the_file(tmp_path: Path) -> None:
    noisy = make_noisy_folder(tmp_path / "data", per_class=2, rate=0.0, seed=4)
    (tmp_path / "empty").mkdir()
    args = ["--model", f"local-dir:{tmp_path / 'empty'}"]
    run = CliRunner().invoke(app, ["detect", str(noisy.root), "--out", str(tmp_path / "r.parquet"), *args])
    fails(run, 2, "open_clip_config.json not found", "push_to_hf_hub")


def test_a_local_checkpoint_of_a_built_in_architecture_gets_its_tags_normalisation() -> None:
    assert clip_module._tags_preprocess("ViT-B-16-SigLIP2") == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert clip_module._tags_preprocess("ViT-B-16")["mean"] == clip_module.OPENAI_MEAN
    assert clip_module._tags_preprocess("not-a-model") is None
