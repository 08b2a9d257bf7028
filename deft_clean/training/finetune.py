"""Phase 2: fully fine-tune a backbone + linear head on the rows that detect kept, and export it.

The output folder is the contract with ``predict``/``load_model``:
``model.safetensors`` (weights of the best epoch on validation, else of the last), ``config.json``
(backbone, classes, input size, mean, std and what is needed to rebuild the network offline),
``metrics.json`` (per-epoch loss, validation accuracy, the linear probe's accuracy, the rows trained on and
held out) and ``checkpoint.pt`` (the last epoch's full training state, for ``--resume``).

Training starts from a linear probe (see :mod:`deft_clean.training.linear_probe`): the head is fitted on frozen
features, then the whole tower is fine-tuned, the head with a larger learning rate than the backbone. Without
``--val`` a stratified part of the kept rows is held out; the exported epoch is the best one there, the
probe-initialised model (epoch 0) included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler, WeightedRandomSampler

from ..inputs.dataset import ImageDataset
from ..inputs.transforms import eval_transform, train_transform
from ..models.classifier import build_classifier, data_config, model_spec
from ..run._version import __version__
from ..run.checkpoints import StopOnSignal, load_checkpoint, save_checkpoint
from ..run.distributed import Dist
from ..run.engine import (
    EpochTotals,
    Phase,
    Run,
    amp_for,
    fit,
    make_loader,
    resolve_workers,
    seed_everything,
    steps_per_epoch,
    usable_mask,
    usable_on_device,
)
from ..run.errors import UsageError, option, warn_result
from ..run.files import run_lock, write_atomic
from ..run.options import TrainConfig, merge_options
from ..run.ownership import check_folder_owned, remove_listed, write_manifest
from ..run.safety import Output, check_outputs
from .linear_probe import (
    HeadParts,
    choose_hflip,
    fit_probe_head,
    head_parts,
    probe_clearly_better,
    run_warnings,
)
from .train_rows import RowPlan, labels_for, plan_rows

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
# every file train writes in its folder: its manifest lists them, --overwrite removes only them
MODEL_FOLDER_FILES = ("config.json", "metrics.json", WEIGHTS, BEST_WEIGHTS, CHECKPOINT)


@dataclass
class TrainResult:
    out: Path  # the exported model folder
    history: list[dict[str, Any]]  # per epoch: epoch, loss, lr, head_lr, val_accuracy (None without validation)
    n_train: int  # rows trained on (the held-out rows excluded)
    n_relabelled: int  # flagged rows kept under their suggested label
    best_val_accuracy: float | None  # validation accuracy of the exported model; None without validation
    val_source: str | None = None  # "--val", "held-out" (kept rows held out) or None (no validation)
    probe_val_accuracy: float | None = None  # the probe-initialised model's validation accuracy (epoch 0)
    best_epoch: int | None = None  # the exported epoch, 0 = the probe-initialised model; None = the last
    n_held_out: int = 0  # kept rows held out for validation (not trained on)
    warnings: list[str] = field(default_factory=list)  # what the user should know about this run


def _lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero (per step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _signature(cfg: TrainConfig, rows: np.ndarray, labels: np.ndarray, spec: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    options = dataclasses.asdict(cfg)
    # --overwrite only says what to do with an earlier folder: a run started with it resumes without it
    for volatile in ("resume", "overwrite", "device", "num_workers", "quiet", "cache", "checkpoint_every"):
        options.pop(volatile, None)
    digest = int(np.bitwise_xor.reduce(rows * 1_000_003 + labels)) if len(rows) else 0
    return {"options": options, "n_rows": int(len(rows)), "rows_digest": digest, "backbone": spec["backbone"]}


def train(
    dataset: Any,
    *,
    results: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    val: str | os.PathLike[str] | None = None,
    decisions: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    **options: Any,
) -> TrainResult:
    """Fine-tune a classifier on the rows of ``dataset`` that the detect ``results`` keep (phase 2).

    Args:
        dataset: what detect ran on: image folder, table, DataFrame (its relative paths start at the
            folder detect recorded), Hugging Face dataset or WebDataset shards; it is listed again with
            the options detect recorded (split, columns, label key).
        results: the detect Parquet; it must list exactly this dataset's samples and classes.
        out: output folder (model.safetensors, config.json, metrics.json, checkpoint.pt).
        config / options: a :class:`TrainConfig` and keyword overrides of its fields.
        val: optional held-out folder or table with the same classes: accuracy every epoch, best kept.
        decisions: a review CSV (``path,decision,label``): human keep/drop/relabel decisions replace
            the automatic verdict of their rows (see :mod:`deft_clean.outputs.review_decisions`).

    Raises:
        Interrupted: SIGINT/SIGTERM arrived; ``checkpoint.pt`` holds the state after the last finished
            step (``resume=True`` continues it exactly, on CPU); no model file is written.

    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, each epoch's
    order is sharded by rank, and only rank 0 shows progress and writes files.
    """
    from ..run.distributed import process_group

    cfg = merge_options(TrainConfig, config, options)
    with process_group(cfg.device) as ranks, contextlib.ExitStack() as held:
        return _train(
            dataset,
            results=Path(results),
            out=out,
            cfg=cfg,
            val=val,
            decisions=decisions,
            quiet=quiet,
            ranks=ranks,
            held=held,
        )


def _check_out(out_dir: Path, plan: RowPlan, cfg: TrainConfig, inputs: list[Any]) -> list[str] | None:
    """Refuse an output folder that holds something else, or that is (or lies inside) an input; returns the
    manifest entries of an earlier run's folder (None: a new or empty folder)."""
    listing, val_listing = plan.listing, plan.val_listing
    if listing.spec.listed_files:
        inputs.extend(listing.root / p for p in listing.paths)
    datasets = [listing.root] if listing.spec.dataset_folder else []
    if val_listing is not None and val_listing.spec.folder:
        datasets.append(val_listing.root)
    outputs = [Output(out_dir, folder=True, overwrite=True)]
    if cfg.cache is not None:  # the cache is written too: never inside the dataset, never inside the model folder
        outputs.append(Output(cfg.cache, "cache", folder=True, overwrite=True))
    check_outputs(outputs, inputs=inputs, datasets=datasets)
    # a folder deft-clean did not write is refused, --overwrite or not; one it wrote needs --resume or --overwrite
    earlier = check_folder_owned(out_dir, overwrite=True, names=MODEL_FOLDER_FILES)
    if earlier is not None and not cfg.resume and not cfg.overwrite:
        raise UsageError(
            f"{option('out')} {out_dir} is not empty; pass {option('resume', True)} to continue or "
            f"{option('overwrite', True)} to replace it"
        )
    return earlier


def _named_inputs(dataset: Any, results: Path, val: Any, decisions: Any, cfg: TrainConfig, plan: RowPlan) -> list[Any]:
    """The existing files and folders train reads: the dataset, results, --val, --decisions, the weights."""
    named = [dataset] if isinstance(dataset, (str, os.PathLike)) else []  # not a DataFrame or HF object
    named += [p for p in (val, decisions, cfg.backbone_weights) if isinstance(p, (str, os.PathLike)) and p]
    if cfg.backbone == "clip":  # the CLIP config and checkpoint it loads: never replaced by config.json, checkpoint.pt
        named += [plan.metadata.get(k) for k in ("model", "pretrained") if isinstance(plan.metadata.get(k), str)]
    return [p for p in (results, *named) if p and os.path.exists(p)]


def _prepare_out(out_dir: Path, earlier: list[str] | None, cfg: TrainConfig) -> None:
    """Create the model folder and its manifest before any file is written (so an interrupted run's
    checkpoint is deft-clean's own); ``--overwrite`` first removes what the earlier run listed."""
    if earlier is not None and cfg.overwrite and not cfg.resume:
        remove_listed(out_dir, earlier)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir, MODEL_FOLDER_FILES)


@dataclass
class Sets:
    """Phase 2's datasets and what builds more of them."""

    train: ImageDataset  # the training rows, with the training transform
    val: ImageDataset | None  # --val, or the held-out rows, with the eval transform
    unaugmented: Any  # positions -> ImageDataset of those rows with the eval transform (for the probe)
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _datasets(plan: RowPlan, cfg: TrainConfig, size: int, mean: Any, std: Any, caches: tuple[Any, Any]) -> Sets:
    """The training set (flips final once the probe has decided), the validation set, and a maker of more."""
    listing, val_listing = plan.listing, plan.val_listing
    cache, val_cache = caches
    full_labels = labels_for(
        listing, np.concatenate([plan.rows, plan.held_rows]), np.concatenate([plan.labels, plan.held_labels])
    )
    train_set = ImageDataset(
        listing.root,
        listing.paths,
        full_labels,
        train_transform(size, mean, std, hflip=cfg.hflip is not False),
        image_size=size,
        indices=plan.rows.tolist(),
        cache=cache,
        images=listing.images,
    )
    evaluation = eval_transform(size, mean, std)

    def unaugmented(indices: np.ndarray) -> ImageDataset:
        return ImageDataset(
            listing.root,
            listing.paths,
            full_labels,
            evaluation,
            image_size=size,
            indices=indices.tolist(),
            cache=cache,
            images=listing.images,
        )

    val_set = None
    if val_listing is not None:
        val_set = ImageDataset(
            val_listing.root,
            val_listing.paths,
            val_listing.label_indices,
            evaluation,
            image_size=size,
            cache=val_cache,
            images=val_listing.images,
        )
    elif len(plan.held_rows):
        val_set = unaugmented(plan.held_rows)
    return Sets(train_set, val_set, unaugmented, size, mean, std)


def _stop_hint(checkpoint: Path, ranks: Dist) -> Callable[[], str]:
    """What the line of a stopped train says about going on, asked when it stops (rank 0's line only: another
    rank may look before rank 0's last save is there)."""

    def hint() -> str:
        if not ranks.is_main:
            return "rank 0's line says how to go on"
        if checkpoint.exists():
            return f"checkpoint saved in {checkpoint}; rerun the same command with --resume to continue"
        return "nothing to resume; rerun the same command with --overwrite (not --resume) to start again"

    return hint


def _caches(
    cfg: TrainConfig, plan: RowPlan, size: int, workers: int, quiet: bool, ranks: Dist, stop: StopOnSignal
) -> tuple[Any, Any]:
    """The decoded-image caches of the training and validation sets (None, None without ``cfg.cache``)."""
    if cfg.cache is None:
        return None, None
    from ..inputs.image_cache import prepare_cache
    from ..run.progress import RichProgress

    cache = val_cache = None
    with RichProgress(quiet=quiet) as progress, stop.prefixed("the images cached so far are kept"):
        fill = {"size": size, "num_workers": workers, "progress": progress, "stop": stop, "ranks": ranks}
        cache = prepare_cache(cfg.cache, plan.listing, **fill)
        if plan.val_listing is not None:
            val_cache = prepare_cache(cfg.cache, plan.val_listing, **fill)
    return cache, val_cache


@dataclass
class Outcome:
    """What fine-tuning leaves for the export: history, the best epoch and the probe."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None  # best validation accuracy so far
    best_epoch: int | None = None  # its epoch, 0 = the probe-initialised model
    probe: dict[str, Any] = field(default_factory=dict)  # the linear probe's record (empty without one)
    probe_right: list[bool] | None = None  # per validation row, whether the probe-initialised model is right
    hflip: bool = True  # the flips trained with

    def take(self, epoch: int, right: np.ndarray) -> bool:
        """Whether fine-tuned ``epoch``, right on the validation rows ``right`` [V] bool, is the best so far.

        The most accurate fine-tuned epoch wins (ties go to the later one: it trained longer at a lower rate),
        unless the probe-initialised model beats it beyond chance (:func:`probe_clearly_better`): held-out
        kept rows are the easy ones, so a row or two between the two is noise.
        """
        if self.probe_right is not None and probe_clearly_better(np.array(self.probe_right), right):
            return False
        accuracy = float(right.mean()) if len(right) else 0.0
        if self.best_epoch in (None, 0) or self.best is None or accuracy >= self.best:
            self.best, self.best_epoch = accuracy, epoch
            return True
        return False


def _train(
    dataset: Any,
    *,
    results: Path,
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    val: str | os.PathLike[str] | None,
    decisions: str | os.PathLike[str] | None,
    quiet: bool,
    ranks: Dist,
    held: contextlib.ExitStack,
) -> TrainResult:
    from ..models.clip import resolve_device
    from ..run.distributed import device_for

    plan = plan_rows(dataset, results, cfg, val, decisions)
    out_dir = Path(out)
    earlier = _check_out(out_dir, plan, cfg, _named_inputs(dataset, results, val, decisions, cfg, plan))
    held.enter_context(run_lock(out_dir if ranks.is_main else None))  # after the check: its file sits beside out
    ranks.barrier()  # every rank has checked the folder before rank 0 writes its manifest there
    if ranks.is_main:
        _prepare_out(out_dir, earlier, cfg)
    # SIGINT/SIGTERM from here until the model is exported: one line saying how to go on, exit 130/143
    stop = held.enter_context(StopOnSignal(_stop_hint(out_dir / CHECKPOINT, ranks)))
    device = device_for(ranks, resolve_device(cfg.device))
    quiet = quiet or not ranks.is_main
    generator = seed_everything(cfg.seed)
    spec = model_spec(cfg.backbone, metadata=plan.metadata, backbone_weights=cfg.backbone_weights)
    n_classes = len(plan.listing.classes)
    model = build_classifier(spec, n_classes=n_classes, device=device, load_pretrained=True, quiet=quiet)
    stop.check_ranks(ranks, device)  # a large backbone loads for a while
    size, mean, std = data_config(spec, model, image_size=cfg.image_size)
    spec.update({"image_size": size, "mean": list(mean), "std": list(std)})
    workers = resolve_workers(cfg.num_workers)
    sets = _datasets(plan, cfg, size, mean, std, _caches(cfg, plan, size, workers, quiet, ranks, stop))
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warn_result(message)  # even when quiet: it says what the exported model is

    parts = head_parts(model)
    outcome = Outcome()
    if cfg.head_init == "probe" and not cfg.resume:
        if parts is None:
            note(f"{cfg.backbone}: its head is not one linear layer, so it starts from random weights (no probe)")
        else:
            rows = sets.unaugmented(plan.rows)
            outcome.probe = _probe(
                model, parts, rows, n_classes, device, workers, quiet, cfg.hflip is None, stop, ranks
            )
    outcome.hflip = choose_hflip(cfg.hflip, outcome.probe, note)
    _fine_tune(
        model,
        parts,
        plan,
        sets,
        cfg,
        outcome,
        out_dir=out_dir,
        device=device,
        generator=generator,
        workers=workers,
        quiet=quiet,
        ranks=ranks,
        spec=spec,
        stop=stop,
    )
    stop.check_ranks(ranks, device)  # a signal after the last epoch: no model files, the checkpoint kept
    for message in run_warnings(outcome.history, outcome.probe, outcome.best_epoch):
        note(message)
    result = _result(out_dir, plan, outcome, notes)
    if not ranks.is_main:
        ranks.barrier()  # wait until rank 0 has written the model folder
        return result
    refit = _export_weights(  # under torchrun the other ranks wait at the barrier below: no stop in the refit
        model,
        parts,
        plan,
        sets,
        outcome,
        out_dir,
        device=device,
        workers=workers,
        quiet=quiet,
        stop=None if ranks.active else stop,
    )
    _write_model_files(out_dir, spec, plan, results, _metrics(plan, cfg, outcome, refit, notes))
    ranks.barrier()
    return result


def _result(out_dir: Path, plan: RowPlan, outcome: Outcome, notes: list[str]) -> TrainResult:
    """What :func:`train` returns: the model folder, the history and the rows trained on and held out."""
    return TrainResult(
        out_dir,
        outcome.history,
        int(len(plan.rows)),
        plan.n_relabelled,
        outcome.best,
        val_source=plan.val_source,
        probe_val_accuracy=outcome.probe.get("val_accuracy"),
        best_epoch=outcome.best_epoch,
        n_held_out=int(len(plan.held_rows)),
        warnings=notes,
    )


def _write_model_files(
    out_dir: Path, spec: dict[str, Any], plan: RowPlan, results: Path, metrics: dict[str, Any]
) -> None:
    """The exported model's ``config.json`` (what ``load_model`` reads) and ``metrics.json``, atomically."""
    export_config = {
        "format": "deft-clean-model",
        "deft_clean_version": __version__,
        **spec,
        "classes": plan.listing.classes,
        "trained_from": str(results.resolve()),
    }
    write_atomic(out_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(export_config, indent=2)))
    write_atomic(out_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics)))


def _probe(
    model: nn.Module,
    parts: HeadParts,
    rows: ImageDataset,
    n_classes: int,
    device: torch.device,
    workers: int,
    quiet: bool,
    mirrored: bool,
    stop: StopOnSignal,
    ranks: Dist,
) -> dict[str, Any]:
    """Fit the head as a linear probe on the frozen features of ``rows``; its record for metrics.json. ``stop`` is
    checked every batch in one process, once after the probe under torchrun (every rank at the same point)."""
    from ..run.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        record = fit_probe_head(
            model,
            parts,
            rows,
            n_classes=n_classes,
            device=device,
            workers=workers,
            autocast=amp_for(device).autocast,
            progress=progress,
            mirrored=mirrored,
            stop=None if ranks.active else stop,
        )
    stop.check_ranks(ranks, device)
    return record


def _optimizer(model: nn.Module, parts: HeadParts | None, cfg: TrainConfig, steps: int) -> tuple[Any, Any]:
    """The recipe's optimiser (backbone at ``lr``, head at ``lr * head_lr_scale``) and per-step schedule."""
    groups = parameter_groups(model, parts, lr=cfg.lr, head_lr=cfg.lr * cfg.head_lr_scale)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps
    warmup_steps = min(cfg.warmup_epochs * steps, max(total_steps - 1, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps)
    )
    return optimizer, scheduler


def _epoch_sampler(
    train_set: ImageDataset, labels: np.ndarray, cfg: TrainConfig, n_classes: int, generator: Any
) -> Any:
    """Draws each epoch's order from ``generator`` (uniform, or class-balanced with replacement)."""
    if cfg.balanced:
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        weights = 1.0 / counts[labels]
        return WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True, generator=generator)
    return RandomSampler(train_set, generator=generator)


def _resume(model: nn.Module, outcome: Outcome, path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (it must match ``signature``) into ``model`` and ``outcome``."""
    resume = load_checkpoint(path, signature)
    model.load_state_dict(resume["model"])
    outcome.history = json.loads(resume["history"])
    outcome.best = resume["best"].item() if resume["best"].numel() else None
    saved = json.loads(resume["run"])
    outcome.probe, outcome.best_epoch, outcome.hflip = saved["probe"], saved["best_epoch"], saved["hflip"]
    outcome.probe_right = saved.get("probe_right")
    return resume


def _fit(
    phase: Phase,
    cfg: TrainConfig,
    checkpoint_path: Path,
    resume: dict[str, Any] | None,
    *,
    device: torch.device,
    generator: torch.Generator,
    workers: int,
    ranks: Dist,
    quiet: bool,
    stop: StopOnSignal,
) -> None:
    """Run fine-tuning on the engine with checkpoints in ``checkpoint_path``, stopping cleanly on ``stop``."""
    from ..run.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        run = Run(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            device=device,
            generator=generator,
            num_workers=workers,
            ranks=ranks,
            progress=progress,
            stop=stop,
            save=lambda s: _save_checkpoint(checkpoint_path, s),
            every_steps=cfg.checkpoint_every,
            resume=resume,
        )
        fit(phase, run)


def _fine_tune(
    model: nn.Module,
    parts: HeadParts | None,
    plan: RowPlan,
    sets: Sets,
    cfg: TrainConfig,
    outcome: Outcome,
    *,
    out_dir: Path,
    device: torch.device,
    generator: torch.Generator,
    workers: int,
    quiet: bool,
    ranks: Dist,
    spec: dict[str, Any],
    stop: StopOnSignal,
) -> None:
    """Fine-tune the whole model on :mod:`deft_clean.run.engine`, validating every epoch; fills ``outcome``."""

    # The epoch's order is drawn explicitly from `generator` so that a resume can redraw it and skip
    # the batches already done (see the engine).
    sampler = _epoch_sampler(sets.train, plan.labels, cfg, len(plan.listing.classes), generator)
    optimizer, scheduler = _optimizer(model, parts, cfg, steps_per_epoch(len(plan.rows), cfg.batch_size, ranks))
    signature = _signature(cfg, plan.rows, plan.labels, spec)
    checkpoint_path = out_dir / CHECKPOINT
    resume = _resume(model, outcome, checkpoint_path, signature) if cfg.resume else None
    sets.train.transform = train_transform(sets.size, sets.mean, sets.std, hflip=outcome.hflip)
    if outcome.probe and sets.val is not None and not cfg.resume:
        # Epoch 0, the probe-initialised model, competes with the fine-tuned epochs.
        right = evaluate_rows(model, sets.val, device=device, workers=workers)
        outcome.best = outcome.probe["val_accuracy"] = float(right.mean()) if len(right) else 0.0
        outcome.best_epoch, outcome.probe_right = 0, right.tolist()
        if ranks.is_main:
            save_weights(model, out_dir / BEST_WEIGHTS)

    def loss_step(forward: nn.Module, images: torch.Tensor, targets: torch.Tensor, epoch: int) -> Any:
        return F.cross_entropy(forward(images).float(), targets, label_smoothing=cfg.label_smoothing), None

    def end_epoch(totals: EpochTotals) -> None:
        record: dict[str, Any] = {
            "epoch": totals.epoch,
            "loss": totals.loss,
            "lr": optimizer.param_groups[0]["lr"],
            "head_lr": optimizer.param_groups[-1]["lr"],
            "seconds": totals.seconds,
            "val_accuracy": None,
        }
        if sets.val is not None:
            right = evaluate_rows(model, sets.val, device=device, workers=workers)
            record["val_accuracy"] = float(right.mean()) if len(right) else 0.0
            if outcome.take(totals.epoch, right):
                if ranks.is_main:
                    save_weights(model, out_dir / BEST_WEIGHTS)
        outcome.history.append(record)

    def state() -> dict[str, Any]:
        run = {
            "probe": outcome.probe,
            "probe_right": outcome.probe_right,
            "best_epoch": outcome.best_epoch,
            "hflip": outcome.hflip,
        }
        return {
            "model": model.state_dict(),
            "history": json.dumps(outcome.history),
            "best": torch.tensor([outcome.best] if outcome.best is not None else []),
            "run": json.dumps(run),
            "signature": json.dumps(signature),
        }

    phase = Phase(
        name="fine-tuning",
        model=model,
        dataset=sets.train,
        optimizer=optimizer,
        scheduler=scheduler,
        loss=loss_step,
        draw_order=lambda: list(sampler),
        state=state,
        end_epoch=end_epoch,
    )
    _fit(
        phase,
        cfg,
        checkpoint_path,
        resume,
        device=device,
        generator=generator,
        workers=workers,
        ranks=ranks,
        quiet=quiet,
        stop=stop,
    )


def _export_weights(
    model: nn.Module,
    parts: HeadParts | None,
    plan: RowPlan,
    sets: Sets,
    outcome: Outcome,
    out_dir: Path,
    *,
    device: torch.device,
    workers: int,
    quiet: bool,
    stop: StopOnSignal | None = None,
) -> bool:
    """Write model.safetensors (the best epoch's weights); True when the probe's head was refitted on all rows.
    ``stop`` is checked during the refit's pass (a signal there leaves no model.safetensors, the checkpoint kept)."""
    refit = outcome.best_epoch == 0 and plan.val_source == "held-out" and parts is not None
    if refit:
        # The probe won on the held-out rows; with the choice made, the exported head learns from all kept
        # rows (the held-out ones too), as one refits on all the data after model selection.
        from safetensors.torch import load_file

        from ..run.progress import RichProgress

        model.load_state_dict(load_file(str(out_dir / BEST_WEIGHTS), device=str(device)))
        with RichProgress(quiet=quiet) as progress:
            fit_probe_head(
                model,
                parts,
                sets.unaugmented(np.concatenate([plan.rows, plan.held_rows])),
                n_classes=len(plan.listing.classes),
                device=device,
                workers=workers,
                autocast=amp_for(device).autocast,
                progress=progress,
                mirrored=False,
                stop=stop,
            )
        save_weights(model, out_dir / WEIGHTS)
    elif outcome.best_epoch is not None and outcome.best_epoch != outcome.history[-1]["epoch"]:
        write_atomic(out_dir / WEIGHTS, lambda tmp: shutil.copyfile(out_dir / BEST_WEIGHTS, tmp))
    else:
        save_weights(model, out_dir / WEIGHTS)
    return refit


def _metrics(plan: RowPlan, cfg: TrainConfig, outcome: Outcome, refit: bool, notes: list[str]) -> dict[str, Any]:
    """metrics.json: the history, the choices made and the rows trained on and held out."""
    paths = plan.listing.paths
    return {
        "history": outcome.history,
        "val_source": plan.val_source,  # "--val", "held-out" (kept rows, labels as given) or None
        "hflip": outcome.hflip,  # the flips trained with (--hflip, or decided by the probe)
        "probe": outcome.probe,  # the linear probe: train/val accuracy, seconds (empty with --head-init random)
        "best_epoch": outcome.best_epoch,  # the exported epoch; 0 = the probe-initialised model
        "probe_refit_on_all_rows": refit,  # epoch 0 won: its head was refitted on the held-out rows too
        "best_val_accuracy": outcome.best,  # validation accuracy of the exported model
        "warnings": notes,
        "n_train": int(len(plan.rows)),
        "n_held_out": int(len(plan.held_rows)),
        "n_relabelled": plan.n_relabelled,
        "options": dataclasses.asdict(cfg),
        "trained_on": {"path": [paths[i] for i in plan.rows], "label_index": plan.labels.tolist()},
        "held_out": {"path": [paths[i] for i in plan.held_rows], "label_index": plan.held_labels.tolist()},
    }


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    save_checkpoint(path, state)  # looked up at call time, so that tests can interrupt a run here


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def parameter_groups(model: nn.Module, parts: HeadParts | None, *, lr: float, head_lr: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: backbone first (``lr``), then the head (``head_lr``)."""
    head = {id(p) for p in parts.head.parameters()} if parts is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in head], "lr": lr},
        {"params": [p for p in trainable if id(p) in head], "lr": head_lr},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate_rows(
    model: nn.Module, dataset: ImageDataset, *, device: torch.device, workers: int, batch_size: int = 128
) -> np.ndarray:
    """Per usable row of ``dataset`` in order, whether the top-1 prediction is right: [V] bool."""
    model.eval()
    loader = make_loader(
        dataset, batch_size=batch_size, sampler=None, generator=None, num_workers=workers, device=device
    )
    autocast = amp_for(device).autocast
    right = []
    for images, targets, _, status in loader:
        usable = usable_mask(status)
        if not usable.any():
            continue
        images, targets = usable_on_device(images, targets, usable, device)
        with autocast():
            logits = model(images)
        right.append((logits.argmax(1) == targets).cpu().numpy())
    model.train()
    return np.concatenate(right) if right else np.zeros(0, dtype=bool)
