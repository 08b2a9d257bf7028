"""``detect()``: list a dataset, train DeFT's prompts, score every sample, return (and save) the results."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from . import __version__
from .config import DetectConfig, field_names
from .data import STATUS_OK, Listing, list_dataset
from .errors import UsageError
from .files import run_lock
from .results import normalize_frame, write_results
from .runstate import StopOnSignal, config_signature, listing_signature, load_checkpoint, save_checkpoint
from .safety import check_detect_paths

C = TypeVar("C")
CHECKPOINT = "detect_checkpoint.pt"  # inside the run folder


@dataclass
class DetectResult:
    """What :func:`detect` returns: the per-sample frame, its metadata and training statistics."""

    frame: pd.DataFrame  # one row per listed sample, columns as in results.SCHEMA
    metadata: dict[str, Any]  # written to the Parquet under the "deft_clean" key
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch loss, clean fraction, img/s
    path: Path | None = None  # where the Parquet was written, if it was

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the Parquet atomically and remember where."""
        self.path = write_results(self.frame, self.metadata, path)
        return self.path

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Counts for the end-of-run summary: samples, flagged, unusable, most-flagged classes."""
        usable = self.frame["status"] == STATUS_OK
        flagged = usable & ~self.frame["is_clean"]
        by_class = self.frame[flagged].groupby("label").size().sort_values(ascending=False, kind="stable")
        return {
            "samples": int(len(self.frame)),
            "flagged": int(flagged.sum()),
            "unusable": int((~usable).sum()),
            "top_flagged_classes": [(str(k), int(v)) for k, v in by_class.head(top).items()],
        }


def merge_options(cls: type[C], config: C | None, options: dict[str, Any]) -> C:
    """Merge keyword options into a config dataclass, naming any unknown option."""
    unknown = set(options) - field_names(cls)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config or cls(), **options)


def detect(
    dataset: str | os.PathLike[str],
    *,
    config: DetectConfig | None = None,
    path_col: str = "path",
    label_col: str = "label",
    class_names: str | os.PathLike[str] | dict[str, str] | None = None,
    out: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> DetectResult:
    """Find wrong labels in a dataset with DeFT (phase 1).

    Args:
        dataset: image folder or .csv/.parquet table (see :func:`deft_clean.data.list_dataset`).
        config: a :class:`DetectConfig`; keyword ``options`` (any DetectConfig field, e.g.
            ``model="ViT-B-16", epochs=5``) override it.
        path_col, label_col, class_names: how to read the dataset.
        out: if given, the Parquet is written there atomically.
        quiet: no progress bars or warnings.
        run_dir: folder for the training checkpoint (default ``<out>.run`` when ``out`` is given; without
            either, nothing is saved). The checkpoint is removed once the Parquet is written.
        resume: continue from the checkpoint in ``run_dir``; it must come from the same options (but
            ``device``/``num_workers``), model and listing.
        checkpoint_every: also checkpoint every this many steps inside an epoch (0: at epoch ends).
        overwrite: replace an existing ``out`` (never an input or a file inside the dataset).

    Raises:
        Interrupted: SIGINT/SIGTERM arrived (in the main thread); the checkpoint is saved and no
            Parquet is written. Its ``exit_code`` is 130 or 143.

    Returns:
        A :class:`DetectResult`; ``result.frame`` has one row per listed sample.
    """
    cfg = merge_options(DetectConfig, config, options)
    listing = list_dataset(dataset, path_col=path_col, label_col=label_col, class_names=class_names)
    if out is not None and Path(out).is_dir():
        raise UsageError(f"--out {out} is a folder; pass a file path such as results.parquet")
    if checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be 0 or more, got {checkpoint_every}")
    if run_dir is None and out is not None:
        run_dir = Path(out).with_name(Path(out).name + ".run")
    checkpoint = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    check_detect_paths(
        dataset, root=listing.root, source=listing.source, paths=listing.paths, out=out, run_dir=run_dir,
        overwrite=overwrite, extra_inputs=[class_names, cfg.model, cfg.pretrained],
    )  # fmt: skip
    if resume and checkpoint is None:
        raise UsageError("--resume needs --run-dir or --out (the checkpoint lives in <out>.run/)")
    if not resume and checkpoint is not None and checkpoint.exists():
        raise UsageError(
            f"{checkpoint} holds an unfinished run; pass --resume to continue it, or delete {checkpoint.parent}"
        )
    signature = {
        "options": config_signature(cfg),
        **listing_signature(listing.paths, listing.labels, listing.classes),
    }
    resume_state = load_checkpoint(checkpoint, signature) if resume and checkpoint is not None else None

    from .distributed import device_for, process_group

    with process_group(cfg.device) as ranks, run_lock(*((out, run_dir) if ranks.is_main else ())):
        import torch

        from .backbone import load_clip, resolve_device
        from .cache import prepare_cache
        from .detector import DeftModel, TrainControl, resolve_workers, score_samples, seed_everything, train_prompts
        from .progress import RichProgress

        device = device_for(ranks, resolve_device(cfg.device))
        quiet = quiet or not ranks.is_main  # one progress display and one set of warnings
        generator = seed_everything(cfg.seed)
        loaded = load_clip(cfg.model, cfg.pretrained, device=device, quiet=quiet)
        model = DeftModel(
            loaded,
            listing.prompt_names,
            n_ctx=cfg.n_ctx,
            ctx_init=cfg.ctx_init,
            class_specific=cfg.class_specific,
            vpt_tokens=cfg.vpt_tokens,
            vpt_depth=cfg.vpt_depth,
        ).to(device)
        workers = resolve_workers(cfg.num_workers)
        image = {"image_size": loaded.image_size, "mean": loaded.mean, "std": loaded.std}
        hint = (
            f"checkpoint saved in {checkpoint.parent}; rerun the same command with --resume to continue"
            if checkpoint is not None
            else "nothing was saved (pass run_dir to make the run resumable)"
        )
        save = None
        if checkpoint is not None:
            encoded = json.dumps(signature)

            def save(state: dict[str, Any]) -> None:
                if ranks.is_main:
                    save_checkpoint(checkpoint, {**state, "signature": encoded})

        with RichProgress(quiet=quiet) as progress, StopOnSignal(hint) as stop:
            cache = None
            if cfg.cache is not None:
                with stop.hinted("the images cached so far are kept; rerun the same command to go on"):
                    cache = prepare_cache(
                        cfg.cache,
                        listing,
                        size=loaded.image_size,
                        num_workers=workers,
                        progress=progress,
                        stop=stop,
                        ranks=ranks,
                    )
            control = TrainControl(save=save, resume=resume_state, every_steps=checkpoint_every, stop=stop, ranks=ranks)
            history = train_prompts(
                model,
                listing,
                epochs=cfg.epochs,
                warmup_epochs=cfg.warmup_epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                clean_rule=cfg.clean_rule,
                hflip=cfg.hflip,
                grad_clip=cfg.grad_clip,
                device=device,
                generator=generator,
                num_workers=workers,
                progress=progress,
                control=control,
                cache=cache,
                **image,
            )
            scores = score_samples(
                model,
                listing,
                batch_size=cfg.batch_size * 2,
                device=device,
                num_workers=workers,
                progress=progress,
                stop=stop,
                ranks=ranks,
                cache=cache,
                **image,
            )
        frame = results_frame(listing, scores, clean_rule=cfg.clean_rule)
        metadata = {
            "deft_clean_version": __version__,
            "kind": "detect",
            "model": cfg.model,
            "model_name": loaded.model_name,
            "pretrained": cfg.pretrained,
            "classes": listing.classes,
            "prompt_names": listing.prompt_names,
            "dataset": str(Path(dataset).resolve()),
            "source": listing.source,
            "path_col": path_col,
            "label_col": label_col,
            "image_size": loaded.image_size,
            "mean": list(loaded.mean),
            "std": list(loaded.std),
            "options": dataclasses.asdict(cfg),
            "seed": cfg.seed,
            "device": str(device),
            "world_size": ranks.world,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "history": [dataclasses.asdict(h) for h in history],
        }
        frame = normalize_frame(frame, metadata)
        result = DetectResult(frame, metadata, [dataclasses.asdict(h) for h in history])
        if out is not None and ranks.is_main:
            result.save(out)
        if checkpoint is not None and ranks.is_main:
            checkpoint.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                checkpoint.parent.rmdir()  # only if empty: the user may have put other things there
        return result


def results_frame(listing: Listing, scores: Any, *, clean_rule: str) -> pd.DataFrame:
    """Assemble the per-sample DataFrame of the Parquet contract from listing + scores."""
    usable = scores.usable
    is_clean = usable & (scores.p_clean > 0.5)
    if clean_rule == "threshold+argmax":
        is_clean &= scores.predicted_index == listing.label_indices
    classes = np.array(listing.classes, dtype=object)
    predicted_label = np.where(usable, classes[np.clip(scores.predicted_index, 0, None)], None)
    frame = pd.DataFrame(
        {
            "path": listing.paths,
            "label": listing.labels,
            "label_index": listing.label_indices,
            "p_clean": pd.array(np.where(usable, scores.p_clean, np.nan), dtype="Float32"),
            "is_clean": is_clean,
            "predicted_label": predicted_label,
            "predicted_index": scores.predicted_index,
            "p_predicted": pd.array(np.where(usable, scores.p_predicted, np.nan), dtype="Float32"),
            "sim_pos": pd.array(np.where(usable, scores.sim_pos, np.nan), dtype="Float32"),
            "sim_neg": pd.array(np.where(usable, scores.sim_neg, np.nan), dtype="Float32"),
            "status": scores.status(),
        }
    )
    # Nullable Float32 turns NaN into <NA> only via the mask; do it explicitly for unusable rows.
    for column in ("p_clean", "p_predicted", "sim_pos", "sim_neg"):
        frame.loc[~usable, column] = pd.NA
    return frame
