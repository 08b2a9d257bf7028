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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..inputs.listing import Listing, list_dataset
from ..outputs.results import flagged_rows, normalize_frame, usable_rows, write_results
from ..outputs.verdict import verdict
from ..run._version import __version__
from ..run.checkpoints import (
    StopOnSignal,
    config_signature,
    listing_signature,
    load_checkpoint,
    save_checkpoint,
)
from ..run.errors import STATUS_OK, UsageError, option, warn_result
from ..run.files import run_lock
from ..run.options import DetectConfig, PassOptions, ReadOptions, RunOptions, merge_options
from ..run.ownership import MANIFEST, read_manifest, write_manifest
from ..run.safety import Output, check_detect_paths
from .health import health_columns

if TYPE_CHECKING:
    from .passes import Evidence  # imports torch: loaded where the passes run
    from .prompt_training import TrainControl
    from .selection import Decision

CHECKPOINT = "detect_checkpoint.pt"  # inside the run folder


@dataclass
class DetectResult:
    """What :func:`detect` returns: the per-sample frame, its metadata and training statistics."""

    frame: pd.DataFrame  # one row per listed sample, columns as in results.SCHEMA
    metadata: dict[str, Any]  # written to the Parquet under the "deft_clean" key
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch loss, clean fraction, img/s
    path: Path | None = None  # where the Parquet was written, if it was
    features: np.ndarray | None = None  # float32 [N, E] frozen image features, rows aligned with frame
    visual_probs: np.ndarray | None = None  # float32 [N, K] cross-fitted visual class probabilities (fused rule)
    evidence: Any = None  # the Evidence behind the decision (zero-shot posterior, learned-prompt scores)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the Parquet atomically and remember where."""
        self.path = write_results(self.frame, self.metadata, path)
        return self.path

    def flagged(self) -> pd.DataFrame:
        """Flagged usable rows, lowest ``p_clean`` (most suspicious) first; the index is the Parquet row."""
        from ..outputs.notebook import flagged

        return flagged(self.frame)

    def noise_rates(self) -> pd.DataFrame:
        """Per class: samples, usable, flagged and noise_rate (flagged / usable), indexed by class."""
        from ..outputs.summary import class_table

        return class_table(self.frame, self.classes)

    def confusions(self) -> pd.DataFrame:
        """Given -> suggested label pairs among flagged rows (columns given, suggested, count), most frequent first."""
        from ..outputs.summary import label_pairs

        return label_pairs(self.frame)

    def __repr__(self) -> str:
        """A few lines (rows, flagged, withheld, the evidence verdict, the model), not the whole frame."""
        from ..outputs.summary import describe

        return describe(self.frame, self.metadata, self.path)

    def to_cleanlab(self) -> pd.DataFrame:
        """cleanlab's label-issue table (``Datalab.get_issues("label")``'s columns: is_label_issue, label_score,
        given_label, predicted_label) for the usable rows, indexed by Parquet row."""
        from ..outputs.handoff import cleanlab_issues

        return cleanlab_issues(self.frame)

    def to_fiftyone(self, folder: str | os.PathLike[str], *, dataset: str | os.PathLike[str] | None = None) -> Path:
        """Write ``folder/labels.csv`` for FiftyOne's CSV importer (see :mod:`deft_clean.outputs.handoff`);
        ``dataset`` is where the images are when they moved. Image files only (folders, tables, DataFrames)."""
        from ..inputs.listing import DatasetSpec, dataset_root
        from ..outputs.handoff import write_fiftyone

        if DatasetSpec.of(self.metadata).packed:
            raise UsageError("to_fiftyone needs image files; a Hugging Face dataset or shards hold their images")
        return write_fiftyone(self.frame, dataset_root(self.metadata, dataset), folder)

    def _repr_html_(self) -> str:
        """Jupyter's view: totals, the per-class table and thumbnails of the most suspicious samples."""
        from ..outputs.notebook import to_html

        return to_html(self.frame, self.metadata)

    def save_arrays(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``features.npy`` [N, D], ``probs.npy`` [N, K] and ``arrays.json``
        (see :mod:`deft_clean.outputs.arrays`)."""
        from ..outputs.arrays import save_result_arrays

        return save_result_arrays(self, folder)

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Counts for the end-of-run summary: samples, flagged, withheld, unusable, most-flagged classes (with
        the evidence check's estimated wrong-label share and its 95% interval, None where not estimated), and
        the evidence check's warning line (None when flags are supported)."""
        from ..outputs.summary import class_noise, class_table, evidence_line

        usable, flagged = usable_rows(self.frame), flagged_rows(self.frame)
        table = class_table(self.frame, self.classes)["flagged"]
        by_class = table[table > 0].sort_index().sort_values(ascending=False, kind="stable")  # ties: by name
        evidence = self.metadata.get("evidence")
        noise = class_noise(evidence)
        withheld = self.frame["withheld"].fillna(False).astype(bool) if "withheld" in self.frame else flagged & False
        return {
            "samples": int(len(self.frame)),
            "flagged": int(flagged.sum()),
            "withheld": int(withheld.sum()),
            "unusable": int((~usable).sum()),
            "top_flagged_classes": [(str(k), int(v)) for k, v in by_class.head(top).items()],
            "class_noise": {str(k): noise.get(str(k)) for k in by_class.head(top).index},
            "reliable": None if not isinstance(evidence, dict) else bool(evidence.get("reliable")),
            "evidence_warning": evidence_line(evidence),
        }


def load(path: str | os.PathLike[str]) -> DetectResult:
    """A saved results Parquet as the :class:`DetectResult` detect returned (frame, metadata, history; no
    features or probabilities: ``--save-arrays`` keeps those). ``load_results`` still gives (frame, metadata)."""
    from ..outputs.results import load_results

    frame, metadata = load_results(path)
    history = metadata.get("history")
    return DetectResult(frame, metadata, list(history) if isinstance(history, list) else [], path=Path(path))


def detect(
    dataset: Any,
    *,
    config: DetectConfig | None = None,
    reading: ReadOptions | None = None,
    run: RunOptions | None = None,
    path_col: str = "path",
    label_col: str = "label",
    image_col: str | None = None,
    root: str | os.PathLike[str] | None = None,
    class_names: str | os.PathLike[str] | dict[str, str] | None = None,
    out: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    overwrite: bool = False,
    save_arrays: str | os.PathLike[str] | None = None,
    split: str | None = None,
    label_key: str = "cls",
    id_col: str | None = None,
    **options: Any,
) -> DetectResult:
    """Find wrong labels in a dataset with DeFT (phase 1).

    Args:
        dataset: image folder, .csv/.parquet table, a pandas DataFrame of image paths (absolute, or
            relative to ``root``) and labels, a Hugging Face dataset (saved folder or object) or WebDataset
            ``.tar`` shards (see :func:`deft_clean.inputs.listing.list_dataset`).
        config: a :class:`DetectConfig`; keyword ``options`` (any DetectConfig field, e.g.
            ``model="ViT-B-16", epochs=5``) override it.
        reading: how to read the dataset, as one :class:`ReadOptions`, or its fields as keywords (not both):
        path_col, label_col, class_names: how to read the dataset; ``image_col`` is another name for
            ``path_col``, ``root`` the folder a DataFrame's relative paths start from (for a Hugging Face
            dataset object: the folder its path-only rows may be read from).
        run: where the run writes and how it resumes, as one :class:`RunOptions`, or its fields as keywords
            (not both):
        out: if given, the Parquet is written there atomically.
        quiet: no progress bars or warnings.
        run_dir: folder for the training checkpoint (default ``<out>.run`` when ``out`` is given; without
            either, nothing is saved). The checkpoint is removed once the Parquet is written.
        resume: continue from the checkpoint in ``run_dir``; it must come from the same options (but
            ``device``/``num_workers``), model and listing.
        checkpoint_every: also checkpoint every this many steps inside an epoch (0: at epoch ends).
        overwrite: replace an existing ``out`` (never an input or a file inside the dataset).
        save_arrays: a folder for ``features.npy`` [N, D] and ``probs.npy`` [N, K], rows aligned with the
            Parquet (see :mod:`deft_clean.outputs.arrays`).
        split: the split of a Hugging Face ``DatasetDict`` (default ``train``).
        label_key: WebDataset shards: the member holding the label (``cls``) or ``json:FIELD``.
        id_col: Hugging Face: a column shown in each row's path, ``hf://<index>#<id>``.

    Raises:
        Interrupted: SIGINT/SIGTERM arrived (in the main thread); the checkpoint is saved and no
            Parquet is written. Its ``exit_code`` is 130 or 143.

    Returns:
        A :class:`DetectResult`; ``result.frame`` has one row per listed sample.
    """
    cfg = merge_options(DetectConfig, config, options)
    built = ReadOptions.of(
        path_col=path_col,
        label_col=label_col,
        image_col=image_col,
        root=root,
        class_names=class_names,
        split=split,
        label_key=label_key,
        id_col=id_col,
    )
    reading = _one_form(reading, built, "reading")
    run = _one_form(run, RunOptions(out, run_dir, resume, checkpoint_every, overwrite), "run")
    listing = list_dataset(dataset, reading)
    run_dir = _check_outputs(dataset, listing, cfg, run, class_names=reading.class_names, save_arrays=save_arrays)
    checkpoint = _Checkpoint.open(run_dir, cfg, listing, resume=run.resume, every=run.checkpoint_every)
    from ..run.cores import plan_cpu, torch_threads
    from ..run.distributed import process_group

    threads, locked = plan_cpu(cfg.num_workers, cfg.threads)[1], (run.out, run_dir)
    with (
        process_group(cfg.device) as ranks,
        run_lock(*(locked if ranks.is_main else ())),
        torch_threads(threads),
        # from the model's loading until the Parquet is written; rank 0's line says how to go on (another rank
        # may look before rank 0's last save is there)
        StopOnSignal(checkpoint.hint if ranks.is_main else "rank 0's line says how to go on") as stop,
    ):
        result = _detect(cfg, listing, checkpoint, ranks=ranks, quiet=quiet, reading=reading, stop=stop)
        if run.out is not None and ranks.is_main:
            result.save(run.out)
        if save_arrays is not None and ranks.is_main:
            result.save_arrays(save_arrays)
        if ranks.is_main:
            checkpoint.finish()
        return result


def _one_form(given: Any, built: Any, name: str) -> Any:
    """The options object ``given``, else ``built`` from the keywords; both at once is refused (one would be
    ignored): a keyword given means ``built`` differs from the defaults."""
    if given is None:
        return built
    defaults = type(built)()
    named = [f.name for f in dataclasses.fields(built) if getattr(built, f.name) != getattr(defaults, f.name)]
    if named:
        raise UsageError(f"pass {name}= or its fields ({', '.join(named)}) as keywords, not both")
    return given


def _check_outputs(
    dataset: Any, listing: Listing, cfg: DetectConfig, run: RunOptions, *, class_names: Any, save_arrays: Any
) -> Path | None:
    """Refuse outputs that would overwrite inputs or each other; returns the run folder (None: no checkpoints)."""
    out, overwrite = run.out, run.overwrite
    if out is not None and Path(out).is_dir():
        raise UsageError(f"{option('out')} {out} is a folder; pass a file path such as results.parquet")
    from ..outputs.arrays import ARRAY_FILES, check_arrays_dir

    if save_arrays is not None:
        check_arrays_dir(save_arrays, overwrite=overwrite)
    if run.checkpoint_every < 0:
        raise UsageError(f"{option('checkpoint_every')} must be 0 or more, got {run.checkpoint_every}")
    run_dir = run.checkpoint_dir  # after the folder check: "<out>.run" needs out to name a file
    outputs = [
        Output(out, overwrite=overwrite, kind="results") if out is not None else None,
        Output(run_dir, "run_dir", folder=True, overwrite=True) if run_dir is not None else None,
        Output(save_arrays, "save_arrays", folder=True, overwrite=True, files=ARRAY_FILES) if save_arrays else None,
        Output(cfg.cache, "cache", folder=True, overwrite=True) if cfg.cache is not None else None,
    ]
    check_detect_paths(
        dataset,
        root=listing.root,
        paths=listing.paths,
        listed_files=listing.spec.listed_files,
        dataset_folder=listing.spec.dataset_folder,
        outputs=[o for o in outputs if o is not None],
        extra_inputs=[class_names, cfg.model, cfg.pretrained],
    )
    return Path(run_dir) if run_dir is not None else None


@dataclass
class _Checkpoint:
    """Where detect's training checkpoint lives, what must match to resume it, and the state to resume."""

    path: Path | None  # None: the run is not resumable
    signature: dict[str, Any]
    resume: dict[str, Any] | None  # the loaded checkpoint, when resuming
    every: int  # also checkpoint every this many steps (0: at epoch ends)

    @classmethod
    def open(
        cls, run_dir: Path | None, cfg: DetectConfig, listing: Listing, *, resume: bool, every: int
    ) -> _Checkpoint:
        path = run_dir / CHECKPOINT if run_dir is not None else None
        if resume and path is None:
            raise UsageError(
                f"{option('resume', True)} needs {option('run_dir')} or {option('out')} (the checkpoint lives in "
                "<out>.run/)"
            )
        if not resume and path is not None and path.exists():
            raise UsageError(f"{path} holds an unfinished run; pass --resume to continue it, or delete {path.parent}")
        signature = {
            "options": config_signature(cfg),
            **listing_signature(listing.paths, listing.labels, listing.classes),
        }
        state = load_checkpoint(path, signature) if resume and path is not None else None
        return cls(path, signature, state, every)

    def hint(self) -> str:
        """What the message of a stopped run says about going on (asked when it stops)."""
        if self.path is None:
            return "nothing was saved (pass run_dir to make the run resumable)"
        if not self.path.exists():  # e.g. --quick, which trains nothing, stopped during its scoring
            return "nothing to resume; rerun the same command (without --resume)"
        return f"checkpoint saved in {self.path.parent}; rerun the same command with --resume to continue"

    def saver(self) -> Any:
        """The engine's ``save`` callback (None when the run is not resumable)."""
        if self.path is None:
            return None
        encoded, path = json.dumps(self.signature), self.path

        def save(state: dict[str, Any]) -> None:
            if not (path.parent / MANIFEST).exists():  # before the checkpoint: an interrupted run's file is ours
                path.parent.mkdir(parents=True, exist_ok=True)
                write_manifest(path.parent, [CHECKPOINT])
            save_checkpoint(path, {**state, "signature": encoded})

        return save

    def finish(self) -> None:
        """Remove the checkpoint of a run whose results are written."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            if read_manifest(self.path.parent) == [CHECKPOINT]:
                (self.path.parent / MANIFEST).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty: the user may have put other things there


def _detect(
    cfg: DetectConfig,
    listing: Listing,
    checkpoint: _Checkpoint,
    *,
    ranks: Any,
    quiet: bool,
    reading: ReadOptions,
    stop: StopOnSignal,
) -> DetectResult:
    """Load CLIP, gather the evidence, select the clean rows and assemble the result (one rank's part)."""
    from ..models.clip import load_clip, resolve_device
    from ..run.distributed import device_for
    from ..run.engine import resolve_workers
    from ..run.progress import RichProgress
    from .selection import select

    device = device_for(ranks, resolve_device(cfg.device))
    quiet = quiet or not ranks.is_main  # one progress display and one set of warnings
    loaded = load_clip(cfg.model, cfg.pretrained, device=device, quiet=quiet, announce=True, seed=cfg.seed)
    stop.check_ranks(ranks, device)  # a large model loads for a while
    from ..inputs.device_transforms import device_transforms_wanted
    from ..models.clip import compile_module

    if cfg.compile:
        compile_module(loaded.model.visual, "the image tower")
    workers = resolve_workers(cfg.num_workers, cfg.threads)
    with RichProgress(quiet=quiet) as progress:
        cache = None
        if cfg.cache is not None:
            from ..inputs.image_cache import prepare_cache

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
        passes = PassOptions(
            batch_size=cfg.batch_size * 2,
            image_size=loaded.image_size,
            mean=loaded.mean,
            std=loaded.std,
            device=device,
            num_workers=workers,
            progress=progress,
            stop=stop,
            ranks=ranks,
            cache=cache,
            device_transforms=device_transforms_wanted(cfg.device_transforms, device),
        )
        from .prompt_training import TrainControl

        control = TrainControl(checkpoint.saver(), checkpoint.resume, every_steps=checkpoint.every)
        evidence = gather_evidence(cfg, loaded, listing, passes, control)
    stop.check_ranks(ranks, device)
    with evidence.clock.timing("selection"):
        decision = select(cfg, listing, evidence, device=device)
    stop.check_ranks(ranks, device)
    frame = results_frame(listing, evidence, decision)
    warnings = evidence.warnings + decision.warnings  # every warning of the run, in the order they arose
    for line in warnings:
        warn_result(line)  # at once (before the health pass), and even when quiet: they change what flags mean
    if cfg.health:
        frame = _with_health(cfg, listing, evidence, frame, warnings, device=device)
        stop.check_ranks(ranks, device)
    metadata = _metadata(
        cfg, listing, loaded, evidence, decision, reading=reading, device=device, world=ranks.world, warnings=warnings
    )
    frame = normalize_frame(frame, metadata)
    metadata["verdict"] = verdict(metadata, frame).to_metadata()  # the one verdict every view states
    stop.check_ranks(ranks, device)  # the last point before the Parquet: a signal after it is said, see StopOnSignal
    result = DetectResult(frame, metadata, [dataclasses.asdict(h) for h in evidence.history])
    result.features = evidence.features
    result.visual_probs = decision.visual
    result.evidence = evidence
    return result


def _with_health(
    cfg: DetectConfig, listing: Listing, evidence: Evidence, frame: pd.DataFrame, warnings: list[str], *, device: Any
) -> pd.DataFrame:
    """``frame`` with the dataset-health columns (duplicates, outliers); their warnings said and added to
    ``warnings``."""
    with evidence.clock.timing("health"):
        health = health_columns(
            listing.root,
            listing.paths,
            evidence.features,
            evidence.usable,
            evidence.prompts,
            device=device,
            images=listing.images,
            threshold=cfg.duplicate_threshold,
            kept=evidence.kept,
        )
    for line in health.warnings:
        warn_result(line)
    warnings += health.warnings
    return frame.assign(**health.columns)


def _metadata(
    cfg: DetectConfig,
    listing: Listing,
    loaded: Any,
    evidence: Evidence,
    decision: Decision,
    *,
    reading: ReadOptions,
    device: Any,
    world: int,
    warnings: list[str],
) -> dict[str, Any]:
    """The Parquet's metadata: what was run, on what, with which software, and what it warned about."""
    import torch

    from ..models.clip import weights_label
    from ..models.towers import built_family  # imports torch: loaded once a model runs

    return {
        "deft_clean_version": __version__,
        "kind": "detect",
        "model": cfg.model,
        "model_name": loaded.model_name,
        "model_family": built_family(loaded.model, loaded.tokenizer)._asdict(),  # image tower, text tower, tokenizer
        "pretrained": weights_label(cfg.model, cfg.pretrained),
        "classes": listing.classes,
        "prompt_names": listing.prompt_names,
        **listing.spec.to_metadata(),  # dataset, source, reader: how to open the dataset again
        "path_col": reading.path_col,
        "label_col": reading.label_col,
        "image_size": loaded.image_size,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "options": dataclasses.asdict(cfg),
        "seed": cfg.seed,
        "device": str(device),
        "world_size": world,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": [dataclasses.asdict(h) for h in evidence.history],
        "text_evidence": evidence.text_source,
        "prompts": dict(evidence.prompt_run),  # outcome, reason, epochs, adaptation (+ what the judgement measured)
        "timings": evidence.clock.table(),  # seconds per stage: decode, forward, training, selection, health
        "selection": {"rule": cfg.selection, **{k: v for k, v in decision.info.items() if k != "evidence"}},
        "evidence": decision.info.get("evidence"),
        "warnings": warnings,
    }


def gather_evidence(
    cfg: DetectConfig,
    loaded: Any,
    listing: Listing,
    passes: PassOptions,
    control: TrainControl,
) -> Evidence:
    """The frozen feature pass (zero-shot evidence), then, unless quick, DeFT's prompt training and scoring.

    Learned prompts that diverge, give NaN scores, collapse during training, or in the end help the fused rule
    less than the zero-shot prompts would (:func:`deft_clean.detecting.selection.judge_prompts`: both judged on
    a cross-fitted image probe's classes) are dropped with a line in the metadata's ``prompts`` entry, and a
    warning for the failures; zero-shot evidence is used instead. Where the zero-shot prompts know nothing of
    the class names (:mod:`deft_clean.detecting.opaque_names`), the learned prompts are judged against the rows
    the image evidence alone confirms instead.
    """
    import torch

    from ..models.clip import zero_shot_text
    from ..models.towers import token_tower
    from .opaque_names import collapse_anchor, judge_text_view
    from .passes import Evidence, Kept, StageClock, image_features, reading_wanted
    from .selection import MIN_PROMPT_AGREEMENT, collapse_advice, judge_prompts, prompt_agreement

    clock = StageClock()
    # --quick makes no later pass over the images: their thumbnails and hashes are kept, not their pixels
    kept = Kept.for_listing(len(listing), passes.image_size, pixels=not cfg.quick) if reading_wanted(passes) else None
    features, failures = image_features(loaded.model, listing, passes, clock=clock, keep=kept)
    if kept is not None and kept.memory is not None:  # later passes read the pixels this one decoded
        passes = dataclasses.replace(passes, cache=kept.memory)
    text = zero_shot_text(loaded, listing.prompt_names)  # [K, E]
    scale = float(loaded.model.logit_scale.detach().exp())
    logits = scale * torch.from_numpy(np.nan_to_num(features)).to(text.device) @ text.t()  # [N, K]
    evidence = Evidence(features, logits.softmax(dim=1).cpu().numpy(), text.cpu().numpy(), failures, kept, clock=clock)
    evidence.prompt_run = {
        "outcome": "quick",
        "reason": "--quick: zero-shot prompts, no prompt training",
        "epochs": 0,
        "adaptation": "none",
    }
    judge_text_view(evidence, listing.label_indices, len(listing.classes))
    if cfg.quick:
        return evidence
    usable = evidence.usable
    labels = listing.label_indices
    # what the learned prompts are judged against, every epoch and at the end: the image probe's classes, or the
    # image seed's labels where the text view is uninformative
    with clock.timing("selection"):
        anchor = collapse_anchor(evidence, labels, len(listing.classes), seed=cfg.seed, device=passes.device)
    zero_shot = evidence.zero_shot.argmax(axis=1) if evidence.text_informative else None
    control = monitored(control, cfg, listing, evidence, anchor, zero_shot)
    tower = token_tower(loaded.model) if cfg.vpt_tokens > 0 else None  # read before the prompts go in
    advice = collapse_advice(tower.patches if tower is not None else None, cfg.vpt_tokens)
    scores = learned_scores(cfg, loaded, listing, passes, evidence, control, advice=advice)
    run = evidence.prompt_run
    run["epochs"] = len(evidence.history)
    if scores is None:
        return _fallback(evidence, run.get("reason") or "the learned prompts were dropped")
    if np.isnan(scores.p_clean[usable]).any():
        line = "the learned prompts gave NaN scores; zero-shot prompts used instead (lower lr)"
        evidence.warnings.append(line)
        return _fallback(evidence, line)
    if evidence.text_informative:
        verdict = judge_prompts(scores, evidence.zero_shot, anchor, labels, usable, cfg.clean_rule, advice)
        run.update(verdict.numbers)
        if verdict.collapsed:
            evidence.warnings.append(verdict.reason)
            return _fallback(evidence, verdict.reason)
        # not a failure: the zero-shot prompts are simply the better evidence for the fused rule here (the
        # paper's rule, --selection deft, needs the learned prompts: only a collapse drops them there)
        if not verdict.keep and cfg.selection != "deft":
            return _fallback(evidence, f"zero-shot prompts used: {verdict.reason}")
    else:
        agreement = prompt_agreement(scores.predicted_index, anchor, labels, usable)
        if agreement < MIN_PROMPT_AGREEMENT:  # names CLIP cannot read give the prompts nothing to start from
            line = (
                f"the learned prompts are weak (they agree with only {100 * agreement:.0f}% of the labels that the "
                f"image evidence confirms); zero-shot prompts used instead ({advice})"
            )
            evidence.warnings.append(line)
            return _fallback(evidence, line)
    evidence.scores = scores
    evidence.text_source = "learned prompts"
    run.update(outcome="learned", reason="")
    return evidence


def _fallback(evidence: Evidence, reason: str) -> Evidence:
    """``evidence`` with the zero-shot prompts' evidence and why the learned prompts' was not used."""
    evidence.prompt_run.update(outcome="fallback", reason=reason)
    return evidence


def monitored(
    control: Any,
    cfg: DetectConfig,
    listing: Listing,
    evidence: Evidence,
    anchor: np.ndarray,
    zero_shot: np.ndarray | None = None,
) -> Any:
    """``control`` with the epoch budget and the per-epoch judge (:mod:`deft_clean.detecting.early_stop`), which
    judges the prompts on ``anchor`` (int [N], -1 none): the image probe's classes, with the collapse floor from
    ``zero_shot``'s agreement with them, or the image seed's labels where the text view is uninformative (zero-shot
    on codes confirms random rows: every prompt would look collapsed)."""
    from .early_stop import TrainingMonitor, epoch_budget

    labels = listing.label_indices
    monitor = TrainingMonitor(
        labels,
        evidence.usable,
        anchor,
        zero_shot,
        warmup_epochs=cfg.warmup_epochs,
        early_stop=cfg.early_stop,
        seed=cfg.seed,
        epochs=cfg.epochs,
        # the paper's rule (--selection deft) needs the learned prompts whatever zero-shot gives
        behind_stop=cfg.selection != "deft",
    )
    budget = epoch_budget(cfg.images_per_epoch, labels, len(listing.classes))
    return dataclasses.replace(control, monitor=monitor, budget=budget)


def learned_scores(
    cfg: DetectConfig,
    loaded: Any,
    listing: Listing,
    passes: PassOptions,
    evidence: Evidence,
    control: Any,
    *,
    advice: str,
) -> Any:
    """Train DeFT's prompts and score every sample with them (a ``passes.Scores``); None, with a warning
    in ``evidence`` and the reason in ``evidence.prompt_run``, when the training diverged or collapsed (the
    warning ends with ``advice``, :func:`deft_clean.detecting.selection.collapse_advice`)."""
    from ..models.deft import DeftModel
    from ..run.engine import TrainingDiverged, seed_everything
    from .passes import score_samples
    from .prompt_training import train_prompts

    # Seeded here, after the cache fill and the feature pass (their loaders draw from the global RNG), so
    # that prompt init and augmentation are the same with and without a cache.
    generator = seed_everything(cfg.seed)
    model = DeftModel.from_config(loaded, listing.prompt_names, cfg).to(passes.device)
    evidence.prompt_run["adaptation"] = str(getattr(model, "adaptation", ""))
    try:
        with evidence.clock.timing("training"):
            evidence.history = train_prompts(model, listing, cfg, passes, generator=generator, control=control)
    except TrainingDiverged as exc:
        line = f"{exc}; the learned prompts were dropped and zero-shot prompts used (lower lr)"
        evidence.warnings.append(line)
        evidence.prompt_run["reason"] = line
        return None
    last = evidence.history[-1] if evidence.history else None
    if last is not None and last.stop == "collapse":
        from .early_stop import agreement_line

        floor = control.monitor.floor if control.monitor is not None else None
        line = agreement_line(last.epoch, last.agreement or 0.0, evidence.text_informative, floor, advice)
        evidence.warnings.append(line)
        evidence.prompt_run["reason"] = line
        return None  # no scoring pass for prompts that are dropped anyway
    monitor = control.monitor
    # Zero-shot would win the end-of-run judgement, asked on the watched rows: trailing far behind ("behind"), or
    # trailing when nothing moves any more ("still": training would not change it, measured on the 100k cost
    # data, where the scoring pass that the judgement then rejected cost 25 s of an 84 s run). Not a failure.
    trailing = last is not None and monitor is not None and monitor.counts is not None and monitor.behind
    if trailing and (last.stop == "behind" or (last.stop == "still" and not monitor.counts.learned_win())):
        numbers = {k: v for k, v in monitor.behind.items() if k != "behind"}
        evidence.prompt_run.update(numbers)
        watched = f"{numbers['watched_rows']} watched rows"
        how = "training stopped there" if last.stop == "behind" else "nothing moved any more"
        evidence.prompt_run["reason"] = (
            f"zero-shot prompts used: after epoch {last.epoch} the learned prompts {monitor.counts.line(watched)}; "
            f"{how} (--no-early-stop trains on)"
        )
        return None  # no scoring pass: the end-of-run judgement would choose zero-shot
    return score_samples(model, listing, passes, clock=evidence.clock)


def results_frame(listing: Listing, evidence: Evidence, decision: Decision) -> pd.DataFrame:
    """Assemble the per-sample DataFrame of the Parquet contract from the listing and the decision."""
    usable = evidence.usable
    classes = np.array(listing.classes, dtype=object)
    suggested = np.where(usable, decision.suggested, -1)
    scores = evidence.scores
    n = len(listing)
    nan = np.full(n, np.nan, dtype=np.float32)

    def floats(values: np.ndarray) -> pd.arrays.FloatingArray:
        return pd.array(np.where(usable, values, np.nan), dtype="Float32")

    frame = pd.DataFrame(
        {
            "path": listing.paths,
            "label": listing.labels,
            "label_index": listing.label_indices,
            "p_clean": floats(decision.p_clean),
            "is_clean": decision.is_clean & usable,
            "predicted_label": np.where(usable, classes[np.clip(suggested, 0, None)], None),
            "predicted_index": suggested,
            "p_predicted": floats(decision.p_suggested),
            "sim_pos": floats(scores.sim_pos if scores is not None else nan),
            "sim_neg": floats(scores.sim_neg if scores is not None else nan),
            "text_score": floats(decision.text_score),
            "visual_score": floats(decision.visual_score),
            "flag_reason": decision.reason,
            "withheld": (decision.withheld if decision.withheld is not None else np.zeros(n, dtype=bool)) & usable,
            "status": [evidence.failures.get(i, STATUS_OK) for i in range(n)],
        }
    )
    # Nullable Float32 turns NaN into <NA> only via the mask; do it explicitly for unusable rows.
    for column in ("p_clean", "p_predicted", "sim_pos", "sim_neg", "text_score", "visual_score"):
        frame.loc[~usable, column] = pd.NA
    return frame
