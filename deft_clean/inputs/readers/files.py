"""Image files on disk: a class-per-folder tree, or a CSV/Parquet table of paths and labels.

Both list to paths relative to a root and read through :class:`deft_clean.inputs.readers.base.FileImages`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ...run.errors import DataError, UsageError, option
from ...run.safety import check_name, printable, real
from .base import IMAGE_EXTENSIONS, TABLE_EXTENSIONS, FileImages, Rows

MAX_DEPTH = 256  # folder levels below a class folder (or predict's input folder) that listing descends


def folder_rows(path: Path) -> Rows:
    """The rows of an image folder ``path/<class>/<image>`` (labels are the class folder names)."""
    root, paths, labels = _list_folder(path)
    return Rows(root, paths, labels, FileImages(root, paths), "folder", str(path.resolve()))


def loose_rows(paths: list[Path], *, path_col: str, label_col: str) -> Rows:
    """Inputs to predict, where labels are optional: one folder, one table, or image files.

    A folder lists every image below it (sorted by path), labelled by its first folder when every image is
    in one; a table is checked like detect's, its label column used if present; files have no labels.
    """
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0]
        files = sorted(walk_images(root, root))
        if not files:
            raise DataError(f"{root}: no images found")
        labels = [f.split("/", 1)[0] for f in files] if all("/" in f for f in files) else None
        return Rows(root, files, labels, FileImages(root, files), "folder", str(root.resolve()))
    if len(paths) == 1 and paths[0].suffix.lower() in TABLE_EXTENSIONS:
        frame = read_table(paths[0])
        if path_col not in frame.columns:
            raise DataError(f"{paths[0]}: no {path_col!r} column; columns are {list(frame.columns)}")
        unlabelled = pd.DataFrame({path_col: frame[path_col], "label": "?"})  # labels are optional here
        root, files, _ = _list_table(paths[0], path_col=path_col, label_col="label", frame=unlabelled)
        labels = [str(v) for v in frame[label_col]] if label_col in frame.columns else None
        return Rows(root, files, labels, FileImages(root, files), "table", str(paths[0].resolve()))
    not_images = [p for p in paths if p.is_dir() or p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not_images:
        raise UsageError(f"expected one folder, one table, or image files; got {not_images[0]}")
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    files = [p.resolve().relative_to(root).as_posix() for p in paths]
    return Rows(root, files, None, FileImages(root, files), "files", str(root))


def table_rows(path: Path, *, path_col: str, label_col: str) -> Rows:
    """The rows of a CSV/Parquet table; its paths are relative to the table's folder (or absolute inside it)."""
    root, paths, labels = _list_table(path, path_col=path_col, label_col=label_col)
    return Rows(root, paths, labels, FileImages(root, paths), "table", str(path.resolve()))


def _list_folder(root: Path) -> tuple[Path, list[str], list[str]]:
    resolved_root = real(root)
    entries = sorted(root.iterdir())
    for entry in entries:
        check_name(entry.name, root)
    class_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected {root}/<class>/<image>")
    loose = [f for f in entries if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()]
    if loose:
        logging.getLogger("deft_clean").warning(
            "%d image(s) at the top level of %s are ignored (e.g. %s); put them in a class folder",
            len(loose),
            printable(root),
            printable(loose[0].name),
        )
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in class_dirs:
        # A linked class folder is treated like a linked file: fine inside the root, refused outside it.
        if class_dir.is_symlink() and not _inside(real(class_dir), resolved_root):
            raise DataError(
                f"class folder {printable(class_dir)} links outside the dataset root {printable(root)}; "
                "refusing to read it (copy the folder in, or point detect at a folder that holds it)"
            )
        found = walk_images(class_dir, root)
        if not found:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths.extend(found)
        labels.extend([class_dir.name] * len(found))
    return root, paths, labels


def walk_images(folder: Path, root: Path) -> list[str]:
    """Image files below ``folder`` (links not followed into folders), as sorted paths relative to ``root``.

    Hidden files and folders are skipped. A linked file must resolve inside ``root``; a link loop lists
    (and then reads as an unusable row); a folder nested deeper than ``MAX_DEPTH`` is refused in one line
    instead of exhausting the stack.
    """
    resolved_root = real(root)
    base = len(folder.parts)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        if len(Path(dirpath).parts) - base >= MAX_DEPTH:
            raise DataError(
                f"{printable(folder)} has folders nested more than {MAX_DEPTH} deep (e.g. {printable(dirpath)[:200]}); "
                "flatten the dataset"
            )
        for name in dirnames:
            check_name(name, dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            check_name(name, dirpath)
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            file = Path(dirpath, name)
            if file.is_symlink() and not _inside(real(file), resolved_root):
                raise DataError(f"{printable(file)} links outside the dataset root {root}; refusing to read it")
            found.append(file.relative_to(root).as_posix())
    return found


def read_table(table: Path) -> pd.DataFrame:
    try:
        if table.suffix.lower() == ".csv":
            return pd.read_csv(table, dtype=str, keep_default_na=False)
        return pd.read_parquet(table)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{table}: cannot read table ({type(exc).__name__}: {exc})") from None


def require_columns(frame: pd.DataFrame, columns: Sequence[str], missing: str, hint: str, *, empty: str) -> None:
    """Refuse a table without ``columns`` (``missing`` starts the message, ``hint`` ends it) or without rows."""
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(f"{missing} {absent}; its columns are {[str(c) for c in frame.columns]} ({hint})")
    if len(frame) == 0:
        raise DataError(empty)


def _list_table(
    table: Path,
    *,
    path_col: str,
    label_col: str,
    frame: pd.DataFrame | None = None,
    root: Path | None = None,
    row0: int = 2,
) -> tuple[Path, list[str], list[str]]:
    """List a table; ``frame``/``root`` replace reading ``table`` (its name then only labels messages).

    ``row0`` is the number messages give the first row (2: the line after a CSV header).
    """
    frame = read_table(table) if frame is None else frame
    require_columns(
        frame,
        (path_col, label_col),
        f"{table}: missing column(s)",
        f"choose others with {option('path_col')}/{option('label_col')}",
        empty=f"{table}: the table has no rows",
    )
    raw_labels = frame[label_col]
    labels = ["" if pd.isna(v) else str(v).strip() for v in raw_labels]
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise DataError(f"{table}: {len(empty)} row(s) with an empty {label_col!r}, first at row {empty[0] + row0}")
    root = table.parent if root is None else root
    resolved_root = real(root)
    paths = []
    real_paths = []
    missing_files = []
    for row, value in enumerate(frame[path_col]):
        text = "" if pd.isna(value) else str(value)  # byte for byte: " a.png" and "a.png" are two files
        if not text:
            raise DataError(f"{table}: empty {path_col!r} at row {row + row0}")
        file = Path(text) if os.path.isabs(text) else root / text
        resolved = real(file)  # never raises on a link loop (the file then lists as missing)
        if not _inside(resolved, resolved_root):
            raise DataError(f"{table}: row {row + row0} path {text!r} resolves outside the dataset root {root}")
        if not os.path.exists(resolved):  # a FIFO, a device or a folder exists: an unusable row when read
            missing_files.append(text)
        real_paths.append(str(resolved))
        paths.append(resolved.relative_to(resolved_root).as_posix() if os.path.isabs(text) else Path(text).as_posix())
    check_unique(real_paths, table, shown=paths)
    if missing_files:
        raise DataError(
            f"{table}: {len(missing_files)} listed file(s) do not exist, e.g. {missing_files[:3]} "
            f"(paths are relative to {root})"
        )
    return root, paths, labels


def check_unique(paths: Sequence[str], table: Path, *, shown: Sequence[str] | None = None) -> None:
    """Refuse a table that lists one file twice (it would be trained twice and exported once).

    ``paths`` are compared (pass real paths to catch ``a/../a/x.png``); ``shown`` is what the message names.
    """
    seen: dict[str, int] = {}
    for row, path in enumerate(paths):
        if path in seen:
            name = (shown or paths)[row]
            raise DataError(
                f"{table}: {printable(name)} is listed twice (rows {seen[path] + 2} and {row + 2}); "
                "remove the duplicate rows"
            )
        seen[path] = row


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
