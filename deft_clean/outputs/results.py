"""The Parquet contract between phases: schema, atomic write, read.

One row per listed sample, in listing order. All deft-clean metadata sits under one Parquet key-value
entry, ``deft_clean``, as a JSON object (version, model, pretrained, classes, options, seed, created).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..run.errors import STATUS_OK, DataError, UsageError
from ..run.files import write_atomic
from ..run.safety import printable, short
from .metadata_check import check_metadata

__all__ = [
    "SCHEMA",
    "flagged_rows",
    "kept_rows",
    "load_results",
    "relabelled_rows",
    "usable_rows",
    "write_results",
]

METADATA_KEY = b"deft_clean"


class Results(Protocol):
    """A detect result held in memory (``deft_clean.DetectResult``): what the outputs read of it."""

    frame: pd.DataFrame  # one row per listed sample, the SCHEMA's columns
    metadata: dict[str, Any]  # what the Parquet's deft_clean entry holds


SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # as listed, relative to the dataset root
        pa.field("label", pa.string(), nullable=False),  # given (possibly wrong) label
        pa.field("label_index", pa.int64(), nullable=False),  # index of label in the class list
        pa.field("p_clean", pa.float32()),  # P(given label is right); null for an unusable file
        pa.field("is_clean", pa.bool_(), nullable=False),  # selected as clean by the clean rule
        pa.field("predicted_label", pa.string()),  # the class the evidence points to; null if unusable
        pa.field("predicted_index", pa.int64(), nullable=False),  # its index; -1 if unusable
        pa.field("p_predicted", pa.float32()),  # probability of predicted_label (visual, or prompts for deft)
        pa.field("sim_pos", pa.float32()),  # cosine(image, positive prompt of the given label); null if quick
        pa.field("sim_neg", pa.float32()),  # cosine(image, negative prompt of the given label); null if quick
        pa.field("text_score", pa.float32()),  # text posterior of the given label (learned or zero-shot prompts)
        pa.field("visual_score", pa.float32()),  # cross-fitted image-evidence probability of the label (fused)
        pa.field("flag_reason", pa.string()),  # why the row is flagged (or its flag withheld); null otherwise
        pa.field("withheld", pa.bool_()),  # flagged by the selection, kept because the evidence cannot support it
        pa.field("duplicate_group", pa.int64()),  # rows sharing it are exact or near duplicates; null = unique
        pa.field("duplicate_kind", pa.string()),  # "exact" (same bytes as another row of the group), "near"; null
        pa.field("duplicate_similarity", pa.float32()),  # pixel similarity to the group's first row; null = unique
        pa.field("outlier_score", pa.float32()),  # robust z-score of the distance to neighbours; null if unusable
        pa.field("is_outlier", pa.bool_()),  # outlier_score above health.OUTLIER_Z
        pa.field("status", pa.string(), nullable=False),  # "ok" or why the file could not be used
    ]
)
REQUIRED_COLUMNS = tuple(SCHEMA.names)
# Added in 0.2 (fused selection): a file without them (an older version's, or hand-made) reads as null.
OPTIONAL_COLUMNS = (
    "text_score",
    "visual_score",
    "flag_reason",
    "withheld",
    "duplicate_group",
    "outlier_score",
    "is_outlier",
    "duplicate_kind",
    "duplicate_similarity",  # added in issue 27 (pixel-confirmed duplicates)
)
DUPLICATE_KINDS = ("exact", "near")


# Probabilities are clipped to [0, 1] and cosines to [-1, 1] when written: float32 rounding can give 1.0000001,
# which the read-back would rightly refuse as out of range.
PROBABILITY_COLUMNS = ("p_clean", "p_predicted", "text_score", "visual_score")
COSINE_COLUMNS = ("sim_pos", "sim_neg", "duplicate_similarity")


def to_table(frame: pd.DataFrame, metadata: dict[str, Any]) -> pa.Table:
    """A DataFrame with the contract's columns -> an Arrow table with schema and metadata."""
    missing = [c for c in OPTIONAL_COLUMNS if c not in frame.columns]
    if missing:
        frame = frame.assign(**{c: None for c in missing})
    frame = _clipped(frame)
    table = pa.Table.from_pandas(frame[list(REQUIRED_COLUMNS)], schema=SCHEMA, preserve_index=False)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def _clipped(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with probabilities in [0, 1] and cosines in [-1, 1] (nulls and NaN stay as they are)."""
    bounds = {**{c: (0.0, 1.0) for c in PROBABILITY_COLUMNS}, **{c: (-1.0, 1.0) for c in COSINE_COLUMNS}}
    present = {c: b for c, b in bounds.items() if c in frame.columns and pd.api.types.is_numeric_dtype(frame[c])}
    if not present:
        return frame
    return frame.assign(**{c: frame[c].clip(low, high) for c, (low, high) in present.items()})


def write_results(frame: pd.DataFrame, metadata: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write results atomically as Parquet."""
    table = to_table(frame, metadata)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def load_results(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a detect Parquet: returns ``(frame, metadata)``.

    Raises DataError when the file is not a deft-clean results file.
    """
    file = Path(path)
    try:
        info = os.stat(file)
    except (OSError, ValueError) as exc:  # missing, a NUL byte, a name too long, a link loop
        reason = "not found" if isinstance(exc, FileNotFoundError) else "cannot be opened"
        raise UsageError(f"results file {reason}: {short(file)}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or /dev/zero would block or never end
        raise DataError(f"{short(file)} is not a regular file (a folder, a FIFO or a device); pass a results Parquet")
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises several types for non-Parquet input
        raise DataError(f"{file}: not a readable Parquet file ({type(exc).__name__})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    table = table.select(list(REQUIRED_COLUMNS)) if set(REQUIRED_COLUMNS) <= set(table.column_names) else table
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if raw is None or missing:
        raise DataError(f"{file}: not a deft-clean results file (missing {missing or 'metadata'})")
    try:
        metadata = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise DataError(f"{file}: the deft_clean metadata is not valid JSON; rerun detect") from None
    check_table(table, metadata, file)
    return frame_from_table(table), metadata


def _kind(data_type: pa.DataType) -> str:
    if pa.types.is_boolean(data_type):
        return "bool"
    if pa.types.is_integer(data_type):
        return "int"
    if pa.types.is_floating(data_type):
        return "float"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    return str(data_type)


def check_table(table: pa.Table, metadata: Any, file: Path) -> None:
    """Refuse a results table whose columns have the wrong types, nulls, or out-of-range indices.

    A column of strings where booleans belong would otherwise be truthy everywhere (every row clean).
    """
    import pyarrow.compute as pc

    if not isinstance(metadata, dict):
        raise DataError(f"{file}: the deft_clean metadata is not a JSON object; rerun detect")
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{file}: metadata 'classes' must be a non-empty list of strings; rerun detect")
    for spec in SCHEMA:
        column = table.column(spec.name)
        want, got = _kind(spec.type), _kind(column.type)
        if want != got:
            raise DataError(f"{file}: column {spec.name!r} holds {column.type}, expected {want}; rerun detect")
        if not spec.nullable and column.null_count:
            raise DataError(f"{file}: column {spec.name!r} has {column.null_count} null value(s); rerun detect")
    _check_scores(table, file)
    for name, low in (("label_index", 0), ("predicted_index", -1)):
        column = table.column(name)
        if len(column) and (pc.min(column).as_py() < low or pc.max(column).as_py() >= len(classes)):
            raise DataError(
                f"{file}: column {name!r} has values outside {low}..{len(classes) - 1} "
                f"({len(classes)} classes); rerun detect"
            )
    _check_labels(table, classes, file)
    check_metadata(metadata, file)


def _check_labels(table: pa.Table, classes: list[str], file: Path) -> None:
    """Refuse a label text that disagrees with its index (export follows one, train the other), and a usable
    row without a score (every report sorts and every export chooses by it)."""
    import pyarrow.compute as pc

    names = pa.array(classes, pa.string())
    for text, index in (("label", "label_index"), ("predicted_label", "predicted_index")):
        indices = table.column(index)
        known = pc.greater_equal(indices, 0)
        expected = pc.take(names, pc.if_else(known, indices, 0))
        given = table.column(text)
        same = pc.if_else(known, pc.equal(given, expected), pc.is_null(given))
        bad = pc.invert(pc.fill_null(same, False))
        count = pc.sum(bad).as_py() or 0
        if count:
            row = pc.index(bad, True).as_py()
            raise DataError(
                f"{file}: row {row} ({printable(str(table.column('path')[row]))!r}) has {text} "
                f"{printable(str(given[row]))!r} but {index} {indices[row]} ({count} row(s) disagree); rerun detect"
            )
    usable = pc.equal(table.column("status"), STATUS_OK)
    unscored = pc.sum(pc.and_(usable, pc.is_null(table.column("p_clean")))).as_py() or 0
    if unscored:
        raise DataError(f"{file}: {unscored} usable row(s) have no p_clean; rerun detect")


def _check_scores(table: pa.Table, file: Path) -> None:
    """Refuse NaN or out-of-range probabilities and a path listed twice (export would write one file twice)."""
    import pyarrow.compute as pc

    ranges = {c: (0, 1) for c in PROBABILITY_COLUMNS}
    ranges.update({c: (-1, 1) for c in COSINE_COLUMNS if c != "duplicate_similarity"})  # that one: below
    ranges["outlier_score"] = (-math.inf, math.inf)  # any finite distance
    for name, (low, high) in ranges.items():
        if name not in table.column_names or not pa.types.is_floating(table.column(name).type):
            continue
        column = table.column(name)
        outside = pc.or_(pc.less(column, low), pc.greater(column, high))
        bad = pc.sum(pc.or_(pc.or_(pc.is_nan(column), pc.is_inf(column)), outside)).as_py() or 0
        if bad:
            span = "NaN or infinite" if math.isinf(high) else f"NaN or outside {low:g}..{high:g}"
            raise DataError(f"{file}: column {name!r} has {bad} value(s) that are {span}; rerun detect")
    _check_duplicates(table, file)
    paths = table.column("path")
    if pc.count_distinct(paths).as_py() != len(paths) - paths.null_count:
        counts = pc.value_counts(paths)
        twice = next(str(c["values"]) for c in counts.to_pylist() if c["counts"] > 1)
        raise DataError(f"{file}: path {printable(twice)!r} appears in more than one row; rerun detect")


def _check_duplicates(table: pa.Table, file: Path) -> None:
    """Refuse a duplicate_kind other than exact/near/null, or a duplicate_similarity NaN or outside -1..1."""
    import pyarrow.compute as pc

    kinds = table.column("duplicate_kind")
    odd = pc.sum(pc.invert(pc.is_in(kinds.drop_null(), pa.array(DUPLICATE_KINDS)))).as_py() or 0
    if odd:
        raise DataError(f"{file}: column 'duplicate_kind' has {odd} value(s) other than exact or near; rerun detect")
    column = table.column("duplicate_similarity")
    bad = pc.sum(pc.or_(pc.is_nan(column), pc.or_(pc.less(column, -1), pc.greater(column, 1)))).as_py() or 0
    if bad:
        raise DataError(
            f"{file}: column 'duplicate_similarity' has {bad} value(s) that are NaN or outside -1..1; rerun detect"
        )


def frame_from_table(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable floats, so that a missing score stays <NA> rather than NaN."""
    return table.to_pandas(types_mapper={pa.float32(): pd.Float32Dtype()}.get)


def normalize_frame(frame: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """The frame exactly as :func:`load_results` would return it after a write."""
    return frame_from_table(to_table(frame, metadata))


# Which rows of a results table are usable, flagged, kept or relabelled: the one definition of each.


def usable_rows(frame: pd.DataFrame) -> np.ndarray:
    """bool [N]: rows of a results table whose file could be read."""
    return (frame["status"] == STATUS_OK).to_numpy()


def flagged_rows(frame: pd.DataFrame) -> np.ndarray:
    """bool [N]: usable rows that are not ``is_clean`` (what reports and review call flagged)."""
    return usable_rows(frame) & ~frame["is_clean"].to_numpy(dtype=bool)


def kept_rows(frame: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """bool [N]: usable rows that detect kept, or, with ``threshold``, those with ``p_clean > threshold``."""
    if threshold is None:
        clean = frame["is_clean"].to_numpy(dtype=bool)
    else:
        clean = frame["p_clean"].to_numpy(dtype=float, na_value=np.nan) > threshold
    return clean & usable_rows(frame)


def relabelled_rows(frame: pd.DataFrame, flagged: np.ndarray, min_p: float | None) -> np.ndarray:
    """bool [N]: ``flagged`` rows whose suggested class is confident (``p_predicted >= min_p``); none when
    ``min_p`` is None. Their new label is ``predicted_index`` / ``predicted_label``."""
    if min_p is None:
        return np.zeros(len(frame), dtype=bool)
    p_predicted = frame["p_predicted"].to_numpy(dtype=float, na_value=np.nan)
    return flagged & frame["predicted_label"].notna().to_numpy() & (p_predicted >= min_p)
