"""Every open_clip family a user would pick runs DeFT end to end, each through a tiny stand-in (deft_clean.testing):
the same tower classes, pooling, masks and tokenizer types as the real models, pretrained for seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import deft_clean
from deft_clean import testing as toy
from deft_clean.models.clip import load_clip
from deft_clean.models.deft import DeftModel
from deft_clean.models.towers import built_family, config_family
from tests.conftest import CLASSES, N_CLASSES, make_noisy_folder

FAMILIES = list(toy.STAND_INS)


@dataclass(frozen=True)
class StandIn:
    family: str
    config: Path
    checkpoint: Path

    def options(self, **extra: object) -> dict:
        base = {
            "model": str(self.config),
            "pretrained": str(self.checkpoint),
            "ctx_init": "a photo of a",
            "lr": 0.01,
            "vpt_tokens": 2,
            "epochs": 2,
            "device": "cpu",
            "num_workers": 0,
            "batch_size": 32,
            "quiet": True,
        }
        return {**base, **extra}


@pytest.fixture(scope="session", params=FAMILIES)
def stand_in(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> StandIn:
    family = request.param
    folder = tmp_path_factory.mktemp(f"stand-in-{family}")
    images, labels = toy.synthetic_images(40, N_CLASSES, seed=1)
    config = toy.stand_in_config(family, folder, CLASSES)
    checkpoint = toy.pretrain_tiny_clip(
        images,
        labels,
        CLASSES,
        config_path=folder / f"{family}-stand-in.json",
        checkpoint_path=folder / f"{family}.pt",
        steps=100,
        config=config,
    )
    return StandIn(family, folder / f"{family}-stand-in.json", checkpoint)


def test_every_open_clip_config_has_a_stand_in_of_its_family() -> None:
    """Walk open_clip's model list: each config's image tower, text tower and tokenizer family is one a stand-in
    covers (read off the stand-ins' built modules, as deft-clean sees them at run time)."""
    import open_clip

    catalogue = {name: config_family(name, open_clip.get_model_config(name)) for name in open_clip.list_models()}
    covered = {"vision": set(), "text": set(), "tokenizer": set()}
    for family in FAMILIES:
        loaded = _loaded_random(family)
        found = built_family(loaded.model, loaded.tokenizer)
        covered["vision"].add(found.vision)
        covered["text"].add(found.text)
        covered["tokenizer"].add(found.tokenizer)
    missing = {
        name: family
        for name, family in catalogue.items()
        if family.vision not in covered["vision"]
        or family.text not in covered["text"]
        or family.tokenizer not in covered["tokenizer"]
    }
    assert not missing, missing
    assert len(catalogue) >= 100
    # the families users pick today are the ones the stand-ins stand for
    assert catalogue["ViT-B-16-SigLIP2"] == ("timm-vit", "native", "hf")
    assert catalogue["PE-Core-B-16"].vision == "timm-eva"
    assert catalogue["EVA02-B-16"].vision == "timm-eva"
    assert catalogue["MobileCLIP2-S2"].vision == "timm-tokenless"
    assert catalogue["RN50"].vision == "resnet"
    assert catalogue["xlm-roberta-base-ViT-B-32"].text == "hf"


def _loaded_random(family: str, folder: Path | None = None):
    import tempfile

    where = Path(folder or tempfile.mkdtemp(prefix="deft-family-"))
    config = toy.stand_in_config(family, where, CLASSES)
    path = toy.write_model_config(where / f"{family}-random.json", config)
    return load_clip(str(path), "none", device=torch.device("cpu"), quiet=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_and_adaptation_train_on_every_family(family: str, tmp_path: Path) -> None:
    """The dual prompts and the image-side adaptation get gradients; the frozen tower is recoverable; the
    prompts' text features equal the tower's own encoding of the same sentence."""
    from deft_clean.models.towers import token_tower

    loaded = _loaded_random(family, tmp_path)
    tower = token_tower(loaded.model)  # what a collapse warning's advice counts: the patch tokens at 32 px
    assert (tower is None) == (family in ("convnext", "resnet"))
    assert tower is None or tower.patches == (32 // tower.patch) ** 2, tower
    images = torch.randn(3, 3, 32, 32)
    before = loaded.model.encode_image(images, normalize=True).detach()  # the tower as loaded
    model = DeftModel(
        loaded, CLASSES, n_ctx=4, ctx_init="a photo of a", class_specific=False, vpt_tokens=2, vpt_depth=None
    )
    features, text = model(images)
    ((features @ text.positive.t()).sum() + (features.detach() @ text.negative.t()).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.frozen_image_features(images), before)
        # context initialised from "a photo of a" = the tower's encoding of "a photo of a <class>."
        sentences = loaded.tokenizer([f"a photo of a {name}." for name in CLASSES])
        reference = loaded.model.encode_text(sentences, normalize=True)
        torch.testing.assert_close(model.text_features().positive, reference, atol=1e-4, rtol=1e-4)
    tokenless = family in ("convnext", "resnet")
    assert model.adaptation.startswith("none" if tokenless else "vpt-deep"), model.adaptation


def test_norm_bias_adapter_tunes_the_last_stage_and_restores_the_frozen_tower(tmp_path: Path) -> None:
    loaded = _loaded_random("convnext", tmp_path)
    model = DeftModel(
        loaded,
        CLASSES,
        n_ctx=4,
        ctx_init=None,
        class_specific=False,
        vpt_tokens=2,
        vpt_depth=None,
        tokenless="norm-bias",
    )
    assert model.adaptation.startswith("norm-bias") and len(model.visual_prompts) > 0
    images = torch.randn(2, 3, 32, 32)
    before = model.frozen_image_features(images).detach()
    with torch.no_grad():
        for parameter in model.visual_prompts:
            parameter.add_(0.5)
    assert not torch.allclose(model.image_features(images), before)
    torch.testing.assert_close(model.frozen_image_features(images), before)


def test_rotary_prompts_sit_outside_the_rotary_positions() -> None:
    """Eva towers rotate q/k of the patch tokens; prompts appended after them get identity rows (sin 0, cos 1)."""
    from deft_clean.models.towers import _identity_padded

    rope = torch.randn(16, 8)  # [patches, 2 * d]
    padded = _identity_padded(rope, 3)
    assert padded.shape == (19, 8)
    assert torch.equal(padded[:16], rope)
    assert torch.equal(padded[16:, :4], torch.zeros(3, 4)) and torch.equal(padded[16:, 4:], torch.ones(3, 4))


def test_coca_class_token_text_is_encoded_as_open_clip_does() -> None:
    import open_clip

    from deft_clean.models.towers import text_tower

    config = {
        **toy.TINY_CLIP_CONFIG,
        "text_cfg": {**toy.TINY_CLIP_CONFIG["text_cfg"], "embed_cls": True, "output_tokens": True},
    }
    config["multimodal_cfg"] = {"context_length": 16, "width": 64, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    model = open_clip.coca_model.CoCa(**config)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokens = tokenizer(["a photo of a red.", "a green thing."])[:, :16]
    text = text_tower(model)
    with torch.no_grad():
        ours = text(text.embed_tokens(tokens), tokens)
        theirs = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_detect_train_predict_on_every_family(stand_in: StandIn, tmp_path: Path) -> None:
    """Default and --quick detect, train --clean-only and predict run on each family's stand-in; results read back
    and say which adaptation ran."""
    from typer.testing import CliRunner

    from deft_clean.cli.app import app

    noisy = make_noisy_folder(tmp_path / "data", per_class=10, rate=0.2, seed=4)
    results = {}
    for mode, quick in (("default", False), ("quick", True)):
        out = tmp_path / f"{mode}.parquet"
        if quick:
            deft_clean.detect(noisy.root, out=out, quick=quick, **stand_in.options())
        else:  # the command line, as a user runs it
            args = [f"--{k.replace('_', '-')}={v}" for k, v in stand_in.options().items() if k != "quiet"]
            run = CliRunner().invoke(app, ["detect", str(noisy.root), "--out", str(out), "--quiet", *args])
            assert run.exit_code == 0, run.output
        loaded = deft_clean.load(out)
        assert len(loaded.frame) == 60
        assert loaded.frame["p_clean"].notna().all()
        results[mode] = loaded
    metadata = results["default"].metadata
    recorded = metadata.get("prompts", {}).get("adaptation") or metadata.get("adaptation", "")
    assert recorded, metadata.keys()
    truly_clean = noisy.truly_clean(results["quick"].frame)
    p_clean = results["quick"].frame["p_clean"].to_numpy(dtype=float)
    # the stand-ins see their classes: clean rows score above planted wrong ones
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truly_clean, p_clean) > 0.7, stand_in.family
    model = tmp_path / "model"
    deft_clean.train(
        noisy.root,
        results=tmp_path / "default.parquet",
        out=model,
        epochs=1,
        device="cpu",
        num_workers=0,
        quiet=True,
        hflip=False,
    )
    assert "hf_" not in (model / "config.json").read_text()  # no Hugging Face folder for predict to open
    predictions = deft_clean.predict(model, [noisy.root], device="cpu", num_workers=0, quiet=True)
    assert len(predictions.frame) == 60
    assert set(np.asarray(predictions.frame["predicted_label"])) <= set(CLASSES)


def test_a_model_that_needs_transformers_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from deft_clean.run.errors import UsageError

    config = toy.stand_in_config("siglip", tmp_path, CLASSES)
    path = toy.write_model_config(tmp_path / "needs-hf.json", config)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    with pytest.raises(UsageError, match=r"needs the Hugging Face `transformers` package .*deft-clean\[hf\]") as caught:
        load_clip(str(path), "none", device=torch.device("cpu"), quiet=True)
    assert "\n" not in str(caught.value)


def test_missing_tokenizer_files_offline_name_the_files_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deft_clean.run.errors import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    config = toy.stand_in_config("siglip", tmp_path, CLASSES)
    config["text_cfg"]["hf_tokenizer_name"] = "nobody/no-such-tokenizer"
    path = toy.write_model_config(tmp_path / "no-tokenizer.json", config)
    with pytest.raises(WeightsError, match="tokenizer files of nobody/no-such-tokenizer") as caught:
        load_clip(str(path), "none", device=torch.device("cpu"), quiet=True)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "hf-home") in message


def test_phase_two_rebuilds_a_named_hf_text_model_offline_with_its_image_tower_only() -> None:
    """A model folder naming an open_clip model with a Hugging Face text tower rebuilds without the tower's config
    (phase 2 runs the image tower only): nothing is fetched, and the user's name keeps its own config."""
    import open_clip

    from deft_clean.models.classifier import _clip_architecture

    name = "roberta-ViT-B-32"
    before = open_clip.get_model_config(name)
    clip = _clip_architecture({"model_name": name, "clip_config": None}, torch.device("cpu"))
    assert clip.visual.output_dim == before["embed_dim"]
    assert open_clip.get_model_config(name) == before
