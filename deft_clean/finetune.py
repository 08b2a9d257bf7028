"""Phase 2: fully fine-tune a backbone + linear head on the rows that detect kept, and export it.

The output folder is the contract with ``predict``/``load_model``:
``model.safetensors`` (weights of the best epoch on validation, else of the last), ``config.json``
(backbone, classes, input size, mean, std and what is needed to rebuild the network offline),
``metrics.json`` (per-epoch loss, validation accuracy, the linear probe's accuracy, the rows trained on and
held out) and ``checkpoint.pt`` (the last epoch's full training state, for ``--resume``).

Training starts from a linear probe (see :mod:`deft_clean.probe`): the head is fitted on frozen features,
then the whole tower is fine-tuned, the head with a larger learning rate than the backbone. Without
``--val`` a stratified part of the kept rows is held out; the exported epoch is the best one there, the
probe-initialised model (epoch 0) included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler

from . import __version__
from .config import TrainConfig
from .data import STATUS_OK, ImageDataset, Listing, list_dataset
from .decisions import Verdicts, load_verdicts
from .distributed import Dist
from .errors import DataError, UsageError
from .files import run_lock, write_atomic
from .listing import relist
from .models import build_classifier, data_config, model_spec
from .probe import HeadParts, choose_hflip, fit_probe_head, head_parts, run_warnings, stratified_holdout
from .results import load_results
from .runstate import (
    StopOnSignal,
    load_checkpoint,
    optimizer_state,
    restore_optimizer_state,
    save_checkpoint,
)
from .safety import check_output
from .transforms import eval_transform, train_transform

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"


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


def select_rows(
    frame: Any,
    *,
    clean_only: bool,
    threshold: float | None,
    relabel: float | None,
    verdicts: Verdicts | None = None,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Which rows to train on and with which label index.

    Returns (row indices, label indices, number relabelled). Unusable rows are never used. Human
    ``verdicts`` (with the results' ``classes``) replace the automatic choice of the rows they decide.
    """
    usable = (frame["status"] == STATUS_OK).to_numpy()
    labels = frame["label_index"].to_numpy().astype(np.int64)
    if not clean_only:
        keep = usable
        relabelled = np.zeros_like(usable)
    else:
        p_clean = frame["p_clean"].to_numpy(dtype=float, na_value=np.nan)
        clean = (p_clean > threshold) if threshold is not None else frame["is_clean"].to_numpy(dtype=bool)
        clean = clean & usable
        relabelled = np.zeros_like(usable)
        if relabel is not None:
            p_pred = frame["p_predicted"].to_numpy(dtype=float, na_value=np.nan)
            relabelled = usable & ~clean & (p_pred >= relabel)
            labels = np.where(relabelled, frame["predicted_index"].to_numpy(), labels)
        keep = clean | relabelled
    if verdicts is not None:
        keep, labels = verdicts.apply(keep, labels, classes=classes)
        relabelled = keep & (labels != frame["label_index"].to_numpy())
    rows = np.flatnonzero(keep)
    return rows, labels[rows], int(relabelled.sum())


def check_match(listing: Listing, frame: Any, metadata: dict[str, Any], results: Path) -> None:
    """Refuse a results file made for another dataset."""
    if list(metadata.get("classes", [])) != listing.classes:
        raise DataError(
            f"{results} was made for classes {metadata.get('classes')[:5]}..., the dataset has "
            f"{listing.classes[:5]}...; run detect on this dataset first"
        )
    if len(frame) != len(listing) or frame["path"].tolist() != listing.paths:
        raise DataError(
            f"{results} lists {len(frame)} samples, the dataset {len(listing)}, or their paths differ; "
            "run detect on this dataset first"
        )


def _lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero (per step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _signature(cfg: TrainConfig, rows: np.ndarray, labels: np.ndarray, spec: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    options = dataclasses.asdict(cfg)
    for volatile in ("resume", "device", "num_workers", "quiet", "cache"):
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
            the automatic verdict of their rows (see :mod:`deft_clean.decisions`).

    Raises:
        Interrupted: SIGINT/SIGTERM arrived; ``checkpoint.pt`` holds the state after the last finished
            step (``resume=True`` continues it exactly, on CPU); no model file is written.

    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, each epoch's
    order is sharded by rank, and only rank 0 shows progress and writes files.
    """
    from .distributed import process_group
    from .pipeline import merge_options

    cfg = merge_options(TrainConfig, config, options)
    with process_group(cfg.device) as ranks, run_lock(out if ranks.is_main else None):
        return _train(
            dataset, results=Path(results), out=out, cfg=cfg, val=val, decisions=decisions, quiet=quiet, ranks=ranks
        )


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
) -> TrainResult:
    from .backbone import resolve_device
    from .detector import (
        EpochOrder,
        EpochSums,
        autocast_for,
        make_loader,
        rank_streams,
        report_now,
        resolve_workers,
        seed_everything,
        usable_on_device,
    )
    from .distributed import device_for
    from .progress import RichProgress

    frame, metadata = load_results(results)
    listing = relist(dataset, metadata)
    check_match(listing, frame, metadata, results)
    verdicts = load_verdicts(decisions, frame, metadata)
    rows, labels, n_relabelled = select_rows(
        frame,
        clean_only=cfg.clean_only,
        threshold=cfg.threshold,
        relabel=cfg.relabel,
        verdicts=verdicts,
        classes=listing.classes,
    )
    if len(rows) == 0:
        raise DataError("no rows left to train on (every row is flagged or unusable); lower --threshold")
    val_listing = None
    if val is not None:
        val_listing = list_dataset(val)
        unknown = sorted(set(val_listing.classes) - set(listing.classes))
        if unknown:
            raise DataError(f"--val has classes the training set lacks: {unknown[:5]}")
        remap = {c: i for i, c in enumerate(listing.classes)}
        val_listing = dataclasses.replace(
            val_listing, label_indices=np.array([remap[x] for x in val_listing.labels], dtype=np.int64)
        )

    # Without --val, a stratified part of the kept rows (as labelled there) chooses the epoch.
    held = stratified_holdout(labels, fraction=cfg.holdout, seed=cfg.seed) if val_listing is None else held_none()
    val_source = "--val" if val_listing is not None else "held-out" if len(held) else None
    held_rows, held_labels = rows[held], labels[held]
    train_mask = np.ones(len(rows), dtype=bool)
    train_mask[held] = False
    rows, labels = rows[train_mask], labels[train_mask]

    out_dir = Path(out)
    checkpoint_path = out_dir / CHECKPOINT
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.resume and not cfg.overwrite:
        raise UsageError(f"--out {out_dir} is not empty; pass --resume to continue or --overwrite to replace it")
    named = [dataset] if isinstance(dataset, (str, os.PathLike)) else []  # not a DataFrame or HF object
    inputs: list[Any] = [results, *named, *([val] if val is not None else [])]
    if listing.source in ("table", "dataframe"):
        inputs.extend(listing.root / p for p in listing.paths)
    datasets = [listing.root] if listing.source in ("folder", "hf", "webdataset") else []
    if val_listing is not None and val_listing.source == "folder":
        datasets.append(val_listing.root)
    check_output(out_dir, inputs=inputs, datasets=datasets, overwrite=True, folder=True)

    device = device_for(ranks, resolve_device(cfg.device))
    quiet = quiet or not ranks.is_main
    generator = seed_everything(cfg.seed)
    spec = model_spec(cfg.backbone, metadata=metadata, backbone_weights=cfg.backbone_weights)
    model = build_classifier(spec, n_classes=len(listing.classes), device=device, load_pretrained=True, quiet=quiet)
    size, mean, std = data_config(spec, model, image_size=cfg.image_size)
    spec.update({"image_size": size, "mean": list(mean), "std": list(std)})

    workers = resolve_workers(cfg.num_workers)
    cache = val_cache = None
    if cfg.cache is not None:
        from .cache import prepare_cache

        hint = "the images cached so far are kept; rerun the same command to go on"
        with RichProgress(quiet=quiet) as progress, StopOnSignal(hint) as stop:
            fill = {"size": size, "num_workers": workers, "progress": progress, "stop": stop, "ranks": ranks}
            cache = prepare_cache(cfg.cache, listing, **fill)
            if val_listing is not None:
                val_cache = prepare_cache(cfg.cache, val_listing, **fill)
    full_labels = _labels_for(listing, np.concatenate([rows, held_rows]), np.concatenate([labels, held_labels]))
    train_set = ImageDataset(
        listing.root,
        listing.paths,
        full_labels,
        train_transform(size, mean, std, hflip=cfg.hflip is not False),  # final once the probe has decided
        image_size=size,
        indices=rows.tolist(),
        cache=cache,
        images=listing.images,
    )
    evaluation = eval_transform(size, mean, std)

    def unaugmented(indices: np.ndarray) -> ImageDataset:
        return ImageDataset(
            listing.root, listing.paths, full_labels, evaluation, image_size=size, indices=indices.tolist(),
            cache=cache, images=listing.images,
        )

    val_set = None
    if val_listing is not None:
        val_set = ImageDataset(
            val_listing.root, val_listing.paths, val_listing.label_indices, evaluation, image_size=size,
            cache=val_cache, images=val_listing.images,
        )
    elif len(held_rows):
        val_set = unaugmented(held_rows)
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if not quiet:
            logging.getLogger("deft_clean").warning("%s", message)

    autocast, needs_scaler = autocast_for(device)
    parts = head_parts(model)
    probe: dict[str, Any] = {}
    if cfg.head_init == "probe" and not cfg.resume:
        if parts is None:
            note(f"{cfg.backbone}: its head is not one linear layer, so it starts from random weights (no probe)")
        else:
            with RichProgress(quiet=quiet) as progress:
                probe = fit_probe_head(
                    model, parts, unaugmented(rows), n_classes=len(listing.classes), device=device, workers=workers,
                    autocast=autocast, progress=progress, mirrored=cfg.hflip is None,
                )
    hflip = choose_hflip(cfg.hflip, probe, note)
    # The epoch's order is drawn explicitly from `generator` so that a resume can redraw it and skip
    # the batches already done (see the loop).
    sampler: Sampler[int] = RandomSampler(train_set, generator=generator)
    if cfg.balanced:
        counts = np.bincount(labels, minlength=len(listing.classes)).astype(np.float64)
        weights = 1.0 / counts[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights), len(rows), replacement=True, generator=generator)

    epoch_order = EpochOrder()

    steps_per_epoch = max(1, math.ceil(math.ceil(len(rows) / ranks.world) / cfg.batch_size))
    # DDP averages the gradients; the wrapped module is only used for the forward pass.
    forward = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if ranks.active
        else model
    )
    groups = parameter_groups(model, parts, lr=cfg.lr, head_lr=cfg.lr * cfg.head_lr_scale)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = min(cfg.warmup_epochs * steps_per_epoch, max(total_steps - 1, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)
    signature = _signature(cfg, rows, labels, spec)

    history: list[dict[str, Any]] = []
    start_epoch, skip_steps, sums = 0, 0, EpochSums(device)
    best: float | None = None
    best_epoch: int | None = None
    if cfg.resume:
        state = load_checkpoint(checkpoint_path, signature)
        model.load_state_dict(state["model"])
        restore_optimizer_state(state, optimizer, scheduler, scaler, generator, device)
        history = json.loads(state["history"])
        best = state["best"].item() if state["best"].numel() else None
        run = json.loads(state["run"])
        probe, best_epoch, hflip = run["probe"], run["best_epoch"], run["hflip"]
        start_epoch, skip_steps = int(state["epoch"]), int(state["step"])
        sums = EpochSums(device, json.loads(state["sums"]))
    train_set.transform = train_transform(size, mean, std, hflip=hflip)
    loader = make_loader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=epoch_order,
        generator=rank_streams(generator, ranks, start_epoch * steps_per_epoch + skip_steps),
        num_workers=workers,
        device=device,
    )
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if probe and val_set is not None and not cfg.resume:
        # Epoch 0, the probe-initialised model, competes with the fine-tuned epochs.
        best = probe["val_accuracy"] = evaluate(model, val_set, device=device, workers=workers)
        best_epoch = 0
        if ranks.is_main:
            save_weights(model, out_dir / BEST_WEIGHTS)

    def snapshot(epoch: int, step: int, epoch_start: torch.Tensor) -> dict[str, Any]:
        """The state after ``step`` batches of ``epoch`` (0-based); step 0 = the epoch has not begun."""
        return {
            "model": model.state_dict(),
            **optimizer_state(optimizer, scheduler, scaler, epoch_start, device),
            "epoch": epoch,
            "step": step,
            "sums": json.dumps(sums.values()),
            "history": json.dumps(history),
            "best": torch.tensor([best] if best is not None else []),
            "run": json.dumps({"probe": probe, "best_epoch": best_epoch, "hflip": hflip}),
            "signature": json.dumps(signature),
        }

    hint = f"checkpoint saved in {checkpoint_path}; rerun the same command with --resume to continue"
    with StopOnSignal(hint) as stop, RichProgress(quiet=quiet) as progress:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            progress.start_epoch(epoch + 1, cfg.epochs, len(train_set))
            epoch_start = generator.get_state()
            order = ranks.shard(list(sampler))  # the same order on every rank, then this rank's part
            epoch_order.order = order[skip_steps * cfg.batch_size :]
            step, started = skip_steps, time.perf_counter()
            if skip_steps == 0:
                sums = EpochSums(device)
            else:
                progress.advance(min(skip_steps * cfg.batch_size, len(order)))
            for images, targets, _, status in loader:
                step += 1
                usable = torch.tensor([s == STATUS_OK for s in status])
                empty = not usable.any()
                if not empty or ranks.active:  # under DDP every rank must run backward every step
                    keep = torch.ones_like(usable) if empty else usable
                    images, targets = usable_on_device(images, targets, keep, device)
                    with autocast():
                        logits = forward(images)
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
                    if empty:
                        loss, targets = loss * 0.0, targets[:0]  # joins the gradient average with zeros
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    sums.add(loss, len(targets))
                report = report_now(step, steps_per_epoch)
                progress.advance(len(status), **({"loss": sums.means()["loss"]} if report else {}))
                if ranks.any(stop.requested, device) if ranks.active and report else stop.requested:
                    stop.follow()  # a signal at any rank stops every rank
                    if ranks.is_main:
                        _save_checkpoint(checkpoint_path, snapshot(epoch, step, epoch_start))
                    stop.check()
            skip_steps = 0
            totals = sums.values()
            loss_sum, seen = ranks.sum([totals["loss"], totals["seen"]], device)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "head_lr": optimizer.param_groups[-1]["lr"],
                "seconds": time.perf_counter() - started,
                "val_accuracy": None,
            }
            if val_set is not None:
                record["val_accuracy"] = evaluate(model, val_set, device=device, workers=workers)
                if best is None or record["val_accuracy"] > best:
                    best, best_epoch = record["val_accuracy"], epoch + 1
                    if ranks.is_main:
                        save_weights(model, out_dir / BEST_WEIGHTS)
            history.append(record)
            if ranks.is_main:
                _save_checkpoint(checkpoint_path, snapshot(epoch + 1, 0, generator.get_state()))
            if ranks.any(stop.requested, device):
                stop.follow()
                stop.check()

    for message in run_warnings(history, probe, best_epoch):
        note(message)
    result = TrainResult(
        out_dir,
        history,
        int(len(rows)),
        n_relabelled,
        best,
        val_source=val_source,
        probe_val_accuracy=probe.get("val_accuracy"),
        best_epoch=best_epoch,
        n_held_out=int(len(held_rows)),
        warnings=notes,
    )
    if not ranks.is_main:
        ranks.barrier()  # wait until rank 0 has written the model folder
        return result

    refit = best_epoch == 0 and val_source == "held-out" and parts is not None
    if refit:
        # The probe won on the held-out rows; with the choice made, the exported head learns from all kept
        # rows (the held-out ones too), as one refits on all the data after model selection.
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out_dir / BEST_WEIGHTS), device=str(device)))
        with RichProgress(quiet=quiet) as progress:
            fit_probe_head(
                model, parts, unaugmented(np.concatenate([rows, held_rows])), n_classes=len(listing.classes),
                device=device, workers=workers, autocast=autocast, progress=progress, mirrored=False,
            )
        save_weights(model, out_dir / WEIGHTS)
    elif best_epoch is not None and best_epoch != history[-1]["epoch"]:
        write_atomic(out_dir / WEIGHTS, lambda tmp: shutil.copyfile(out_dir / BEST_WEIGHTS, tmp))
    else:
        save_weights(model, out_dir / WEIGHTS)
    export_config = {
        "format": "deft-clean-model",
        "deft_clean_version": __version__,
        **spec,
        "classes": listing.classes,
        "trained_from": str(results.resolve()),
    }
    write_atomic(out_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(export_config, indent=2)))
    metrics = {
        "history": history,
        "val_source": val_source,  # "--val", "held-out" (kept rows, labels as given) or None
        "hflip": hflip,  # the flips trained with (--hflip, or decided by the probe)
        "probe": probe,  # the linear probe: train/val accuracy, seconds (empty with --head-init random)
        "best_epoch": best_epoch,  # the exported epoch; 0 = the probe-initialised model
        "probe_refit_on_all_rows": refit,  # epoch 0 won: its head was refitted on the held-out rows too
        "best_val_accuracy": best,  # validation accuracy of the exported model
        "warnings": notes,
        "n_train": int(len(rows)),
        "n_held_out": int(len(held_rows)),
        "n_relabelled": n_relabelled,
        "options": dataclasses.asdict(cfg),
        "trained_on": {"path": [listing.paths[i] for i in rows], "label_index": labels.tolist()},
        "held_out": {"path": [listing.paths[i] for i in held_rows], "label_index": held_labels.tolist()},
    }
    write_atomic(out_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics)))
    ranks.barrier()
    return result


def _labels_for(listing: Listing, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Full-length label array with the (possibly relabelled) training labels filled in."""
    full = listing.label_indices.copy()
    full[rows] = labels
    return full


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    save_checkpoint(path, state)


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def held_none() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def parameter_groups(
    model: nn.Module, parts: HeadParts | None, *, lr: float, head_lr: float
) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: backbone first (``lr``), then the head (``head_lr``)."""
    head = {id(p) for p in parts.head.parameters()} if parts is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in head], "lr": lr},
        {"params": [p for p in trainable if id(p) in head], "lr": head_lr},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: ImageDataset, *, device: torch.device, workers: int, batch_size: int = 128
) -> float:
    """Top-1 accuracy on a labelled dataset with the eval transform (unusable files skipped)."""
    from .detector import autocast_for

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    autocast, _ = autocast_for(device)
    correct = total = 0
    for images, targets, _, status in loader:
        usable = torch.tensor([s == STATUS_OK for s in status])
        if not usable.any():
            continue
        with autocast():
            logits = model(images[usable].to(device))
        correct += int((logits.argmax(1).cpu() == targets[usable]).sum())
        total += int(usable.sum())
    model.train()
    return correct / max(total, 1)
