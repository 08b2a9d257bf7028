"""One adapter per open_clip tower family, so that DeFT's model never branches on the family.

open_clip builds a CLIP from one of several image towers (its own ``VisionTransformer``, ``ModifiedResNet``, or
``TimmModel`` around a timm trunk) and one of several text towers (its own ``TextTransformer``, causal or not,
pooled at argmax / eos / last, or ``HFTextEncoder`` around a Hugging Face model). The adapters here answer the
few questions DeFT asks of a tower:

- image side (:func:`image_adaptation`): where learnable prompt tokens go (deep VPT: the token blocks, their
  width and patch size, rotary positions to leave alone), or, for towers without tokens (ConvNeXt, FastViT,
  Swin, ResNets), which parameters a tower-agnostic adapter tunes instead (LayerNorm/BatchNorm scales and the
  biases of the last stage, BitFit-style);
- text side (:func:`text_tower`): token ids -> token embeddings, and prompt embeddings -> sentence features.

:func:`config_family` names the family of an open_clip model config without building it (the models table
in docs/models.md and the coverage test use it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..run.errors import UsageError, option

# ----------------------------------------------------------------------------------------------------
# Families


class Family(NamedTuple):
    vision: str  # vit | timm-vit | timm-eva | timm-tokenless | resnet
    text: str  # native | native-cls (CoCa) | hf
    tokenizer: str  # bpe (open_clip's) | hf (a Hugging Face tokenizer: SigLIP, CLIPA, MetaCLIP-2, HF towers)


# timm modules whose models are a ``VisionTransformer`` (prompt tokens appended after the patch tokens) or an
# ``Eva`` (the same, with rotary positions on the patch tokens): every other timm trunk has no token sequence
# DeFT can extend (ConvNeXt, FastViT, Swin's windows, relative-position ViTs whose bias is sized to the grid).
TIMM_VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "vitamin")
TIMM_EVA_MODULES = ("eva",)


def config_family(name: str, config: dict[str, Any]) -> Family:
    """The family of an open_clip model config (a dict as ``open_clip.get_model_config`` returns it)."""
    vision_cfg, text_cfg = config.get("vision_cfg", {}), config.get("text_cfg", {})
    timm_name = vision_cfg.get("timm_model_name")
    if timm_name:
        from timm.models import model_entrypoint

        try:
            module = model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]
        except (RuntimeError, KeyError):  # a timm too old to know the model
            module = ""
        vision = (
            "timm-vit" if module in TIMM_VIT_MODULES else "timm-eva" if module in TIMM_EVA_MODULES else "timm-tokenless"
        )
    elif isinstance(vision_cfg.get("layers"), (list, tuple)):
        vision = "resnet"
    else:
        vision = "vit"
    if text_cfg.get("hf_model_name"):
        text = "hf"
    elif text_cfg.get("embed_cls"):
        text = "native-cls"
    else:
        text = "native"
    hf_tokenizer = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name") or "siglip" in name.lower()
    return Family(vision, text, "hf" if hf_tokenizer else "bpe")


def built_family(clip: nn.Module, tokenizer: Any) -> Family:
    """The family of a built model (what :func:`config_family` says of its config, read off the modules)."""
    tower = token_tower(clip)
    if tower is not None:
        vision = tower.family
    else:
        vision = "timm-tokenless" if hasattr(clip.visual, "trunk") else "resnet"
    text = text_tower(clip)
    text_family = "hf" if isinstance(text, HFText) else "native-cls" if text.cls_emb is not None else "native"
    tokenizer_family = "bpe" if type(tokenizer).__name__ == "SimpleTokenizer" else "hf"
    return Family(vision, text_family, tokenizer_family)


# ----------------------------------------------------------------------------------------------------
# Image side


def embed_width(clip: nn.Module, image_size: int) -> int:
    """Width E of the joint embedding, read from the image tower (``output_dim``) or, for towers that do not
    say (timm towers), from one forward pass of a blank image through ``encode_image``."""
    width = getattr(clip.visual, "output_dim", None)
    if isinstance(width, int) and width > 0:
        return width
    parameter = next(clip.parameters())
    blank = torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    was_training = clip.training
    clip.eval()
    with torch.no_grad():
        width = int(clip.encode_image(blank).shape[-1])
    clip.train(was_training)
    return width


@dataclass
class TokenTower:
    """The part of a ViT image tower that deep VPT extends."""

    blocks: nn.Module  # ModuleList or Sequential of residual blocks, batch-first [B, T, D]
    width: int  # token width D
    patch: int  # patch side in pixels (sets VPT's init range)
    family: str  # vit | timm-vit | timm-eva
    patches: int | None = None  # patch tokens in the sequence at the model's image size (None: unknown)


def token_tower(clip: nn.Module) -> TokenTower | None:
    """The token blocks of a ViT image tower, or None for a tower without a token sequence."""
    visual = clip.visual
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # open_clip's own VisionTransformer
        if not getattr(transformer, "batch_first", True):
            raise UsageError("this open_clip build runs the vision transformer sequence-first; update open_clip_torch")
        grid = getattr(visual, "grid_size", None)
        patches = int(grid[0] * grid[1]) if isinstance(grid, (tuple, list)) and len(grid) == 2 else None
        return TokenTower(transformer.resblocks, int(transformer.width), _side(visual.patch_size), "vit", patches)
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        return None
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(trunk, (VisionTransformer, Eva)):
        return None
    patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", 16)
    family = "timm-eva" if isinstance(trunk, Eva) else "timm-vit"
    patches = getattr(getattr(trunk, "patch_embed", None), "num_patches", None)
    return TokenTower(trunk.blocks, int(trunk.embed_dim), _side(patch), family, int(patches) if patches else None)


def _side(size: Any) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class PromptedBlock(nn.Module):
    """A residual block that attends over ``n_tokens`` extra learnable tokens, appended after the sequence and
    dropped again after the block (deep VPT: every layer gets fresh prompts, pooling never sees them).

    Rotary position tables (timm's Eva passes ``rope=`` [..., T_patches, 2 * dim] as sin | cos halves) get
    identity rows for the prompts (sin 0, cos 1): prompts sit outside the rotary positions."""

    def __init__(self, block: nn.Module, n_tokens: int, width: int, init_bound: float) -> None:
        super().__init__()
        self.block = block
        self.enabled = True  # off: the block runs as the frozen model's (see ImageAdaptation.disabled)
        device = next(block.parameters()).device
        self.prompts = nn.Parameter(torch.empty(n_tokens, width, device=device).uniform_(-init_bound, init_bound))

    def forward(self, x: torch.Tensor, *args: object, **kwargs: Any) -> torch.Tensor:
        # x: [B, T, width]; args/kwargs (attn_mask, rope, checkpointing) pass through
        if not self.enabled:
            return self.block(x, *args, **kwargs)
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, P, width]
        rope = kwargs.get("rope")
        if isinstance(rope, torch.Tensor):
            kwargs["rope"] = _identity_padded(rope, prompts.shape[1])
        out = self.block(torch.cat([x, prompts], dim=1), *args, **kwargs)  # [B, T + P, width]
        return out[:, : x.shape[1]]


def _identity_padded(rope: torch.Tensor, extra: int) -> torch.Tensor:
    """A rotary table [..., N, 2 * d] (sin | cos) with ``extra`` identity rows (sin 0, cos 1) after its N rows."""
    half = rope.shape[-1] // 2
    shape = (*rope.shape[:-2], extra, half)
    identity = torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1)  # [..., extra, 2 * d]
    return torch.cat([rope, identity], dim=-2)


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class ImageAdaptation:
    """What DeFT trains on the image side of a frozen CLIP, and a way to run the frozen tower again."""

    def __init__(self, parameters: list[nn.Parameter], description: str, *, blocks: list[PromptedBlock]) -> None:
        self.parameters = parameters
        self.description = description  # one line for the summary and the metadata
        self._blocks = blocks
        # tuned norms and biases change the tower in place: keep what it was loaded with
        self._loaded = [] if blocks else [p.detach().clone() for p in parameters]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the image tower as it was loaded (prompts off, tuned scales and biases swapped back)."""
        for block in self._blocks:
            block.enabled = False
        tuned = [p.detach().clone() for p in self.parameters] if self._loaded else []
        self._copy_into(self._loaded)
        try:
            yield
        finally:
            for block in self._blocks:
                block.enabled = True
            self._copy_into(tuned)

    @torch.no_grad()
    def _copy_into(self, values: list[torch.Tensor]) -> None:
        if values:
            for parameter, value in zip(self.parameters, values, strict=True):
                parameter.copy_(value)


TOKENLESS_ADAPTERS = ("norm-bias", "none")
# Measured in benchmarks/results/families.md (tiny ConvNeXt and ModifiedResNet stand-ins, mnist-bold, symmetric 20/40%
# and pair 30%, one seed): tuning the last stage's norm scales and biases beside the prompts moved F1 by -0.8 to +0.8
# points against text prompts only, within the seed-to-seed spread, so towers without tokens train the text prompts
# only unless asked (fewer parameters to overfit a noisy set, nothing to restore).
DEFAULT_TOKENLESS_ADAPTER = "none"


def image_adaptation(
    clip: nn.Module, *, vpt_tokens: int, vpt_depth: int | None, tokenless: str = DEFAULT_TOKENLESS_ADAPTER
) -> ImageAdaptation:
    """Install DeFT's image-side adaptation on ``clip`` (in place) and return its parameters.

    Deep VPT with ``vpt_tokens`` tokens in the first ``vpt_depth`` blocks (all when None) where the tower has
    tokens; otherwise ``tokenless``: ``norm-bias`` (the norm scales and biases of the tower's last stage) or
    ``none`` (text prompts only). ``vpt_tokens=0`` turns every image-side adaptation off.
    """
    if tokenless not in TOKENLESS_ADAPTERS:
        raise UsageError(f"image adapter must be one of {', '.join(TOKENLESS_ADAPTERS)}, got {tokenless!r}")
    if vpt_tokens <= 0:
        return ImageAdaptation([], "none (--vpt-tokens 0)", blocks=[])
    tower = token_tower(clip)
    if tower is None:
        if tokenless == "none":
            return ImageAdaptation([], "none (this image tower has no tokens for VPT; text prompts only)", blocks=[])
        stage = last_stage(clip.visual)
        parameters = norm_and_bias_parameters(stage)
        for parameter in parameters:
            parameter.requires_grad_(True)
        count = sum(p.numel() for p in parameters)
        return ImageAdaptation(parameters, f"norm-bias ({count:,} norm and bias values of the last stage)", blocks=[])
    blocks = tower.blocks
    if vpt_depth is not None and not 0 <= vpt_depth <= len(blocks):
        n = len(blocks)
        raise UsageError(f"{option('vpt_depth')} {vpt_depth}: this model has {n} vision layers; give 0 to {n}")
    depth = len(blocks) if vpt_depth is None else vpt_depth
    bound = math.sqrt(6.0 / (3 * tower.patch * tower.patch + tower.width))  # VPT: uniform Xavier over patch dims
    wrapped = []
    for i in range(depth):
        if isinstance(blocks[i], PromptedBlock):
            raise ValueError("visual prompts are already installed in this model")
        blocks[i] = PromptedBlock(blocks[i], vpt_tokens, tower.width, bound)
        wrapped.append(blocks[i])
    description = f"vpt-deep ({vpt_tokens} tokens x {depth} layers, {tower.family})"
    return ImageAdaptation([block.prompts for block in wrapped], description, blocks=wrapped)


def last_stage(visual: nn.Module) -> nn.Module:
    """The last stage of a tower without tokens: timm's ``stages[-1]`` / ``layers[-1]``, ModifiedResNet's
    ``layer4``, else the whole tower."""
    trunk = getattr(visual, "trunk", visual)
    for name in ("stages", "layers", "levels"):
        stages = getattr(trunk, name, None)
        if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
            return stages[-1]
    return getattr(trunk, "layer4", trunk)


def norm_and_bias_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every norm layer's scale and shift, and every bias, of ``module`` (BitFit plus norms)."""
    chosen: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        is_norm = isinstance(sub, NORM_TYPES) or "norm" in type(sub).__name__.lower()
        for name, parameter in sub.named_parameters(recurse=False):
            if is_norm or name == "bias":
                chosen[id(parameter)] = parameter
    return list(chosen.values())


# ----------------------------------------------------------------------------------------------------
# Text side


class NativeText:
    """open_clip's ``TextTransformer`` (or the text tower inlined in ``CLIP``), fed with token embeddings.

    Causal or not, pooled at argmax / eos / last / first; CoCa's appended class token and padding mask too.
    Not an nn.Module: it only borrows modules the CLIP model owns."""

    def __init__(self, tower: nn.Module) -> None:
        self.tower = tower
        self.pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        self.cls_emb = getattr(tower, "cls_emb", None)
        self.pad_mask = bool(getattr(tower, "use_pad_mask", False)) or self.cls_emb is not None
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise UsageError(f"unsupported text pooling {self.pool_type!r}")

    @property
    def width(self) -> int:
        return int(self.tower.token_embedding.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] -> token embeddings [N, L, width]."""
        return self.tower.token_embedding(tokens)

    def trim(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cut [N, L] token rows after the last pooled token where later tokens cannot change it (a causal mask,
        pooled at argmax / eos): the same features at a fraction of the cost."""
        if self.tower.attn_mask is None or self.pool_type not in ("argmax", "eos") or self.cls_emb is not None:
            return tokens
        return tokens[:, : int(self._pool_index(tokens).max()) + 1]

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        n, length = tokens.shape
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return torch.full((n,), length - 1 if self.pool_type == "last" else 0, dtype=torch.long, device=tokens.device)

    def __call__(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [N, L, width] (``tokens`` [N, L]: the ids they stand for) -> normalised features [N, E]."""
        tower = self.tower
        cast = tower.transformer.get_cast_dtype()
        x = embeddings.to(cast)
        length = x.shape[1]
        if self.cls_emb is not None:  # CoCa: a class token appended, its output is the sentence feature
            cls = self.cls_emb.to(cast).reshape(1, 1, -1).expand(x.shape[0], 1, -1)  # [N, 1, width]
            x = torch.cat([x, cls], dim=1)  # [N, L + 1, width]
            length += 1
        x = x + tower.positional_embedding[:length].to(cast)
        mask = tower.attn_mask
        if mask is not None:
            mask = mask[:length, :length].to(x.device)
        if self.pad_mask:
            padding = tower._build_additive_mask(tokens, length, cast)  # [N * heads, L, L]
            mask = padding if mask is None else mask.unsqueeze(0) + padding
        x = tower.transformer(x, attn_mask=mask)
        if self.cls_emb is not None:
            x = tower.ln_final(x[:, -1])  # [N, width]
        else:
            x = tower.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), self._pool_index(tokens).to(x.device)]  # [N, width]
        projection = tower.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return nn.functional.normalize(x, dim=-1)


class HFText:
    """open_clip's ``HFTextEncoder``: a Hugging Face encoder fed with ``inputs_embeds``, then its pooler and
    projection, exactly as its ``forward`` does with token ids."""

    def __init__(self, tower: nn.Module) -> None:
        self.tower = tower
        self.pad_id = tower.config.pad_token_id

    @property
    def width(self) -> int:
        return int(self.tower.transformer.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.tower.transformer.get_input_embeddings().weight.device

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.transformer.get_input_embeddings()(tokens)  # [N, L, width]

    def trim(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens  # bidirectional: every token can change the pooled one

    def __call__(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()  # [N, L]
        out = self.tower.transformer(inputs_embeds=embeddings, attention_mask=mask)
        pooled = self.tower.pooler(out, mask)  # [N, width]
        return nn.functional.normalize(self.tower.proj(pooled), dim=-1)


TextTower = NativeText | HFText


def text_tower(clip: nn.Module) -> TextTower:
    """The adapter for ``clip``'s text tower."""
    tower = getattr(clip, "text", clip)
    if hasattr(tower, "transformer") and hasattr(tower, "pooler") and hasattr(tower, "proj"):
        return HFText(tower)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, name) for name in needed):
        raise UsageError(f"this CLIP's text tower ({type(tower).__name__}) is not one open_clip builds")
    return NativeText(tower)


def context_span(tokenizer: Any, context: str, name: str) -> tuple[int, int]:
    """Where ``context``'s tokens sit in the tokenised prompt ``"{context} {name}."``: (start, count).

    Tokenizers differ in what they put first (open_clip's start token, RoBERTa's ``<s>``, nothing for T5/Gemma):
    the context is the run of tokens that the prompt has and ``"{name}."`` alone does not."""
    with_context = tokenizer([f"{context} {name}."])[0].tolist()  # [L]
    bare = tokenizer([f"{name}."])[0].tolist()  # [L]
    length = len(with_context)
    start = next((i for i in range(length) if with_context[i] != bare[i]), length)
    for count in range(1, length - start):
        if with_context[start + count :] == bare[start : length - count]:
            return start, count
    raise UsageError(
        f"class name {name!r} with the prompt context does not fit this model's {length}-token text tower; "
        "shorten the class name or the context"
    )
