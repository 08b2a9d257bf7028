"""Dual (positive / negative) learnable text prompts on a frozen CLIP text encoder.

Each class k gets two prompts, ``[SOT] ctx_1 .. ctx_M  <class name> . [EOT]``: one with the positive
context and one with the negative context. The contexts are learned; the class-name tokens are not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..run.backbone import TextEncoder

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
