"""``predict``: run an exported model over a folder, a table, image files, a Hugging Face dataset or shards.

Inputs are listed by the shared readers (:func:`deft_clean.inputs.readers.read_inputs`), with labels optional.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..inputs.dataset import ImageDataset
from ..inputs.listing import DatasetSpec
from ..inputs.readers import read_inputs
from ..run.errors import STATUS_OK
from ..run.files import run_lock, write_atomic
from ..run.options import ReadOptions
from ..run.safety import Output, check_outputs


@dataclass
class PredictResult:
    frame: pd.DataFrame  # path, predicted_label, p_predicted, top_labels, top_probs, status [, label, correct]
    accuracy: float | None  # over usable rows whose label is a model class; None without labels
    per_class: pd.DataFrame | None  # class, samples, accuracy


@torch.no_grad()
def predict(
    model_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]] | Any,
    *,
    out: str | os.PathLike[str] | None = None,
    top_k: int = 5,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int | None = None,
    path_col: str = "path",
    label_col: str = "label",
    quiet: bool = False,
    overwrite: bool = False,
    split: str | None = None,
    label_key: str = "cls",
) -> PredictResult:
    """Predict classes with a model exported by ``train``; optionally write a Parquet.

    ``inputs``: one folder, one table, image files, a Hugging Face dataset (``split`` of a DatasetDict) or
    WebDataset shards (``label_key``). When the input carries labels (class folders, a label column or
    member) the result has accuracy overall and per class. ``out`` may not be an input, lie inside an
    input folder, or (without ``overwrite``) exist.
    """
    from ..models.clip import resolve_device
    from ..run.engine import resolve_workers

    _check_numbers(top_k=top_k, batch_size=batch_size, num_workers=num_workers)
    torch_device = resolve_device(device)
    rows = read_inputs(inputs, ReadOptions(path_col=path_col, label_col=label_col, split=split, label_key=label_key))
    if out is not None:
        _check_out(out, model_dir, inputs, rows, overwrite=overwrite)
    with run_lock(out):  # a second predict to the same file fails at once
        return _predict(
            model_dir,
            rows,
            out=out,
            top_k=top_k,
            batch_size=batch_size,
            device=torch_device,
            num_workers=resolve_workers(num_workers),
            quiet=quiet,
        )


def _check_numbers(*, top_k: int, batch_size: int, num_workers: int | None) -> None:
    """Refuse ``top_k``/``batch_size`` below 1 (or absurd) and a negative worker count, before any work."""
    from ..run.options import MAX_BATCH, check_counts, check_workers

    check_counts(top_k=(top_k, 1_000_000), batch_size=(batch_size, MAX_BATCH))
    check_workers(num_workers)


def _predict(
    model_dir: Any,
    rows: Any,
    *,
    out: Any,
    top_k: int,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    quiet: bool,
) -> PredictResult:
    """:func:`predict` once the inputs are listed and the output checked and locked."""
    from ..models.classifier import load_model
    from ..run.progress import RichProgress

    torch_device = device
    root, files, labels = rows.root, rows.paths, rows.labels
    loaded = load_model(model_dir, device=torch_device)
    size = int(loaded.config["image_size"])
    dataset = ImageDataset(
        root, files, np.zeros(len(files), dtype=np.int64), loaded.transform, image_size=size, images=rows.images
    )
    with RichProgress(quiet=quiet) as progress:
        top_i, top_p, status = _top_k(
            loaded.module,
            dataset,
            k=min(top_k, len(loaded.classes)),
            batch_size=batch_size,
            num_workers=num_workers,
            device=torch_device,
            progress=progress,
        )
    names = np.array(loaded.classes, dtype=object)
    ok = np.array([s == STATUS_OK for s in status])
    frame = pd.DataFrame(
        {
            "path": files,
            "predicted_label": [names[row[0]] if good else None for row, good in zip(top_i, ok, strict=True)],
            "p_predicted": [float(row[0]) if good else None for row, good in zip(top_p, ok, strict=True)],
            "top_labels": [list(names[row]) if good else [] for row, good in zip(top_i, ok, strict=True)],
            "top_probs": [row.tolist() if good else [] for row, good in zip(top_p, ok, strict=True)],
            "status": status,
        }
    )
    accuracy, per_class = _accuracy(frame, ok, labels, loaded.classes)
    if out is not None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = {b"deft_clean_predict": str(Path(model_dir).resolve()).encode()}
        write_atomic(out, lambda tmp: pq.write_table(table.replace_schema_metadata(metadata), tmp))
    return PredictResult(frame, accuracy, per_class)


def _top_k(
    module: torch.nn.Module,
    dataset: ImageDataset,
    *,
    k: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: Any,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``k`` most probable classes of every image: indices int64 [N, k] (-1 for unusable files),
    probabilities float32 [N, k] (NaN) and the status of every file."""
    from ..run.engine import amp_for, make_loader

    loader = make_loader(
        dataset, batch_size=batch_size, sampler=None, generator=None, num_workers=num_workers, device=device
    )
    top_i = np.full((len(dataset), k), -1, dtype=np.int64)
    top_p = np.full((len(dataset), k), np.nan, dtype=np.float32)
    status = [STATUS_OK] * len(dataset)
    autocast = amp_for(device).autocast
    progress.start_scoring(len(dataset))
    for images, _, indices, batch_status in loader:
        idx = indices.numpy()
        for i, s in zip(idx, batch_status, strict=True):
            status[i] = s
        usable = np.array([s == STATUS_OK for s in batch_status])
        if usable.any():
            with autocast():
                logits = module(images[torch.from_numpy(usable)].to(device))
            probs, classes = logits.float().softmax(dim=1).topk(k, dim=1)
            top_i[idx[usable]] = classes.cpu().numpy()
            top_p[idx[usable]] = probs.cpu().numpy()
        progress.advance(len(batch_status))
    return top_i, top_p, status


def _accuracy(
    frame: pd.DataFrame, ok: np.ndarray, labels: list[str] | None, classes: list[str]
) -> tuple[float | None, pd.DataFrame | None]:
    """Accuracy overall and per class when the inputs carry labels (adds ``label``/``correct`` to ``frame``)."""
    accuracy = per_class = None
    if labels is not None:
        frame["label"] = labels
        frame["correct"] = ok & (frame["predicted_label"] == frame["label"]).to_numpy()
        scored = frame[ok & frame["label"].isin(classes).to_numpy()]
        if len(scored):
            accuracy = float(scored["correct"].mean())
            per_class = (
                scored.groupby("label")["correct"]
                .agg(samples="size", accuracy="mean")
                .reset_index()
                .rename(columns={"label": "class"})
            )
    return accuracy, per_class


def _check_out(out: str | os.PathLike[str], model_dir: Any, inputs: Any, rows: Any, *, overwrite: bool) -> None:
    """``out`` may not be an input or a listed file, nor lie inside an input folder or dataset."""
    named = [p for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs) if _is_path(p)]
    folders = [p for p in named if Path(p).is_dir()]
    spec = DatasetSpec(rows.kind, rows.location, rows.reader)
    if spec.packed:
        folders.append(rows.root)
    listed = [rows.root / f for f in rows.paths] if spec.listed_files else []
    output = Output(out, overwrite=overwrite, kind="predictions")
    check_outputs([output], inputs=[model_dir, *named, *listed], datasets=folders)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))
