"""Deep visual prompt tuning (VPT) for open_clip ViTs, added by wrapping residual blocks.

Each wrapped block appends its own learnable tokens to the sequence, runs the original block, and
drops them again. That is deep VPT exactly (every layer's prompt outputs are discarded and replaced by
the next layer's fresh prompts), and because the tokens are gone before pooling, any pooling
(class token, average, attention pool) sees the sequence it expects.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..run.backbone import vision_blocks, vision_width_and_patch


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


def remove_visual_prompts(clip: nn.Module) -> None:
    """Undo :func:`add_visual_prompts`, restoring the original blocks."""
    blocks = vision_blocks(clip)
    for i, block in enumerate(blocks):
        if isinstance(block, PromptedBlock):
            blocks[i] = block.block
