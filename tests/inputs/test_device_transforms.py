"""The GPU path, checked on the CPU: uint8 batches transformed on the device equal the CPU transforms, device
augmentation is a crop/flip of the image, and --compile runs (or falls back to eager) with the same features."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

import deft_clean
from deft_clean import testing as toy
from deft_clean.detecting.passes import image_features
from deft_clean.inputs import device_transforms as accel
from deft_clean.inputs.device_transforms import DeviceTransform, uint8_transform
from deft_clean.inputs.listing import list_dataset
from deft_clean.inputs.transforms import eval_transform
from deft_clean.models.clip import CompiledOrEager, compile_module, load_clip
from deft_clean.run.options import PassOptions

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def images(n: int = 6):
    found, _ = toy.synthetic_images(n, 3, size=40, seed=4)
    return [im.convert("RGB") for im in found]


def test_device_normalisation_equals_the_cpu_transform():
    batch = torch.stack([uint8_transform(32)(im) for im in images()])  # [B, 3, 32, 32] uint8
    assert batch.dtype == torch.uint8
    on_device = DeviceTransform(MEAN, STD, train=False)(batch)
    on_cpu = torch.stack([eval_transform(32, MEAN, STD)(im) for im in images()])
    torch.testing.assert_close(on_device, on_cpu, atol=1e-6, rtol=1e-6)
    assert DeviceTransform(MEAN, STD, train=False)(on_cpu) is on_cpu  # a float batch passes unchanged


def test_device_augmentation_is_a_crop_and_flip(monkeypatch):
    batch = torch.stack([uint8_transform(32)(im) for im in images()])
    plain = DeviceTransform(MEAN, STD, train=False)(batch)
    monkeypatch.setattr(accel, "CROP_SCALE", (1.0, 1.0))
    monkeypatch.setattr(accel, "CROP_RATIO", (1.0, 1.0))
    whole = DeviceTransform(MEAN, STD, train=True, hflip=False)(batch)
    torch.testing.assert_close(whole, plain, atol=1e-4, rtol=1e-4)  # the whole image: the image itself
    flipped = DeviceTransform(MEAN, STD, train=True, hflip=True, generator=torch.Generator().manual_seed(0))(batch)
    same = [(flipped[i] - plain[i]).abs().max() < 1e-4 for i in range(len(batch))]
    mirrored = [(flipped[i] - plain[i].flip(2)).abs().max() < 1e-4 for i in range(len(batch))]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored)


def test_random_crops_vary_stay_in_range_and_follow_the_seed():
    batch = torch.stack([uint8_transform(32)(im) for im in images()])
    crop = lambda seed: DeviceTransform(MEAN, STD, train=True, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = crop(1)(batch), crop(1)(batch), crop(2)(batch)
    assert a.shape == (len(batch), 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    low = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (torch.ones(3) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (a >= low.view(1, 3, 1, 1) - 1e-5).all() and (a <= high.view(1, 3, 1, 1) + 1e-5).all()


def test_feature_pass_with_device_transforms_equals_the_cpu_path(tiny_clip, noisy_folder):
    loaded = load_clip(str(tiny_clip.config), str(tiny_clip.checkpoint), device=torch.device("cpu"), quiet=True)
    listing = list_dataset(noisy_folder.root)
    passes = PassOptions(32, loaded.image_size, loaded.mean, loaded.std, torch.device("cpu"))
    cpu, _ = image_features(loaded.model, listing, passes)
    device, _ = image_features(loaded.model, listing, dataclasses.replace(passes, device_transforms=True))
    np.testing.assert_allclose(device, cpu, atol=1e-5)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(function):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    double = CompiledOrEager(lambda x: 2 * x, "doubling")
    with caplog.at_level(logging.WARNING, logger="deft_clean"):
        assert double(torch.ones(2)).tolist() == [2.0, 2.0]
        assert double(torch.ones(1)).tolist() == [2.0]
    assert sum("torch.compile failed for doubling" in r.message for r in caplog.records) == 1


@pytest.mark.slow
def test_quick_detect_with_compile_and_device_transforms_matches_the_default(tiny_clip, noisy_folder):
    """CPU smoke test of --compile (inductor where a C++ compiler is found, else the eager fallback)."""
    plain = deft_clean.detect(noisy_folder.root, **tiny_clip.options(quick=True))
    fast = deft_clean.detect(noisy_folder.root, **tiny_clip.options(quick=True, compile=True, device_transforms=True))
    np.testing.assert_allclose(fast.frame["p_clean"], plain.frame["p_clean"], atol=1e-3)
    assert (fast.frame["is_clean"] == plain.frame["is_clean"]).mean() > 0.98
    torch._dynamo.reset()


def test_compile_module_keeps_the_state_dict():
    layer = torch.nn.Linear(3, 2)
    keys = list(layer.state_dict())
    compile_module(layer, "a layer")
    compile_module(layer, "a layer")  # twice is once
    assert list(layer.state_dict()) == keys and isinstance(layer.forward, CompiledOrEager)
    assert not isinstance(layer.forward.eager, CompiledOrEager)
