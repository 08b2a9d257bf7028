"""Image transforms: CLIP's own normalisation, light augmentation for training, none for scoring."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T


def train_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], *, hflip: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop (scale 0.5-1) and optional horizontal flip, at the model's input size."""
    steps: list[Callable] = [T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side and center-crop to the model's input size."""
    return T.Compose([square_transform(size), T.ToTensor(), T.Normalize(mean, std)])


def square_transform(size: int) -> Callable[[Image.Image], Image.Image]:
    """The geometric part of :func:`eval_transform`: what the decoded-image cache stores."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
