"""Which rows phase 2 trains and validates on: the detect results' verdicts (or a threshold), confident
relabels, human decisions, and a stratified hold-out (or a separate validation set)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..inputs.listing import Listing, list_dataset, relist
from ..outputs.results import kept_rows, load_results, relabelled_rows, usable_rows
from ..outputs.review_decisions import Verdicts, load_verdicts
from ..run.errors import DataError, option
from ..run.options import TrainConfig
from ..run.safety import printable
from .linear_probe import stratified_holdout


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
    labels = frame["label_index"].to_numpy().astype(np.int64)
    if not clean_only:
        keep = usable_rows(frame)
        relabelled = np.zeros_like(keep)
    else:
        clean = kept_rows(frame, threshold)
        relabelled = relabelled_rows(frame, usable_rows(frame) & ~clean, relabel)
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
    given = frame["label"].astype(str).to_numpy()
    changed = np.flatnonzero(given != np.asarray(listing.labels, dtype=object))
    if len(changed):  # labels fixed in the table after detect: its verdicts judged the old ones
        i = int(changed[0])
        raise DataError(
            f"{len(changed)} row(s) of the dataset have other labels than {results} judged, e.g. "
            f"{printable(listing.paths[i])!r}: {printable(listing.labels[i])!r} now, {printable(given[i])!r} "
            f"then; rerun detect on the dataset as it is, or record fixes in {option('decisions')} "
            "(path,decision,label)"
        )


@dataclass
class RowPlan:
    """Which rows phase 2 trains and validates on, with their (possibly relabelled) label indices."""

    listing: Listing
    metadata: dict[str, Any]  # the detect results' metadata
    rows: np.ndarray  # int64 [n_train] listing positions trained on
    labels: np.ndarray  # int64 [n_train]
    held_rows: np.ndarray  # int64 [n_held] kept rows held out for validation
    held_labels: np.ndarray  # int64 [n_held]
    n_relabelled: int
    val_listing: Listing | None  # the --val dataset, labels remapped to the training classes
    val_source: str | None  # "--val", "held-out" or None


def plan_rows(
    dataset: Any,
    results: Path,
    cfg: TrainConfig,
    val: str | os.PathLike[str] | None,
    decisions: str | os.PathLike[str] | None,
) -> RowPlan:
    """Read the results, choose the rows to train on, and hold out validation rows (or read ``val``)."""
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
        raise DataError(f"no rows left to train on (every row is flagged or unusable); lower {option('threshold')}")
    val_listing = None if val is None else val_listing_for(val, listing.classes)
    # Without --val, a stratified part of the kept rows (as labelled there) chooses the epoch.
    held = stratified_holdout(labels, fraction=cfg.holdout, seed=cfg.seed) if val_listing is None else held_none()
    val_source = "--val" if val_listing is not None else "held-out" if len(held) else None
    train_mask = np.ones(len(rows), dtype=bool)
    train_mask[held] = False
    return RowPlan(
        listing,
        metadata,
        rows[train_mask],
        labels[train_mask],
        rows[held],
        labels[held],
        n_relabelled,
        val_listing,
        val_source,
    )


def val_listing_for(val: str | os.PathLike[str], classes: list[str]) -> Listing:
    """The validation dataset with label indices of the training ``classes``."""
    val_listing = list_dataset(val)
    unknown = sorted(set(val_listing.classes) - set(classes))
    if unknown:
        raise DataError(f"{option('val')} has classes the training set lacks: {unknown[:5]}")
    remap = {c: i for i, c in enumerate(classes)}
    return dataclasses.replace(
        val_listing, label_indices=np.array([remap[x] for x in val_listing.labels], dtype=np.int64)
    )


def labels_for(listing: Listing, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Full-length label array with the (possibly relabelled) training labels filled in."""
    full = listing.label_indices.copy()
    full[rows] = labels
    return full


def held_none() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)
