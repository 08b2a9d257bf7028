"""Phase-2 classifiers: the CLIP image tower or a timm network, plus a linear head; export and reload."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..run.errors import DataError, DeftCleanError, UsageError, WeightsError, option
from ..run.safety import printable
from .limits import check_model_config as check_architecture
from .towers import embed_width

MODEL_FILES = ("config.json", "model.safetensors")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # an open_clip/timm model name, no path or hub prefix


def _side(size: Any) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ClipClassifier(nn.Module):
    """CLIP image tower (projected image embedding) followed by a new linear head."""

    def __init__(self, visual: nn.Module, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, n_classes)
        # As in DeFT's phase 2: the patch embedding, norms and projection stay as pretrained (open_clip's ViT
        # names, then a timm trunk's: patch_embed / stem, positions and prefix tokens).
        trunk = getattr(visual, "trunk", visual)
        for owner, name in [(visual, n) for n in ("conv1", "ln_pre", "ln_post")] + [
            (trunk, n) for n in ("patch_embed", "stem", "norm_pre")
        ]:
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        for owner, name in [(visual, n) for n in ("class_embedding", "positional_embedding", "proj")] + [
            (trunk, n) for n in ("pos_embed", "cls_token", "reg_token")
        ]:
            parameter = getattr(owner, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled image embedding [B, E] (a tower that also outputs its tokens, as CoCa's: the pooled part)."""
        out = self.visual(images)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # [B, K]


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
        from .clip import model_config

        config = model_config(str(metadata["model"]))  # a config file or an hf-hub:/local-dir: model's, read again
        if config is not None:
            spec["clip_config"] = image_tower_config(config)
        return spec
    if backbone.startswith("timm:") and len(backbone) > 5:
        return {"backbone": backbone, "timm_name": backbone[5:], "weights": backbone_weights}
    raise UsageError(f"{option('backbone')} must be 'clip' or 'timm:NAME' (e.g. timm:resnet50), got {backbone!r}")


# The architecture only: no base weights fetched for a Hugging Face text tower or a timm trunk (the model folder's
# weights are loaded next).
NO_BASE_WEIGHTS = {"pretrained_text": False, "pretrained_image": False}


# Phase 2 keeps the image tower only. The text side of a rebuilt architecture is a stub, so that neither a model
# folder nor a named model makes predict open a Hugging Face folder or hub repo for a text tower it never runs.
TEXT_STUB = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}
IMAGE_TOWER_NAME = "deft-clean-image-tower"  # registered with open_clip in place of the user's name


def image_tower_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (an open_clip model config) with its text tower replaced by a small native stub: what phase 2
    embeds in a model folder and rebuilds (the image tower, its width and preprocessing stay as they are)."""
    out = {key: value for key, value in config.items() if key not in ("text_cfg", "custom_text", "multimodal_cfg")}
    out["text_cfg"] = dict(TEXT_STUB)
    if isinstance(out.get("vision_cfg"), dict) and "timm_model_pretrained" in out["vision_cfg"]:
        out["vision_cfg"] = {**out["vision_cfg"], "timm_model_pretrained": False}  # the folder's weights follow
    return out


def _clip_architecture(spec: dict[str, Any], device: torch.device) -> nn.Module:
    """An open_clip model with random weights, from a name or an embedded config (no download), with a stub for
    a text tower (:func:`image_tower_config`).

    The name comes from a model folder, which is data: it must be a plain file stem (no path, no
    ``hf-hub:`` prefix), so that open_clip never goes to the network. The config is registered under a name of
    ours, written only inside a private temporary folder.
    """
    import open_clip

    name = spec["model_name"]
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise DataError(f"config.json: model_name {printable(name)!r} is not a plain model name; refusing to load it")
    config = spec.get("clip_config")
    if config is None:
        if name not in open_clip.list_models():
            raise DataError(f"config.json: unknown open_clip model {name!r}")
        config = open_clip.get_model_config(name)
    if not isinstance(config, dict):
        raise DataError("config.json: clip_config must be a JSON object")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{IMAGE_TOWER_NAME}.json"
        path.write_text(json.dumps(image_tower_config(config)))
        open_clip.add_model_config(path)
        with _quiet_open_clip():
            return open_clip.create_model(IMAGE_TOWER_NAME, pretrained=None, device=device, **NO_BASE_WEIGHTS)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Rebuild an architecture offline and without open_clip's "No pretrained weights loaded" warning.

    The weights come from the model folder right after; a model folder must never make deft-clean go to
    the network (e.g. for a Hugging Face text tower's config), so the hub is switched to offline mode.
    """
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        constants = None
    offline = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        root.setLevel(previous)
        if constants is not None:
            constants.HF_HUB_OFFLINE = offline


def build_classifier(
    spec: dict[str, Any], *, n_classes: int, device: torch.device, load_pretrained: bool, quiet: bool = False
) -> nn.Module:
    """Backbone + head. With ``load_pretrained`` the backbone gets its pretrained weights."""
    if spec["backbone"] == "clip":
        if load_pretrained:
            from .clip import load_clip

            clip = load_clip(spec["model"], spec["pretrained"], device=device, quiet=quiet).model
        else:
            clip = _clip_architecture(spec, device)
        size = int(spec.get("image_size") or _side(clip.visual.image_size))
        return ClipClassifier(clip.visual, embed_width(clip, size), n_classes).to(device)
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
                f"could not download the pretrained weights of timm:{name} ({type(exc).__name__}); pass a "
                f".safetensors/.pth state dict as {option('backbone_weights')}, or "
                f"{option('backbone_weights', 'none')}"
            ) from None
    model = timm.create_model(name, pretrained=False, num_classes=n_classes)
    if load_pretrained and str(weights).lower() != "none":
        state = _read_state_dict(Path(weights))
        own = model.state_dict()
        compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not compatible:
            raise WeightsError(f"{option('backbone_weights')} {weights}: no tensor matches timm:{name}")
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
    """Input size, mean and std for a classifier; an ``image_size`` asked for is bounded by the backbone's own
    (see :func:`deft_clean.run.options.check_image_size`) before any image is decoded at that size."""
    from ..run.options import check_image_size

    if spec["backbone"] == "clip":
        from .clip import OPENAI_MEAN, OPENAI_STD

        native = int(spec.get("image_size") or 224)
        if image_size is not None:
            check_image_size(image_size, native)
        return image_size or native, tuple(spec.get("mean") or OPENAI_MEAN), tuple(spec.get("std") or OPENAI_STD)
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=model)
    native = int(resolved["input_size"][-1])
    if image_size is not None:
        check_image_size(image_size, native)
    return image_size or native, tuple(resolved["mean"]), tuple(resolved["std"])


@dataclass
class LoadedModel:
    """An exported classifier ready to predict."""

    module: nn.Module  # eval mode; logits [B, K]
    classes: list[str]  # class labels in output order
    transform: Callable  # PIL image -> normalised tensor [3, H, W]
    config: dict[str, Any]  # the exported config.json


def check_model_config(config: Any, file: Path) -> tuple[list[str], str]:
    """Validate an exported config.json; returns (classes, backbone). Every message names file and field."""

    def bad(field: str, why: str) -> DataError:
        return DataError(f"{file}: {field!r} {why}; retrain or restore the model folder")

    if not isinstance(config, dict):
        raise DataError(f"{file}: not a JSON object; retrain or restore the model folder")
    classes = config.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise bad("classes", "must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise bad("classes", "has duplicate names")
    backbone = config.get("backbone")
    if not isinstance(backbone, str):
        raise bad("backbone", "must be a string")
    if backbone != "clip" and not backbone.startswith("timm:"):
        raise bad("backbone", f"is an unknown backbone {printable(backbone)!r} (expected clip or timm:NAME)")
    if backbone.startswith("timm:"):
        timm_name = config.get("timm_name")
        if not isinstance(timm_name, str) or not SAFE_NAME.fullmatch(timm_name):
            raise bad("timm_name", "must be a plain timm model name")
    elif not isinstance(config.get("model_name"), str) or not SAFE_NAME.fullmatch(config["model_name"]):
        raise bad("model_name", f"is {printable(config.get('model_name'))!r}, not a plain model name")
    _check_clip_config(config.get("clip_config"), bad)
    size = config.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise bad("image_size", f"must be a whole number of pixels between 8 and 4096, got {printable(size)}")
    for field in ("mean", "std"):
        value = config.get(field)
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or (field == "std" and not all(v > 0 for v in value))
        ):
            raise bad(field, "must be a list of 3 finite numbers")
    return classes, backbone


def _check_clip_config(clip_config: Any, bad: Callable[[str, str], DataError]) -> None:
    """Refuse a ``clip_config`` whose towers are bigger than any real CLIP, before anything is built."""
    if clip_config is None:
        return
    try:
        check_architecture(clip_config, "clip_config")
    except UsageError as exc:
        raise bad("clip_config", f"is refused ({exc})") from None


def check_model_size(config: dict[str, Any], n_classes: int, weights: Path) -> None:
    """Refuse a config describing a model far bigger than its weights file, before any memory is allocated.

    The architecture is built on the ``meta`` device (shapes only, no storage) and its tensor bytes are
    compared with the size of ``weights``: an enlarged ``clip_config`` would otherwise allocate gigabytes
    before the weights fail to load.
    """
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:  # reads the header only
            list(handle.keys())
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise DataError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc})") from None
    meta = torch.device("meta")
    try:
        with torch.device(meta):
            skeleton = build_classifier(config, n_classes=n_classes, device=meta, load_pretrained=False)
    except DeftCleanError:
        raise
    except Exception:  # noqa: BLE001 - a config the meta device cannot build is checked by the real build
        return
    needed = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    held = weights.stat().st_size
    if needed > 2 * held + (1 << 20):  # 2x: weights saved in half precision still load
        raise DataError(
            f"{weights.parent / 'config.json'}: the model it describes needs {needed / 1e6:.0f} MB of weights but "
            f"{weights.name} holds {held / 1e6:.1f} MB; retrain or restore the model folder"
        )


def load_model(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder written by ``deft-clean train``: ``(module, classes, transform)``."""
    from ..inputs.transforms import eval_transform

    path = Path(folder)
    if path.is_file():
        raise UsageError(f"{path} is a file; pass the model folder written by train (it holds config.json)")
    if not path.is_dir():
        raise UsageError(f"model folder not found: {path}")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} is not a deft-clean model folder (missing {', '.join(missing)})")
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{file}: invalid model config ({type(exc).__name__}); retrain or restore it") from None
    classes, backbone = check_model_config(config, file)
    torch_device = torch.device(device) if isinstance(device, str) else device
    check_model_size(config, len(classes), path / "model.safetensors")
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
