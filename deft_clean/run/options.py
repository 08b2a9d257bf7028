"""Options of each phase as frozen dataclasses. No torch import here: the CLI reads defaults cheaply."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

    from .checkpoints import StopOnSignal
    from .distributed import Dist

C = TypeVar("C")

CLEAN_RULES = ("threshold", "threshold+argmax")
SELECTIONS = ("fused", "deft")


@dataclass(frozen=True)
class DetectConfig:
    """Phase 1 (noisy-label detection). Defaults follow the DeFT paper unless noted."""

    model: str = "ViT-B-16"  # open_clip model name, or a path to an open_clip model-config JSON
    pretrained: str = "openai"  # open_clip pretrained tag, a local checkpoint file, or "none"
    n_ctx: int = 16  # learnable context tokens per prompt (ignored when ctx_init is given)
    ctx_init: str | None = None  # initialise contexts from these words, e.g. "a photo of a"
    class_specific: bool = False  # one context per class (CoOp's CSC) instead of one shared context
    vpt_tokens: int = 20  # visual prompt tokens per layer (0 disables VPT)
    vpt_depth: int | None = None  # number of leading vision layers that get prompts; None = all
    # image towers without tokens for VPT (ConvNeXt, FastViT, Swin, ResNets): "none" trains the text prompts only,
    # "norm-bias" also tunes the last stage's norm scales and biases (measured in benchmarks/results/families.md)
    image_adapter: str = "none"
    epochs: int = 10  # training epochs at most (the paper's 10; early_stop may end sooner)
    warmup_epochs: int = 1  # epochs on given labels before clean/noisy selection starts
    # Images one epoch trains on: "auto" = a stratified sample of min(N, max(IMAGES_PER_CLASS x K,
    # MIN_EPOCH_IMAGES)) rows, redrawn each epoch (cost stops growing with N); "all" = every row (the paper);
    # or a number of rows.
    images_per_epoch: int | str = "auto"
    # stop training when the learned prompts' clean set stops moving (see detecting.early_stop); a collapse
    # (learned prompts leave the labels zero-shot confirms) always stops at once
    early_stop: bool = True
    batch_size: int = 64  # training batch size
    lr: float = 0.03  # SGD learning rate (cosine schedule per step)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    grad_clip: float | None = 1.0  # clip the prompts' gradient norm (noisy labels give spikes); None = off
    # "threshold": p_clean > 0.5 (the paper's synthetic-noise rule); "threshold+argmax": also the
    # positive-prompt top-1 must equal the given label (the reference's real-noise rule; more precise).
    clean_rule: str = "threshold+argmax"
    # "fused": text evidence (learned prompts + zero-shot) seeds a clean set that cross-fitted visual
    # evidence grows; flags from per-class thresholds. "deft": the paper's dual-prompt rule (clean_rule).
    selection: str = "fused"
    quick: bool = False  # skip prompt training: zero-shot prompts + visual evidence, one pass over the images
    health: bool = True  # duplicate / outlier columns: hashes every file, nearest-neighbour search (faiss)
    # pixel similarity (thumbnail correlation, 1.0 = the same picture) at which feature-search candidates are
    # near-duplicates (deft_clean.detecting.near_duplicates; measured in benchmarks/results/duplicates.md)
    duplicate_threshold: float = 0.988
    hflip: bool = True  # random horizontal flips in training (turn off for digits, text, ...)
    seed: int = 0  # seeds prompt init, shuffling, augmentation and complementary labels
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    num_workers: int | None = None  # DataLoader workers; None = fits the usable cores (run.cores), 0 = main process
    threads: int | None = None  # torch intra-op threads; None = the usable cores minus the workers
    cache: str | None = None  # decoded-image cache folder (inputs.image_cache); None = decode every epoch
    # uint8 batches cropped, flipped and normalised on the device (inputs.device_transforms); None = on for CUDA
    device_transforms: bool | None = None
    compile: bool = False  # torch.compile the image tower (eager again, with a warning, if compiling fails)

    def __post_init__(self) -> None:
        from .errors import UsageError, option

        check_numbers(lr=(self.lr, 10.0), momentum=(self.momentum, 1.0), weight_decay=(self.weight_decay, 1.0))
        check_numbers(grad_clip=(self.grad_clip, 1e6))
        check_counts(epochs=(self.epochs, MAX_EPOCHS))
        check_seed(self.seed)
        if not 0.0 < self.duplicate_threshold <= 1.0:  # also refuses NaN
            raise UsageError(
                f"{option('duplicate_threshold')} must be a pixel similarity in (0, 1], got {self.duplicate_threshold}"
            )
        positive = {"n_ctx": self.n_ctx, "epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"{option(name)} must be at least 1, got {value}")
        check_counts(n_ctx=(self.n_ctx, MAX_N_CTX), batch_size=(self.batch_size, MAX_BATCH))
        check_workers(self.num_workers)
        if not 0 <= self.vpt_tokens <= MAX_VPT_TOKENS:
            raise UsageError(f"{option('vpt_tokens')} must be from 0 to {MAX_VPT_TOKENS}, got {self.vpt_tokens}")
        if self.vpt_depth is not None and not 0 <= self.vpt_depth <= MAX_VPT_DEPTH:
            raise UsageError(
                f"{option('vpt_depth')} must be from 0 to the model's vision layers (at most {MAX_VPT_DEPTH}), "
                f"got {self.vpt_depth}"
            )
        if self.image_adapter not in ("none", "norm-bias"):
            raise UsageError(f"{option('image_adapter')} must be none or norm-bias, got {self.image_adapter!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UsageError(
                f"{option('warmup_epochs')} must be between 0 and {option('epochs')} ({self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UsageError(f"{option('grad_clip')} must be positive, got {self.grad_clip}")
        if self.lr <= 0:
            raise UsageError(f"{option('lr')} must be positive, got {self.lr}")
        if self.selection not in SELECTIONS:
            raise UsageError(f"{option('selection')} must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.quick and self.selection == "deft":
            raise UsageError(f"{option('selection', 'deft')} needs trained prompts; drop {option('quick', True)}")
        if self.clean_rule not in CLEAN_RULES:
            raise UsageError(f"{option('clean_rule')} must be one of {', '.join(CLEAN_RULES)}, got {self.clean_rule!r}")
        check_images_per_epoch(self.images_per_epoch)
        if isinstance(self.images_per_epoch, str) and self.images_per_epoch.isdigit():
            object.__setattr__(self, "images_per_epoch", int(self.images_per_epoch))  # "5000" from the CLI
        if self.threads is not None:
            check_counts(threads=(self.threads, 4096))


def check_images_per_epoch(value: int | str) -> None:
    """``images_per_epoch`` is "auto", "all" or a whole number of at least 1 (a numeric string too)."""
    from .errors import UsageError, option

    if isinstance(value, str) and (value in ("auto", "all") or value.isdigit() and int(value) >= 1):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    raise UsageError(f"{option('images_per_epoch')} must be auto, all or a number of images (>= 1), got {value!r}")


def check_numbers(**values: tuple[float | None, float]) -> None:
    """Refuse NaN, infinities, negatives and values above a sane maximum: ``name=(value, maximum)``.

    NaN passes every ``<`` comparison, so an explicit check is the only way to stop ``--lr nan``.
    """
    import math

    from .errors import UsageError, option

    for name, (value, maximum) in values.items():
        if value is None:
            continue
        if not math.isfinite(value) or not 0 <= value <= maximum:
            raise UsageError(f"{option(name)} must be a number between 0 and {maximum:g}, got {value}")


MAX_EPOCHS = 10_000  # more is a typo (1e12 epochs would run forever and overflow the schedule)
# CLIP's text tower holds 77 tokens: start, the contexts, the class name, "." and end must all fit
MAX_N_CTX = 64
# visual prompt tokens per layer: VPT uses 1-200; each adds to every layer's attention (quadratic in tokens)
MAX_VPT_TOKENS = 256
MAX_VPT_DEPTH = 1000  # checked against the model's own vision layers when the prompts are installed
MAX_BATCH = 1 << 16  # a bigger batch does not fit any accelerator's memory at 224 px
MAX_WORKERS = 256  # DataLoader worker processes; more is a typo (each is a process with its own memory)
# Phase 2's input size: at most 4x the backbone's own (a ViT's position embedding is interpolated to it, a
# 4096 px input for a 32 px model is 16,384x the activations) and a fixed cap whatever the backbone says.
MAX_IMAGE_SIZE = 2048
IMAGE_SIZE_FACTOR = 4


MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1, numpy no negative seed: room for seed + offsets


def check_seed(value: int) -> None:
    """Refuse a seed torch or numpy cannot take, before anything loads (it would fail after the model loaded)."""
    from .errors import UsageError, option

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{option('seed')} must be a whole number from 0 to {MAX_SEED}, got {str(value)[:40]}")


def check_workers(value: int | None) -> None:
    """Refuse a negative or absurd ``--num-workers`` (None: the default)."""
    from .errors import UsageError, option

    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS):
        raise UsageError(f"{option('num_workers')} must be a whole number from 0 to {MAX_WORKERS}, got {value}")


def check_image_size(size: int, native: int | None) -> None:
    """Refuse a phase-2 input size below 16 px or above ``IMAGE_SIZE_FACTOR`` x the backbone's ``native`` size
    (and ``MAX_IMAGE_SIZE``; ``native`` None: that cap only), before any image or activation is allocated."""
    from .errors import UsageError, option

    limit = MAX_IMAGE_SIZE if native is None else min(MAX_IMAGE_SIZE, IMAGE_SIZE_FACTOR * max(int(native), 16))
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= limit:
        why = f"at most {MAX_IMAGE_SIZE}"
        if native is not None:
            why = f"{IMAGE_SIZE_FACTOR}x this backbone's own {native} px, {why}"
        raise UsageError(f"{option('image_size')} must be from 16 to {limit} px ({why}), got {size}")


def check_counts(**values: tuple[Any, int]) -> None:
    """Refuse a count that is not a whole number from 1 to its maximum: ``name=(value, maximum)``."""
    from .errors import UsageError, option

    for name, (value, maximum) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise UsageError(f"{option(name)} must be a whole number from 1 to {maximum}, got {value}")


def field_names(cls: type) -> set[str]:
    """Names of a config dataclass's fields (used to validate keyword options)."""
    return {f.name for f in fields(cls)}


def merge_options(cls: type[C], config: C | None, options: dict[str, Any]) -> C:
    """Merge keyword options into a config dataclass, naming any unknown option."""
    unknown = set(options) - field_names(cls)
    if unknown:
        from .errors import UsageError

        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config or cls(), **options)


OPTIMIZERS = ("sgd", "adamw")
HEAD_INITS = ("probe", "random")


@dataclass(frozen=True)
class TrainConfig:
    """Phase 2 (fine-tuning on the kept rows). Defaults follow DeFT's phase 2."""

    clean_only: bool = False  # train on is_clean rows only (else on every usable row: the noisy baseline)
    threshold: float | None = None  # with clean_only: keep p_clean > threshold instead of is_clean
    relabel: float | None = None  # with clean_only: keep flagged rows with p_predicted >= this, relabelled
    backbone: str = "clip"  # "clip" (the detect run's CLIP image tower) or "timm:NAME"
    backbone_weights: str | None = None  # timm: local weights file, or "none" for random init
    image_size: int | None = None  # input size; None = the backbone's own
    epochs: int = 10  # training epochs
    warmup_epochs: int = 1  # linear learning-rate warm-up before the cosine decay
    # Peak learning rate of the backbone. DeFT's phase 2 uses 5e-4 for 10 epochs of 50k+ images (thousands of
    # steps); on datasets of a few thousand rows that leaves the tower where the probe left it (benchmarks/
    # phase2.py). 5e-3 is in the range of ViT fine-tuning recipes (SGD, momentum 0.9), and the probe-initialised
    # model competes on validation, so a rate too large for a model falls back to the probe, with a warning.
    lr: float = 5e-3
    # The head's peak learning rate is lr x this: the pretrained tower should move gently (a large lr
    # destroys its features), the head must keep up with the features it reads as they change.
    head_lr_scale: float = 10.0
    # "probe": fit the head as a logistic regression on frozen features before fine-tuning (LP-FT), so
    # fine-tuning starts where a linear probe ends; "random": a freshly initialised head.
    head_init: str = "probe"
    # Without --val: this stratified fraction of the kept rows (seeded, at least one per class, at most
    # 2,000 rows) is held out to choose the best epoch (the probe included) and estimate accuracy; 0 = none.
    holdout: float = 0.1
    weight_decay: float = 5e-4  # weight decay
    batch_size: int = 64  # batch size
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    balanced: bool = False  # class-balanced sampling (with replacement)
    # Random horizontal flips; None = decided by the linear probe: on unless mirroring the training images
    # costs the probe MIRROR_DROP of its accuracy (digits, text: a mirror changes the class).
    hflip: bool | None = None
    seed: int = 0  # seeds init of the head, order, augmentation
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    num_workers: int | None = None  # DataLoader workers; None = min(8, CPU count)
    cache: str | None = None  # decoded-image cache folder, shared with detect; None = decode every epoch
    resume: bool = False  # continue from checkpoint.pt in the output folder
    checkpoint_every: int = 0  # also checkpoint every this many steps inside an epoch; 0 = at epoch ends only
    overwrite: bool = False  # allow writing into a non-empty output folder

    def __post_init__(self) -> None:
        from .errors import UsageError, option

        check_numbers(lr=(self.lr, 10.0), weight_decay=(self.weight_decay, 1.0))
        check_numbers(label_smoothing=(self.label_smoothing, 1.0), threshold=(self.threshold, 1.0))
        check_numbers(relabel=(self.relabel, 1.0))
        check_counts(epochs=(self.epochs, MAX_EPOCHS))
        check_seed(self.seed)
        check_workers(self.num_workers)
        if self.image_size is not None:
            check_image_size(self.image_size, None)  # the backbone's own bound is checked once it is known
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError(
                f"{option('epochs')} and {option('batch_size')} must be at least 1, "
                f"got {self.epochs}, {self.batch_size}"
            )
        if self.checkpoint_every < 0:
            raise UsageError(f"{option('checkpoint_every')} must be 0 or more, got {self.checkpoint_every}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UsageError(
                f"{option('warmup_epochs')} must be between 0 and {option('epochs')}, got {self.warmup_epochs}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"{option('optimizer')} must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr <= 0:
            raise UsageError(f"{option('lr')} must be positive, got {self.lr}")
        if self.head_lr_scale <= 0:
            raise UsageError(f"{option('head_lr_scale')} must be positive, got {self.head_lr_scale}")
        if self.head_init not in HEAD_INITS:
            raise UsageError(f"{option('head_init')} must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise UsageError(f"{option('holdout')} must be in [0, 1), got {self.holdout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"{option('label_smoothing')} must be in [0, 1), got {self.label_smoothing}")
        for name in ("threshold", "relabel"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"{option(name)} must be between 0 and 1, got {value}")
        if (self.threshold is not None or self.relabel is not None) and not self.clean_only:
            raise UsageError(
                f"{option('threshold')} and {option('relabel')} only apply with {option('clean_only', True)}"
            )


@dataclass(frozen=True)
class PassOptions:
    """How a pass over a listing's images runs (the feature pass, prompt training, scoring): built once by
    ``detect`` from its config and the loaded model, and handed whole to every pass."""

    batch_size: int  # images per batch of an eval-mode pass (prompt training uses DetectConfig.batch_size)
    image_size: int  # the model's input size
    mean: tuple[float, float, float]  # the model's normalisation
    std: tuple[float, float, float]
    device: torch.device
    num_workers: int = 0  # DataLoader worker processes
    progress: Any = None  # where passes show their bars (a run.engine.Progressish; engine imports this module)
    stop: StopOnSignal | None = None  # checked after each batch
    ranks: Dist | None = None  # torchrun processes (None: one process)
    cache: Any = None  # the decoded-image cache (an inputs.image_cache.CachedImages; run sits below inputs)
    device_transforms: bool = False  # uint8 batches normalised (and augmented) on the device


@dataclass(frozen=True)
class ReadOptions:
    """How to read a dataset, whatever its kind: built once by the CLI or the API (:meth:`of`) and passed whole
    to the listing and its readers. Each reader uses the fields of its kind and ignores the rest."""

    path_col: str = "path"  # table/DataFrame path column; Hugging Face image column
    label_col: str = "label"  # table/DataFrame/Hugging Face label column
    root: str | os.PathLike[str] | None = None  # DataFrame: where relative paths start; HF object: files root
    class_names: str | os.PathLike[str] | dict[str, str] | None = None  # raw label -> prompt text (or a file)
    split: str | None = None  # Hugging Face DatasetDict split (default train)
    label_key: str = "cls"  # WebDataset: the label member, or json:FIELD
    id_col: str | None = None  # Hugging Face: a column shown in each row's path

    @classmethod
    def of(cls, *, image_col: str | None = None, **fields: Any) -> ReadOptions:
        """Reading options from keywords; ``image_col`` is another name for ``path_col``."""
        path_col = fields.get("path_col", "path")
        if image_col is not None and path_col not in ("path", image_col):
            from .errors import UsageError

            raise UsageError(f"image_col={image_col!r} and path_col={path_col!r} name the same column; pass one")
        return cls(**{**fields, "path_col": image_col or path_col})


@dataclass(frozen=True)
class RunOptions:
    """Where a detect run writes and how it resumes: built once by the CLI or the API and passed whole.

    (``train`` keeps ``resume``, ``checkpoint_every`` and ``overwrite`` in :class:`TrainConfig`, and writes its
    checkpoint into its output folder.)
    """

    out: str | os.PathLike[str] | None = None  # the results Parquet; None: nothing written
    run_dir: str | os.PathLike[str] | None = None  # the checkpoint's folder; None: <out>.run (with out)
    resume: bool = False  # continue from the checkpoint in the run folder
    checkpoint_every: int = 0  # also checkpoint every this many steps inside an epoch; 0: at epoch ends
    overwrite: bool = False  # replace an existing out (never an input)

    @property
    def checkpoint_dir(self) -> str | os.PathLike[str] | None:
        """The run folder: ``run_dir``, else ``<out>.run`` when there is an ``out``, else None (not resumable)."""
        if self.run_dir is None and self.out is not None:
            return Path(self.out).with_name(Path(self.out).name + ".run")
        return self.run_dir
