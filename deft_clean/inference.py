"""``predict``: run an exported model over a folder, a table or image files."""

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

from .data import IMAGE_EXTENSIONS, STATUS_OK, TABLE_EXTENSIONS, ImageDataset, check_unique, read_table
from .errors import DataError, UsageError
from .files import write_atomic
from .safety import check_name, check_output, is_inside, printable, real


@dataclass
class PredictResult:
    frame: pd.DataFrame  # path, predicted_label, p_predicted, top_labels, top_probs, status [, label, correct]
    accuracy: float | None  # over usable rows whose label is a model class; None without labels
    per_class: pd.DataFrame | None  # class, samples, accuracy


def _list_inputs(
    inputs: Sequence[str | os.PathLike[str]], *, path_col: str, label_col: str
) -> tuple[Path, list[str], list[str] | None]:
    """(root, relative paths, labels or None) for a folder, a table or image files."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("no input given")
    for p in paths:
        if not p.exists():
            raise UsageError(f"input not found: {p}")
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0]
        files = sorted(
            f.relative_to(root).as_posix()
            for f in root.rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        for name in files:
            check_name(name, root)
        if not files:
            raise DataError(f"{root}: no images found")
        labelled = all("/" in f for f in files)
        return root, files, [f.split("/", 1)[0] for f in files] if labelled else None
    if len(paths) == 1 and paths[0].suffix.lower() in TABLE_EXTENSIONS:
        frame = read_table(paths[0])
        if path_col not in frame.columns:
            raise DataError(f"{paths[0]}: no {path_col!r} column; columns are {list(frame.columns)}")
        root = paths[0].parent
        resolved_root = real(root)
        files = []
        for row, value in enumerate(frame[path_col]):
            text = "" if pd.isna(value) else str(value).strip()
            resolved = real(root / text)
            if not text or not is_inside(resolved, resolved_root):
                raise DataError(
                    f"{paths[0]}: row {row + 2} path {printable(text)!r} is empty or resolves outside {root} "
                    "(paths are relative to the table's folder)"
                )
            files.append(resolved.relative_to(resolved_root).as_posix() if os.path.isabs(text) else text)
        check_unique([str(real(root / f)) for f in files], paths[0], shown=files)
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise DataError(f"{paths[0]}: {len(missing)} listed file(s) do not exist, e.g. {missing[:3]}")
        labels = [str(v) for v in frame[label_col]] if label_col in frame.columns else None
        return root, files, labels
    not_images = [p for p in paths if p.is_dir() or p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not_images:
        raise UsageError(f"expected one folder, one table, or image files; got {not_images[0]}")
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return root, [p.resolve().relative_to(root).as_posix() for p in paths], None


@torch.no_grad()
def predict(
    model_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
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
) -> PredictResult:
    """Predict classes with a model exported by ``train``; optionally write a Parquet.

    When the input carries labels (class folders or a label column) the result has accuracy overall
    and per class. ``out`` may not be an input, lie inside an input folder, or (without ``overwrite``) exist.
    """
    from .backbone import resolve_device
    from .classifiers import load_model
    from .engine import resolve_workers
    from .progress import RichProgress

    torch_device = resolve_device(device)
    root, files, labels = _list_inputs(inputs, path_col=path_col, label_col=label_col)
    if out is not None:
        folders = [p for p in inputs if Path(p).is_dir()]
        listed = [root / f for f in files] if len(inputs) == 1 and not folders else []
        check_output(out, inputs=[model_dir, *inputs, *listed], datasets=folders, overwrite=overwrite)
    loaded = load_model(model_dir, device=torch_device)
    size = int(loaded.config["image_size"])
    dataset = ImageDataset(root, files, np.zeros(len(files), dtype=np.int64), loaded.transform, image_size=size)
    with RichProgress(quiet=quiet) as progress:
        top_i, top_p, status = _top_k(
            loaded.module, dataset, k=min(top_k, len(loaded.classes)), batch_size=batch_size,
            num_workers=resolve_workers(num_workers), device=torch_device, progress=progress,
        )  # fmt: skip
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
    module: torch.nn.Module, dataset: ImageDataset, *, k: int, batch_size: int, num_workers: int,
    device: torch.device, progress: Any,
) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """The ``k`` most probable classes of every image: indices int64 [N, k] (-1 for unusable files),
    probabilities float32 [N, k] (NaN) and the status of every file."""
    from .engine import amp_for, make_loader

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
