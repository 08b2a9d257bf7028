"""DeFT's model in one file: dual text prompts, visual prompt tokens, the model, its loss and its clean rule.

- Dual (positive / negative) learnable text prompts on a frozen CLIP text encoder. Each class k gets two
  prompts, ``[SOT] ctx_1 .. ctx_M  <class name> . [EOT]``: one with the positive context and one with the
  negative context. The contexts are learned; the class-name tokens are not.
- Deep visual prompt tuning (VPT) for open_clip ViTs, added by wrapping residual blocks. Each wrapped block
  appends its own learnable tokens to the sequence, runs the original block, and drops them again. That is
  deep VPT exactly (every layer's prompt outputs are discarded and replaced by the next layer's fresh
  prompts), and because the tokens are gone before pooling, any pooling sees the sequence it expects.
- :class:`DeftModel` holds both on a frozen CLIP; :func:`deft_loss` is the paper's L_sim + L_dp;
  :func:`dual_prompt_clean` is the paper's clean rule (p_clean > 0.5, optionally with the top-1 check).

Training the prompts (the schedule, checkpoints, the judgement every epoch) lives in
:mod:`deft_clean.detecting.prompt_training`; scoring passes in :mod:`deft_clean.detecting.passes`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .clip import (
    LoadedClip,
    TextEncoder,
    encode_image,
    freeze,
    logit_scale,
    vision_blocks,
    vision_width_and_patch,
)

if TYPE_CHECKING:
    from ..run.options import DetectConfig


CONTEXT_STD = 0.02  # normal init of random context vectors (CoOp / DeFT)


class PromptFeatures(NamedTuple):
    positive: torch.Tensor  # [K, E] L2-normalised text features of the positive prompts
    negative: torch.Tensor  # [K, E] L2-normalised text features of the negative prompts


class DualPromptLearner(nn.Module):
    """Learnable positive and negative contexts shared by all classes (or one per class)."""

    def __init__(
        self,
        text: TextEncoder,
        tokenizer: object,
        prompt_names: list[str],
        *,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
    ) -> None:
        super().__init__()
        self.text = text
        device = text.tower.token_embedding.weight.device
        init_vectors = None
        if ctx_init:
            init_tokens = tokenizer([ctx_init]).to(device)  # [1, context_length]
            n_ctx = int(text.pool_index(init_tokens)[0]) - 1  # words between SOT and EOT
            with torch.no_grad():
                init_vectors = text.embed_tokens(init_tokens)[0, 1 : 1 + n_ctx]  # [n_ctx, width]
        self.n_ctx = n_ctx
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{placeholder} {name}." for name in prompt_names]).to(device)  # [K, context_length]
        length = int(tokens.shape[1])
        if n_ctx + 3 > length:  # start, the contexts, a class-name token, "." (or end) must fit the text tower
            from ..run.errors import UsageError, option

            what = option("ctx_init") if ctx_init else option("n_ctx")
            raise UsageError(
                f"{what} gives {n_ctx} context tokens, but this model's text tower holds {length} tokens "
                f"(at most {length - 3} contexts)"
            )
        pool_index = text.pool_index(tokens)
        if text.causal:
            # Later tokens never change the pooled one, so cutting after the longest prompt is exact.
            tokens = tokens[:, : int(pool_index.max()) + 1]
        with torch.no_grad():
            embedded = text.embed_tokens(tokens)  # [K, L, width]
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # [K, 1, width] SOT
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)  # [K, L-1-M, width]
        self.register_buffer("pool_index", pool_index, persistent=False)  # [K]

        n_classes = len(prompt_names)
        shape = (n_classes, n_ctx, text.width) if class_specific else (n_ctx, text.width)

        def initial() -> torch.Tensor:
            if init_vectors is not None:
                return init_vectors.expand(shape).clone()
            return torch.randn(shape, device=device) * CONTEXT_STD

        self.ctx_pos = nn.Parameter(initial())  # [M, width] or [K, M, width]
        self.ctx_neg = nn.Parameter(initial())

    def _embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        n_classes = self.prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_classes, -1, -1)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)  # [K, L, width]

    def forward(self) -> PromptFeatures:
        """Text features of all 2K prompts, encoded in one pass."""
        embeddings = torch.cat([self._embeddings(self.ctx_pos), self._embeddings(self.ctx_neg)])  # [2K, L, width]
        features = self.text(embeddings, self.pool_index.repeat(2))  # [2K, E]
        positive, negative = features.chunk(2)
        return PromptFeatures(positive, negative)


class PromptedBlock(nn.Module):
    """A residual block that attends over ``n_tokens`` extra learnable tokens."""

    def __init__(self, block: nn.Module, n_tokens: int, width: int, init_bound: float) -> None:
        super().__init__()
        self.block = block
        device = next(block.parameters()).device
        self.prompts = nn.Parameter(torch.empty(n_tokens, width, device=device).uniform_(-init_bound, init_bound))

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        # x: [B, T, width]; args/kwargs (attn_mask, checkpointing) pass through untouched
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, P, width]
        out = self.block(torch.cat([x, prompts], dim=1), *args, **kwargs)  # [B, T + P, width]
        return out[:, : x.shape[1]]


def add_visual_prompts(clip: nn.Module, n_tokens: int, depth: int | None = None) -> list[nn.Parameter]:
    """Wrap the first ``depth`` vision blocks (all when None) with prompts; return the new parameters."""
    if n_tokens <= 0:
        return []
    blocks = vision_blocks(clip)
    width, patch = vision_width_and_patch(clip)
    bound = math.sqrt(6.0 / (3 * patch * patch + width))  # as in VPT: uniform Xavier over patch dims
    if depth is not None and not 0 <= depth <= len(blocks):
        from ..run.errors import UsageError, option

        layers = len(blocks)
        raise UsageError(f"{option('vpt_depth')} {depth}: this model has {layers} vision layers; give 0 to {layers}")
    depth = len(blocks) if depth is None else depth
    parameters = []
    for i in range(depth):
        if isinstance(blocks[i], PromptedBlock):
            raise ValueError("visual prompts are already installed in this model")
        wrapped = PromptedBlock(blocks[i], n_tokens, width, bound)
        blocks[i] = wrapped
        parameters.append(wrapped.prompts)
    return parameters


P_MIN = 1e-5  # probabilities are clamped before log, as in the reference


class DeftModel(nn.Module):
    """CLIP with dual text prompts and visual prompt tokens; only the prompts train."""

    def __init__(
        self,
        loaded: LoadedClip,
        prompt_names: list[str],
        *,
        n_ctx: int,
        ctx_init: str | None,
        class_specific: bool,
        vpt_tokens: int,
        vpt_depth: int | None,
    ) -> None:
        super().__init__()
        self.clip = loaded.model
        freeze(self.clip)
        self.prompts = DualPromptLearner(
            TextEncoder(self.clip),
            loaded.tokenizer,
            prompt_names,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            class_specific=class_specific,
        )
        # VPT parameters live inside the wrapped vision blocks; keep a list for the optimiser.
        self.visual_prompts = add_visual_prompts(self.clip, vpt_tokens, vpt_depth)

    @classmethod
    def from_config(cls, loaded: LoadedClip, prompt_names: list[str], cfg: DetectConfig) -> DeftModel:
        """The model a detect config describes: its contexts (n_ctx, ctx_init, class_specific) and its visual
        prompt tokens (vpt_tokens, vpt_depth)."""
        return cls(
            loaded,
            prompt_names,
            n_ctx=cfg.n_ctx,
            ctx_init=cfg.ctx_init,
            class_specific=cfg.class_specific,
            vpt_tokens=cfg.vpt_tokens,
            vpt_depth=cfg.vpt_depth,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompts.ctx_pos, self.prompts.ctx_neg, *self.visual_prompts]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors only (contexts and visual prompts), detached copies on CPU."""
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.trainable_parameters()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors saved by :meth:`trainable_state` back into the parameters."""
        parameters = dict(self.named_parameters())
        for name, value in state.items():
            parameters[name].copy_(value)

    def text_features(self) -> PromptFeatures:
        return self.prompts()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_image(self.clip, images)  # [B, E]

    def scale(self) -> torch.Tensor:
        return logit_scale(self.clip)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, PromptFeatures]:
        """Image features [B, E] and the prompts' text features (one training step's forward pass)."""
        return self.image_features(images), self.text_features()


def deft_loss(
    image_features: torch.Tensor,
    text: PromptFeatures,
    scale: torch.Tensor,
    labels: torch.Tensor,
    *,
    warmup: bool,
    clean_rule: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeFT's L_sim + L_dp for one batch of usable samples.

    Args:
        image_features: [B, E] normalised, with gradient to the visual prompts.
        text: positive/negative prompt features, [K, E] each.
        labels: [B] given labels.
    Returns:
        (loss scalar, clean mask [B]); the loss is finite even when no sample is selected.
    """
    n_classes = text.positive.shape[0]
    positive = scale * image_features @ text.positive.t()  # [B, K]; grads: VPT, positive context
    negative = scale * image_features.detach() @ text.negative.t()  # [B, K]; grads: negative context
    p_yes = torch.sigmoid(positive.detach() - negative)  # [B, K] = softmax([pos, neg])[0] per class
    rows = torch.arange(labels.shape[0], device=labels.device)

    if warmup:
        clean = torch.ones_like(labels, dtype=torch.bool)
        target = labels
    else:
        clean = dual_prompt_clean(p_yes.detach()[rows, labels], positive.detach().argmax(dim=1), labels, clean_rule)
        target = torch.where(clean, labels, positive.detach().argmax(dim=1))

    # complementary label: any class but the target, uniformly
    complementary = (target + torch.randint(1, n_classes, target.shape, device=target.device)) % n_classes
    loss_dp = -(
        p_yes[rows, target].clamp(P_MIN, 1.0).log() + (1 - p_yes[rows, complementary]).clamp(P_MIN, 1.0).log()
    ).mean()

    ce = F.cross_entropy(positive, labels, reduction="none")  # [B]
    loss_sim = (ce * clean).sum() / clean.sum().clamp(min=1)
    return loss_sim + loss_dp, clean


def dual_prompt_clean(p_clean: Any, predicted: Any, labels: Any, rule: str) -> Any:
    """The paper's rule, on numpy arrays or torch tensors alike: p_clean > 0.5, and with
    ``threshold+argmax`` also the positive prompts' top-1 class == the given label. Returns bool [N]."""
    clean = p_clean > 0.5
    if rule == "threshold+argmax":
        clean = clean & (predicted == labels)
    return clean
