"""Bounds on a CLIP model config, checked before anything is built: the one home of the architecture caps.

A model config is data: an open_clip JSON given as ``--model`` or a model folder's ``clip_config``. A
``vision_cfg.width`` of 1e9 would try to allocate hundreds of gigabytes and ``layers: 100000`` fills memory
for minutes before failing, so each field a tower is built from is bounded here, and so is the parameter
count they add up to. The caps are the biggest open_clip towers (ViT-bigG: 48 layers of width 1664, 16
heads, 2.5G parameters) with room to spare.
"""

from __future__ import annotations

import math
from typing import Any

from ..run.errors import UsageError

# field -> (least, most); a ResNet tower's "layers" is a list of stage depths, each bounded alike
ARCHITECTURE_CAPS: dict[str, tuple[float, float]] = {
    "layers": (1, 256),
    "width": (1, 16_384),
    "heads": (1, 256),
    "embed_dim": (1, 16_384),
    "mlp_ratio": (0.01, 64),
    "patch_size": (1, 1_024),
    "image_size": (1, 4_096),  # px of the tower's own input
    "context_length": (1, 4_096),  # text tokens
    "vocab_size": (1, 4_000_000),
}
TOWERS = ("vision_cfg", "text_cfg")
MAX_LIST = 16  # values in a list-valued field (a ResNet has 4 stages)
MAX_PARAMETERS = 8e9  # about 3x ViT-bigG (32 GB of float32): what the fields may add up to
# open_clip's defaults for a field a config leaves out (CLIPVisionCfg / CLIPTextCfg)
DEFAULTS = {
    "vision_cfg": {"layers": 12, "width": 768, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224},
    "text_cfg": {"layers": 12, "width": 512, "mlp_ratio": 4.0, "context_length": 77, "vocab_size": 49_408},
}


def check_model_config(config: dict[str, Any], source: str) -> None:
    """Refuse a CLIP model config whose towers are bigger than any real CLIP, before anything is allocated.

    ``config`` is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``); ``source`` names it
    in the message (a file, or a model folder's ``config.json: clip_config``).

    Raises:
        UsageError: one line naming the field, its value and the bound.
    """
    if not isinstance(config, dict):
        raise UsageError(f"{source}: the model config must be a JSON object")
    _check_fields(config, source, "")
    for tower in TOWERS:
        if tower not in config:
            continue
        if not isinstance(config[tower], dict):
            raise UsageError(f"{source}: {tower} must be a JSON object")
        _check_fields(config[tower], source, f"{tower}.")
    parameters = estimated_parameters(config)
    if parameters > MAX_PARAMETERS:
        raise UsageError(
            f"{source}: the towers add up to about {parameters / 1e9:.1f}G parameters, more than "
            f"{MAX_PARAMETERS / 1e9:g}G (ViT-bigG has 2.5G); refused before anything is allocated"
        )


def _check_fields(fields: dict[str, Any], source: str, where: str) -> None:
    for key, (least, most) in ARCHITECTURE_CAPS.items():
        if key not in fields or fields[key] is None:
            continue
        value = fields[key]
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_LIST:
            raise UsageError(
                f"{source}: {where}{key} lists {len(values)} values, more than any real model ({MAX_LIST})"
            )
        for v in values:
            whole = key != "mlp_ratio"
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not number or (whole and v != int(v)) or not least <= v <= most:
                kind = "a whole number" if whole else "a number"
                shown = repr(v)[:40]
                raise UsageError(f"{source}: {where}{key} = {shown} must be {kind} from {least:g} to {most:g}")


def estimated_parameters(config: dict[str, Any]) -> float:
    """About how many parameters the towers of a (field-checked) config build: blocks, embeddings, projections."""
    total = 0.0
    embed = _number(config.get("embed_dim"), 512)
    for tower in TOWERS:
        fields = {**DEFAULTS[tower], **{k: v for k, v in (config.get(tower) or {}).items() if v is not None}}
        width = _number(fields.get("width"), 0)
        layers = fields.get("layers")
        depth = sum(layers) if isinstance(layers, list) else _number(layers, 0)
        blocks = depth * (4 + 2 * _number(fields.get("mlp_ratio"), 4.0)) * width**2  # attention + MLP
        if tower == "vision_cfg":
            grid = (_number(fields.get("image_size"), 224) / max(_number(fields.get("patch_size"), 16), 1)) ** 2
            extra = (grid + 3 * _number(fields.get("patch_size"), 16) ** 2) * width  # positions + patch embedding
        else:
            extra = (_number(fields.get("vocab_size"), 0) + _number(fields.get("context_length"), 0)) * width
        total += blocks + extra + embed * width
    return total


def _number(value: Any, default: float) -> float:
    if isinstance(value, list):  # a ResNet's stage list, or an image size given as [H, W]
        value = max(value) if value else default
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
