"""What runs on the accelerator: uint8 batches normalised and augmented there.

On a GPU the input pipeline, not the model, bounds a detect epoch (~1,000 img/s of ViT-B/16 on an H100
where the model alone does several times that): every worker decodes, crops, flips, converts to float and
normalises each image on the CPU, and a float32 batch is four times the bytes of its uint8 pixels. With
device transforms the workers only decode and square-crop (the decoded-image cache's format), batches
travel as uint8 and the random resized crop, flip and normalisation run on the device for the whole batch.
Scoring (no augmentation) gives the same tensors as the CPU path up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from .transforms import square_transform

CROP_SCALE = (0.5, 1.0)  # area fraction of a random resized crop, as transforms.train_transform
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop (torchvision's default)


def uint8_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """CPU part of the device path: resize the short side, center-crop, uint8 [3, size, size] (no float)."""
    square = square_transform(size)

    def transform(image: Image.Image) -> torch.Tensor:
        return TF.pil_to_tensor(square(image))

    return transform


class DeviceTransform:
    """uint8 [B, 3, S, S] on the device -> normalised float [B, 3, S, S]; with ``train``, per image a random
    resized crop (area ``CROP_SCALE``, ratio ``CROP_RATIO``) and, with ``hflip``, a flip with probability 1/2.

    A float batch (one the CPU path already normalised) is returned unchanged, so the call is safe on any batch.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool,
        hflip: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mean, self.std = mean, std
        self.train, self.hflip = train, hflip
        self.generator = generator  # on the device the batches are on; None = torch's global stream

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        x = images.float().div_(255.0)  # [B, 3, S, S] in [0, 1], as ToTensor gives
        if self.train:
            x = self.random_crops(x)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def random_crops(self, x: torch.Tensor) -> torch.Tensor:
        """One random resized crop (+ flip) per image, resampled bicubically to the input size in one call."""
        b = x.shape[0]
        options = {"device": x.device, "generator": self.generator}
        low, high = CROP_SCALE
        area = low + (high - low) * torch.rand(b, **options)  # [B] fraction of the square
        low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        ratio = (low + (high - low) * torch.rand(b, **options)).exp()  # [B] width / height, log-uniform
        width = (area * ratio).sqrt().clamp(max=1.0)  # [B] crop width / image width
        height = (area / ratio).sqrt().clamp(max=1.0)
        centre_x = (torch.rand(b, **options) * 2 - 1) * (1 - width)  # [B] in normalised [-1, 1] coordinates
        centre_y = (torch.rand(b, **options) * 2 - 1) * (1 - height)
        flip = torch.ones(b, device=x.device)
        if self.hflip:
            flip = torch.where(torch.rand(b, **options) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)  # [B, 2, 3] output -> input coordinates
        theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, S, S, 2]
        return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp_(0.0, 1.0)


def device_transforms_wanted(requested: bool | None, device: torch.device) -> bool:
    """Device transforms as asked; when not asked, on for CUDA (where they pay), off elsewhere."""
    return device.type == "cuda" if requested is None else requested
