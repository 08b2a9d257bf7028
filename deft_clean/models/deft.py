"""DeFT's model in one file: dual text prompts, visual prompt tokens, the model, its loss and its clean rule.

- Dual (positive / negative) learnable text prompts on a frozen CLIP text encoder. Each class k gets two
  prompts, ``[SOT] ctx_1 .. ctx_M  <class name> . [EOT]``: one with the positive context and one with the
  negative context. The contexts are learned; the class-name tokens are not.
- Deep visual prompt tuning (VPT) on every image tower with tokens (open_clip's ViT, timm's ViT and Eva towers),
  or a tower-agnostic adapter on towers without tokens: :mod:`deft_clean.models.towers` holds one adapter per
  tower family, so nothing here branches on the family.
- :class:`DeftModel` holds both on a frozen CLIP; :func:`deft_loss` is the paper's L_sim + L_dp;
  :func:`dual_prompt_clean` is the paper's clean rule (p_clean > 0.5, optionally with the top-1 check).

Training the prompts (the schedule, checkpoints, the judgement every epoch) lives in
:mod:`deft_clean.detecting.prompt_training`; scoring passes in :mod:`deft_clean.detecting.passes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..run.errors import UsageError, option
from .clip import LoadedClip, encode_image, freeze, logit_scale
from .towers import DEFAULT_TOKENLESS_ADAPTER, TextTower, context_span, image_adaptation, text_tower

if TYPE_CHECKING:
    from ..run.options import DetectConfig


CONTEXT_STD = 0.02  # normal init of random context vectors (CoOp / DeFT)


class PromptFeatures(NamedTuple):
    positive: torch.Tensor  # [K, E] L2-normalised text features of the positive prompts
    negative: torch.Tensor  # [K, E] L2-normalised text features of the negative prompts


class DualPromptLearner(nn.Module):
    """Learnable positive and negative contexts shared by all classes (or one per class).

    Works with every text tower :mod:`deft_clean.models.towers` adapts and every tokenizer open_clip uses:
    the contexts replace the placeholder tokens wherever the tokenizer puts them (after a start token, or first).
    """

    def __init__(
        self,
        text: TextTower,
        tokenizer: Any,
        prompt_names: list[str],
        *,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
    ) -> None:
        super().__init__()
        self.text = text
        device = text.device
        init_vectors = None
        if ctx_init:
            start, n_ctx = context_span(tokenizer, ctx_init, prompt_names[0])
            init_tokens = tokenizer([f"{ctx_init} {prompt_names[0]}."]).to(device)  # [1, L]
            with torch.no_grad():
                init_vectors = text.embed_tokens(init_tokens)[0, start : start + n_ctx]  # [n_ctx, width]
        self.n_ctx = n_ctx
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{placeholder} {name}." for name in prompt_names]).to(device)  # [K, L]
        length = int(tokens.shape[1])
        what = option("ctx_init") if ctx_init else option("n_ctx")
        if n_ctx + 3 > length:  # start, the contexts, a class-name token, "." (or end) must fit the text tower
            raise UsageError(
                f"{what} gives {n_ctx} context tokens, but this model's text tower holds {length} tokens "
                f"(at most {length - 3} contexts)"
            )
        self.start = 0
        for k, name in enumerate(prompt_names):
            start, count = context_span(tokenizer, placeholder, name)
            if count != n_ctx or (k and start != self.start):
                raise UsageError(f"this model's tokenizer does not split the {what} placeholder into {n_ctx} tokens")
            self.start = start
        tokens = text.trim(tokens)  # exact: later tokens never change the pooled one where the mask is causal
        with torch.no_grad():
            embedded = text.embed_tokens(tokens)  # [K, L, width]
        start = self.start
        self.register_buffer("prefix", embedded[:, :start].clone(), persistent=False)  # [K, S, width] start token(s)
        self.register_buffer("suffix", embedded[:, start + n_ctx :].clone(), persistent=False)  # [K, L-S-M, width]
        self.register_buffer("tokens", tokens, persistent=False)  # [K, L] ids the embeddings stand for

        n_classes = len(prompt_names)
        shape = (n_classes, n_ctx, text.width) if class_specific else (n_ctx, text.width)

        def initial() -> torch.Tensor:
            if init_vectors is not None:
                return init_vectors.expand(shape).clone()
            return torch.randn(shape, device=device) * CONTEXT_STD

        self.ctx_pos = nn.Parameter(initial())  # [M, width] or [K, M, width]
        self.ctx_neg = nn.Parameter(initial())

    def _embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        n_classes = self.suffix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_classes, -1, -1)
        return torch.cat([self.prefix, ctx.to(self.suffix.dtype), self.suffix], dim=1)  # [K, L, width]

    def forward(self) -> PromptFeatures:
        """Text features of all 2K prompts, encoded in one pass."""
        embeddings = torch.cat([self._embeddings(self.ctx_pos), self._embeddings(self.ctx_neg)])  # [2K, L, width]
        features = self.text(embeddings, self.tokens.repeat(2, 1))  # [2K, E]
        positive, negative = features.chunk(2)
        return PromptFeatures(positive, negative)


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
        tokenless: str = DEFAULT_TOKENLESS_ADAPTER,
    ) -> None:
        super().__init__()
        self.clip = loaded.model
        freeze(self.clip)
        self.prompts = DualPromptLearner(
            text_tower(self.clip),
            loaded.tokenizer,
            prompt_names,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            class_specific=class_specific,
        )
        # Deep VPT where the image tower has tokens, else the tower-agnostic adapter (towers.image_adaptation);
        # its parameters live inside the CLIP's modules: keep a list for the optimiser.
        self.image_side = image_adaptation(self.clip, vpt_tokens=vpt_tokens, vpt_depth=vpt_depth, tokenless=tokenless)
        self.visual_prompts = self.image_side.parameters
        self.adaptation = self.image_side.description  # one line: what the image side trains

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
            tokenless=cfg.image_adapter,
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
        return encode_image(self.clip, images)  # [B, E] through the adapted image tower

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside, the image tower runs as loaded (no prompts, no tuned norms): frozen features from the
        same decoded batch as the adapted ones."""
        with self.image_side.disabled():
            yield

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, E] features of the loaded image tower, without DeFT's image-side adaptation."""
        with self.frozen():
            return encode_image(self.clip, images)

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
