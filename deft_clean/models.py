"""Phase-2 classifiers: the CLIP image tower or a timm network, plus a linear head; export and reload."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError, UsageError, WeightsError

MODEL_FILES = ("config.json", "model.safetensors")


class ClipClassifier(nn.Module):
    """CLIP image tower (projected image embedding) followed by a new linear head."""

    def __init__(self, visual: nn.Module, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, n_classes)
        # As in DeFT's phase 2: the patch embedding, norms and projection stay as pretrained.
        for name in ("conv1", "ln_pre", "ln_post"):
            module = getattr(visual, name, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        for name in ("class_embedding", "positional_embedding", "proj"):
            parameter = getattr(visual, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images))  # [B, K]


def model_spec(backbone: str, *, metadata: dict[str, Any], backbone_weights: str | None) -> dict[str, Any]:
    """Everything needed to rebuild the network later without the detect run: goes into config.json."""
    if backbone == "clip":
        spec: dict[str, Any] = {
            "backbone": "clip",
            "model_name": metadata["model_name"],
            "model": metadata["model"],
            "pretrained": metadata["pretrained"],
            "clip_config": None,
            "image_size": metadata.get("image_size"),
            "mean": metadata.get("mean"),
            "std": metadata.get("std"),
        }
        if str(metadata["model"]).lower().endswith(".json"):
            config_file = Path(metadata["model"])
            if not config_file.is_file():
                raise UsageError(f"the detect run used the model config {config_file}, which no longer exists")
            spec["clip_config"] = json.loads(config_file.read_text(encoding="utf-8"))
        return spec
    if backbone.startswith("timm:") and len(backbone) > 5:
        return {"backbone": backbone, "timm_name": backbone[5:], "weights": backbone_weights}
    raise UsageError(f"--backbone must be 'clip' or 'timm:NAME' (e.g. timm:resnet50), got {backbone!r}")


def _clip_architecture(spec: dict[str, Any], device: torch.device) -> nn.Module:
    """An open_clip model with random weights, from a name or an embedded config (no download)."""
    import open_clip

    name = spec["model_name"]
    if spec.get("clip_config") is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.json"
            path.write_text(json.dumps(spec["clip_config"]))
            open_clip.add_model_config(path)
            return open_clip.create_model(name, pretrained=None, device=device)
    return open_clip.create_model(name, pretrained=None, device=device)


def build_classifier(
    spec: dict[str, Any], *, n_classes: int, device: torch.device, load_pretrained: bool, quiet: bool = False
) -> nn.Module:
    """Backbone + head. With ``load_pretrained`` the backbone gets its pretrained weights."""
    if spec["backbone"] == "clip":
        if load_pretrained:
            from .backbone import load_clip

            clip = load_clip(spec["model"], spec["pretrained"], device=device, quiet=quiet).model
        else:
            clip = _clip_architecture(spec, device)
        return ClipClassifier(clip.visual, int(clip.visual.output_dim), n_classes).to(device)
    if spec["backbone"].startswith("timm:"):
        return _timm_classifier(spec, n_classes=n_classes, device=device, load_pretrained=load_pretrained, quiet=quiet)
    raise DataError(f"unknown backbone {spec['backbone']!r} in config.json (expected clip or timm:NAME)")


def _timm_classifier(
    spec: dict[str, Any], *, n_classes: int, device: torch.device, load_pretrained: bool, quiet: bool
) -> nn.Module:
    import timm

    name = spec["timm_name"]
    if not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r}; see timm.list_models()")
    weights = spec.get("weights")
    if load_pretrained and weights is None:
        try:
            return timm.create_model(name, pretrained=True, num_classes=n_classes).to(device)
        except Exception as exc:  # hub/network errors come in many types
            raise WeightsError(
                f"could not download the pretrained weights of timm:{name} ({type(exc).__name__}); pass "
                "--backbone-weights PATH (a .safetensors/.pth state dict) or --backbone-weights none"
            ) from None
    model = timm.create_model(name, pretrained=False, num_classes=n_classes)
    if load_pretrained and str(weights).lower() != "none":
        state = _read_state_dict(Path(weights))
        own = model.state_dict()
        compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not compatible:
            raise WeightsError(f"--backbone-weights {weights}: no tensor matches timm:{name}")
        model.load_state_dict(compatible, strict=False)
    elif load_pretrained and not quiet:
        logging.getLogger("deft_clean").warning("timm:%s starts from random weights (--backbone-weights none)", name)
    return model.to(device)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def data_config(
    spec: dict[str, Any], model: nn.Module, *, image_size: int | None = None
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Input size, mean and std for a classifier."""
    if spec["backbone"] == "clip":
        from .backbone import OPENAI_MEAN, OPENAI_STD

        size = image_size or int(spec.get("image_size") or 224)
        return size, tuple(spec.get("mean") or OPENAI_MEAN), tuple(spec.get("std") or OPENAI_STD)
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=model)
    return image_size or int(resolved["input_size"][-1]), tuple(resolved["mean"]), tuple(resolved["std"])


@dataclass
class LoadedModel:
    """An exported classifier ready to predict."""

    module: nn.Module  # eval mode; logits [B, K]
    classes: list[str]  # class labels in output order
    transform: Callable  # PIL image -> normalised tensor [3, H, W]
    config: dict[str, Any]  # the exported config.json


def load_model(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder written by ``deft-clean train``: ``(module, classes, transform)``."""
    from .transforms import eval_transform

    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"model folder not found: {path}")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} is not a deft-clean model folder (missing {', '.join(missing)})")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        classes = list(config["classes"])
        backbone = config["backbone"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path / 'config.json'}: invalid model config ({type(exc).__name__}: {exc})") from None
    if backbone != "clip" and not str(backbone).startswith("timm:"):
        raise DataError(f"{path / 'config.json'}: unknown backbone {backbone!r} (expected clip or timm:NAME)")
    torch_device = torch.device(device) if isinstance(device, str) else device
    module = build_classifier(config, n_classes=len(classes), device=torch_device, load_pretrained=False)
    try:
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"), device=str(torch_device))
        module.load_state_dict(state)
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise DataError(f"{path / 'model.safetensors'}: cannot load weights ({type(exc).__name__}: {exc})") from None
    module.eval()
    transform = eval_transform(int(config["image_size"]), tuple(config["mean"]), tuple(config["std"]))
    return LoadedModel(module, classes, transform, config)
