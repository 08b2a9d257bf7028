"""``export_dataset()``: write the cleaned dataset that a results Parquet describes.

Three shapes: an image folder of symlinks (default) or copies, ``OUT/<label>/<file>``, or one CSV/Parquet
table of the kept rows. The source dataset is only ever read. Unusable rows are never exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..inputs.listing import DatasetSpec
from ..inputs.readers.recorded import checked_root
from ..run.atomic import apply_umask, raise_if_disk_full
from ..run.errors import DataError, UsageError, option
from ..run.files import make_staging_dir, run_lock, write_atomic
from ..run.ownership import MANIFEST, check_folder_owned, check_parents, remove_listed, remove_owned, write_manifest
from ..run.safety import Output, check_outputs, is_inside, printable, read_file, real
from .results import (
    DUPLICATE_KINDS,
    Results,
    flagged_rows,
    kept_rows,
    load_results,
    relabelled_rows,
    usable_rows,
)

if TYPE_CHECKING:
    from .review_decisions import Verdicts

MODES = ("symlink", "copy", "csv")
FLAGGED_DIR = "_flagged"  # --keep-flagged puts flagged rows under OUT/_flagged/<given label>/


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_dataset` wrote."""

    out: Path  # the folder or table written
    mode: str  # symlink, copy or csv
    kept: int  # clean rows, exported under their given label
    relabelled: int  # flagged rows exported under predicted_label (--relabel)
    flagged: int  # flagged rows placed in _flagged/<given label>/ for review (--keep-flagged)
    dropped: int  # flagged rows not exported at all
    unusable: int  # unreadable rows, never exported
    reviewed: int = 0  # rows whose human decision (--decisions) replaced the automatic verdict
    duplicates: int = 0  # rows left out as copies of an exported row (--drop-duplicates), counted in dropped

    @property
    def exported(self) -> int:
        """Rows in the cleaned dataset (kept + relabelled), not counting _flagged/."""
        return self.kept + self.relabelled


def refuse_packed(metadata: dict[str, Any]) -> None:
    """Export writes image files; a Hugging Face dataset or WebDataset is filtered in its own format instead."""
    refusal = DatasetSpec.of(metadata).export_refusal()
    if refusal is not None:
        raise UsageError(refusal)


def _check_options(mode: str, relabel: float | None, keep_flagged: bool) -> None:
    if mode not in MODES:
        raise UsageError(f"{option('mode')} must be one of {', '.join(MODES)}, got {mode!r}")
    if relabel is not None and not 0.0 <= relabel <= 1.0:
        raise UsageError(f"{option('relabel')} is a probability between 0 and 1, got {relabel}")
    if keep_flagged and mode == "csv":
        raise UsageError(
            f"{option('keep_flagged', True)} writes a _flagged/ folder; it does not apply to {option('mode', 'csv')}"
        )


def export_dataset(
    results: str | os.PathLike[str] | Results,
    *,
    out: str | os.PathLike[str],
    mode: str = "symlink",
    relabel: float | None = None,
    keep_flagged: bool = False,
    overwrite: bool = False,
    dataset: str | os.PathLike[str] | None = None,
    decisions: str | os.PathLike[str] | Verdicts | None = None,
    drop_duplicates: bool = False,
    drop_outliers: bool = False,
) -> ExportSummary:
    """Write the cleaned dataset: the is_clean rows, optionally plus confident relabels and flagged rows.

    Args:
        results: a detect Parquet path, or a :class:`DetectResult`.
        out: ``symlink``/``copy``: a folder, written as ``OUT/<label>/<path below the class folder>``;
            ``csv``: a ``.csv`` or ``.parquet`` file with columns path (absolute), label, original_label,
            p_clean, relabelled.
        mode: ``symlink`` (absolute links to the source files), ``copy`` or ``csv``.
        relabel: a flagged usable row with ``p_predicted >= relabel`` is exported under its
            ``predicted_label`` instead of being dropped.
        keep_flagged: folder modes: the remaining flagged rows go to ``OUT/_flagged/<given label>/``.
        overwrite: replace what an earlier export wrote in ``out`` (the files its manifest lists; foreign
            files stay) or an earlier exported table. A non-empty folder without a manifest, or a file
            deft-clean did not write, is refused with or without it.
        dataset: where the images are now, if not where detect recorded them.
        decisions: a review CSV (``path,decision,label``, see :mod:`deft_clean.outputs.review_decisions`): a human keep,
            drop or relabel replaces the automatic verdict of its row.
        drop_duplicates: export one row per ``duplicate_group`` (the first in listing order) among the rows
            whose ``duplicate_kind`` is exact or near (a file without that column drops none).
        drop_outliers: leave out ``is_outlier`` rows. A human decision still wins over both.

    Raises:
        UsageError: a bad option, or an ``out`` that exists (without ``overwrite``) or overlaps the dataset.
        DataError: image files are missing, or a label or path cannot be written as a folder layout.
    """
    _check_options(mode, relabel, keep_flagged)
    if isinstance(results, (str, os.PathLike)):
        frame, metadata = load_results(results)
    else:
        frame, metadata = results.frame, results.metadata
    refuse_packed(metadata)
    labels = frame["label"].astype(str).tolist()  # a label fixed in the dataset since detect is refused, as train does
    root = checked_root(metadata, frame["path"].astype(str).tolist(), dataset, labels=labels)
    target = Path(out)
    _check_out(target, mode=mode)
    return _export(
        frame,
        metadata,
        root,
        target,
        results=results,
        mode=mode,
        relabel=relabel,
        keep_flagged=keep_flagged,
        overwrite=overwrite,
        dataset=dataset,
        decisions=decisions,
        drop_duplicates=drop_duplicates,
        drop_outliers=drop_outliers,
    )


def _export(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    root: Path,
    target: Path,
    *,
    results: Any,
    mode: str,
    relabel: float | None,
    keep_flagged: bool,
    overwrite: bool,
    dataset: Any,
    decisions: Any,
    drop_duplicates: bool,
    drop_outliers: bool,
) -> ExportSummary:
    """:func:`export_dataset` once the options and the results are read."""
    from .review_decisions import load_verdicts

    verdicts = load_verdicts(decisions, frame, metadata)
    if drop_duplicates:
        from .duplicate_groups import confirmed_copies

        frame = confirmed_copies(frame, root, metadata)  # the files, not the results' word, say what is a copy
    plan = plan_export(
        frame,
        relabel=relabel,
        keep_flagged=keep_flagged,
        verdicts=verdicts,
        drop_duplicates=drop_duplicates,
        drop_outliers=drop_outliers,
    )
    sources = _sources(
        plan,
        root,
        metadata,
        results=results,
        dataset=dataset,
        target=target,
        mode=mode,
        overwrite=overwrite,
        listed=frame["path"],
        decisions=decisions,
    )
    with run_lock(target):  # after the checks (the lock file sits beside the output); a second export fails at once
        if mode == "csv":
            _write_table(plan, sources, target)
        else:
            _write_folder(plan, sources, target, copy=mode == "copy", root=root)
    counts = Counter(plan["role"])
    usable_total = int(usable_rows(frame).sum())
    return ExportSummary(
        out=target,
        mode=mode,
        kept=counts["kept"],
        relabelled=counts["relabelled"],
        flagged=counts["flagged"],
        dropped=usable_total - counts["kept"] - counts["relabelled"] - counts["flagged"],
        unusable=int((~usable_rows(frame)).sum()),
        reviewed=0 if verdicts is None else verdicts.reviewed,
        duplicates=int(plan.attrs.get("duplicates", 0)),
    )


def _sources(
    plan: pd.DataFrame,
    root: Path,
    metadata: dict[str, Any],
    *,
    results: Any,
    dataset: Any,
    target: Path,
    mode: str,
    overwrite: bool,
    listed: pd.Series,
    decisions: Any,
) -> list[Path]:
    """The source file of every planned row, once ``target`` is known not to overwrite an input and every
    source exists.

    Inputs are every file the results list (exported or not), the results, the decisions and the table;
    the dataset root (an image folder, or a table's folder) takes no folder output at all, so that
    ``--overwrite`` can never replace a folder of source images.
    """
    sources = [_source(root, path) for path in plan["path"]]
    spec = DatasetSpec.of(metadata)
    table = spec.location if spec.table else None
    named = [p for p in (results, decisions, table) if isinstance(p, (str, os.PathLike)) and p]
    inputs = [*named, *(root / str(p) for p in listed)]
    folder_source = Path(dataset).is_dir() if dataset is not None else spec.folder
    datasets = [root] if folder_source or mode != "csv" else []
    output = Output(target, folder=mode != "csv", overwrite=overwrite, kind="export")
    check_outputs([output], inputs=inputs, datasets=datasets)
    missing = [p for p, s in zip(plan["path"], sources, strict=True) if not s.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) from the results are missing under {root}, e.g. {missing[:3]}; "
            f"pass {option('dataset')} if the dataset moved"
        )
    return sources


def plan_export(
    frame: pd.DataFrame,
    *,
    relabel: float | None = None,
    keep_flagged: bool = False,
    verdicts: Verdicts | None = None,
    drop_duplicates: bool = False,
    drop_outliers: bool = False,
) -> pd.DataFrame:
    """The rows to export, in listing order: path, label (new), original_label, p_clean, role.

    role is ``kept`` (is_clean), ``relabelled`` (flagged, ``p_predicted >= relabel``) or ``flagged``
    (the other flagged rows, with ``keep_flagged``). Unusable rows never appear. ``verdicts`` (human
    decisions) override: keep -> ``kept``, relabel -> ``relabelled`` (``kept`` if the label is unchanged),
    drop -> not exported, not even to _flagged/.
    """
    clean = kept_rows(frame)
    flagged = flagged_rows(frame)
    moved = relabelled_rows(frame, flagged, relabel)
    role = pd.Series(None, index=frame.index, dtype=object)
    role[clean] = "kept"
    role[moved] = "relabelled"
    if keep_flagged:
        role[flagged & ~moved] = "flagged"
    if drop_outliers and "is_outlier" in frame.columns:
        role[frame["is_outlier"].fillna(False).to_numpy(dtype=bool)] = None
    copies = pd.Series(False, index=frame.index)  # rows left out as copies of an exported row
    if drop_duplicates and "duplicate_group" in frame.columns:
        # Only exact and pixel-confirmed near copies go; a group from a file without duplicate_kind (features
        # alone, which group look-alike distinct images) is left whole.
        kind = frame["duplicate_kind"] if "duplicate_kind" in frame.columns else pd.Series(None, index=frame.index)
        group = frame["duplicate_group"].where(role.notna() & kind.isin(DUPLICATE_KINDS))
        copies = group.notna() & group.duplicated()
        role[copies] = None  # the first of each group stays
    label = frame["predicted_label"].where(moved, frame["label"]).astype(str)
    if verdicts is not None:
        keep, new = verdicts.apply(role.notna().to_numpy(), label.to_numpy(dtype=object))
        decided = verdicts.decided
        label = pd.Series(new, index=frame.index)
        same = new == frame["label"].astype(str).to_numpy()
        role[decided & keep] = np.where(same, "kept", "relabelled")[decided & keep]
        role[decided & ~keep] = None
    chosen = role.notna()
    rows = frame.loc[chosen]
    plan = pd.DataFrame(
        {
            "path": rows["path"].astype(str).to_numpy(),
            "label": label[chosen].to_numpy(),
            "original_label": rows["label"].astype(str).to_numpy(),
            "p_clean": rows["p_clean"].reset_index(drop=True),
            "role": role[chosen].to_numpy(),
        }
    )
    plan.attrs["duplicates"] = int((copies & ~chosen).sum())
    return plan


def _source(root: Path, path: str) -> Path:
    """The file a results path stands for; its real path must stay inside the dataset root."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise DataError(f"results path {printable(path)!r} is not a plain path below the dataset root {root}")
    source = root.joinpath(*parts)
    if not is_inside(real(source), real(root)):
        raise DataError(
            f"{printable(source)} links outside the dataset root {printable(root)}; export never reads such files"
        )
    return source


def _check_out(target: Path, *, mode: str) -> None:
    if target.is_symlink():
        raise UsageError(f"{option('out')} {target} is a symlink; give the real path")
    if mode == "csv":
        if target.suffix.lower() not in (".csv", ".parquet"):
            raise UsageError(
                f"{option('mode', 'csv')} writes a table: give {option('out')} a .csv or .parquet path, not {target}"
            )
        if target.is_dir():
            raise UsageError(
                f"{option('out')} {target} is a folder; {option('mode', 'csv')} needs a .csv or .parquet file path"
            )
        return
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option('out')} {target} is a file; {option('mode', mode)} writes a folder")


def _write_table(plan: pd.DataFrame, sources: list[Path], target: Path) -> None:
    table = pd.DataFrame(
        {
            "path": [str(s.absolute()) for s in sources],
            "label": plan["label"],
            "original_label": plan["original_label"],
            "p_clean": plan["p_clean"],
            "relabelled": (plan["role"] == "relabelled").to_numpy(),
        }
    )

    def write(tmp: Path) -> None:
        if target.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(table, preserve_index=False)
            marker = {**(arrow.schema.metadata or {}), b"deft_clean_export": b"1"}  # see run.ownership
            pq.write_table(arrow.replace_schema_metadata(marker), tmp)
        else:
            table.to_csv(tmp, index=False)
        apply_umask(tmp)

    write_atomic(target, write)


def _destinations(plan: pd.DataFrame) -> list[PurePosixPath]:
    """OUT-relative file paths: <label>/<path below its class folder>, made unique where two collide."""
    dests = []
    columns = (plan["path"], plan["label"], plan["original_label"], plan["role"])
    for path, label, original, role in zip(*columns, strict=True):
        parts = PurePosixPath(path).parts
        rest = parts[1:] if len(parts) > 1 and parts[0] == original else parts
        folder = (FLAGGED_DIR, _folder_name(original)) if role == "flagged" else (_folder_name(label),)
        dests.append(PurePosixPath(*folder, *rest))
    # A relabelled cat/001.jpg meets dog's own dog/001.jpg: both get a suffix from their source path.
    counts = Counter(dests)
    return [
        d.with_stem(f"{d.stem}-{hashlib.sha1(p.encode()).hexdigest()[:8]}") if counts[d] > 1 else d
        for d, p in zip(dests, plan["path"], strict=True)
    ]


def _folder_name(label: str) -> str:
    if label in ("", ".", "..") or label.startswith(".") or "/" in label or "\\" in label or "\0" in label:
        raise DataError(
            f"label {printable(label)!r} cannot be a folder name; export with {option('mode', 'csv')} instead"
        )
    if len(label.encode("utf-8", "surrogateescape")) > 255:
        raise DataError(
            f"label {printable(label[:40])!r}... is {len(label)} characters, too long for a folder name; "
            f"export with {option('mode', 'csv')} instead"
        )
    return label


def _copy(source: Path, file: Path, root: Path) -> None:
    """Copy through the reader's bounded read: a source swapped for a FIFO, a device or a link out is refused.

    The copy gets the umask's permissions (a new file of yours), not the source's mode; its times are kept.
    """
    try:
        data = read_file(source, root=root)
    except OSError as exc:
        raise DataError(f"cannot copy {printable(source)} ({exc}); nothing was exported") from None
    file.write_bytes(data)
    info = source.stat()
    os.utime(file, ns=(info.st_atime_ns, info.st_mtime_ns))


def _write_folder(plan: pd.DataFrame, sources: list[Path], target: Path, *, copy: bool, root: Path) -> None:
    """Build the folder next to ``target``, then move it in; a failure leaves any old ``target`` as it was.

    A new or empty ``target`` is swapped in whole. One that holds an earlier export (its manifest says what
    that export wrote; :func:`export_dataset` was given ``overwrite``) keeps every foreign file: only the
    listed files are removed before the new ones move in.
    """
    dests = _destinations(plan)
    names = [d.as_posix() for d in dests]
    earlier = check_folder_owned(target, overwrite=True, names=names)
    if earlier is not None:
        check_parents(target, names)
    staging, lock = make_staging_dir(target)
    try:
        for source, dest in zip(sources, dests, strict=True):
            file = staging.joinpath(*dest.parts)
            file.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                _copy(source, file, root)
            else:
                os.symlink(source.absolute(), file)
        write_manifest(staging, names)  # last: the folder is complete
        if earlier is None:
            if target.exists():
                target.rmdir()  # empty (checked); never a tree of someone else's files
            os.replace(staging, target)
        elif _only_listed(target, earlier):
            _swap(staging, target, earlier)
        else:
            _move_in(staging, target, names, earlier)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_disk_full(exc, target)
        raise
    finally:
        os.close(lock)
    shutil.rmtree(staging, ignore_errors=True)


def _only_listed(target: Path, earlier: list[str]) -> bool:
    """``target`` holds nothing but the earlier export's listed files, its manifest and folders."""
    listed = {*earlier, MANIFEST}
    folders = {p.as_posix() for e in earlier for p in PurePosixPath(e).parents if p.parts}
    for dirpath, dirnames, filenames in os.walk(target):
        here = Path(dirpath)
        if any((here / n).relative_to(target).as_posix() not in listed for n in filenames):
            return False
        if any((here / n).relative_to(target).as_posix() not in folders for n in dirnames):
            return False  # a folder of yours, or a link to one
    return True


def _swap(staging: Path, target: Path, earlier: list[str]) -> None:
    """Put the finished ``staging`` in ``target``'s place, then remove the earlier export's files: any
    failure before the swap leaves the old export whole, and the swap itself is two renames."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)  # a free name beside the target (the rename needs it absent)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    remove_owned(old)  # its listed files only: the manifest came with the folder, whose identity it records
    for dirpath, _, _ in sorted(os.walk(old), key=lambda w: -len(Path(w[0]).parts)):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only folders left empty


def _move_in(staging: Path, target: Path, names: list[str], earlier: list[str]) -> None:
    """Replace an earlier export's files in ``target`` by the staged ones; foreign files are left alone.

    The manifest first lists both sets, so that an interruption leaves nothing deft-clean wrote unlisted.
    """
    write_manifest(target, [*earlier, *names])
    remove_listed(target, earlier)
    for name in names:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, dest)
    write_manifest(target, names)
