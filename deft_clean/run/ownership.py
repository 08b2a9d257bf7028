"""What deft-clean may delete or replace: only what it wrote itself.

A folder deft-clean writes (an export, a model folder, a ``--save-arrays`` folder, a run folder) carries a
manifest, ``.deft-clean-manifest.json``, listing the folder-relative paths of the files it wrote there.
``--overwrite`` removes those and nothing else; a non-empty folder without a manifest is never written
into. A single file (results, predictions, an HTML report, an exported table) is replaced only when it is
a regular file carrying deft-clean's own marker. The manifest is read as untrusted data: an entry that is
absolute, climbs out with ``..``, passes through a symlinked folder or names anything but a regular file
or a link is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import replace_atomic
from .errors import DataError, UsageError
from .errors import option as ref

MANIFEST = ".deft-clean-manifest.json"
FORMAT = "deft-clean-manifest"
VERSION = 2  # 2: records each entry and the folder's identity
MAX_MANIFEST_BYTES = 256 << 20  # an export of a few million files; a bigger one is not ours
HTML_MARKER = '<meta name="generator" content="deft-clean">'  # in the head of every HTML report
# a --mode csv export's header line: the marker of a CSV table deft-clean wrote
EXPORT_CSV_HEADER = "path,label,original_label,p_clean,relabelled"
# the Parquet metadata key of each kind of table deft-clean writes
PARQUET_KINDS = {b"deft_clean": "results", b"deft_clean_predict": "predictions", b"deft_clean_export": "export"}
PARQUET_KEYS = tuple(PARQUET_KINDS)


def write_manifest(folder: str | os.PathLike[str], files: Iterable[str | PurePosixPath]) -> Path:
    """Record (atomically) the folder-relative paths of the files deft-clean wrote in ``folder``, what each
    one is now (kind, size, inode and change time; a link's target) and the folder's own identity.

    ``--overwrite`` later removes an entry only while it is still that file, and trusts the manifest only in
    this folder (a manifest copied elsewhere lists nothing there). An entry not written yet (train lists the
    names it may write first) is recorded as pending: it is removed while it is a regular file or a link.
    """
    root = Path(folder)
    entries = sorted({PurePosixPath(f).as_posix() for f in files} - {MANIFEST})
    return _write(root, {entry: _record(root / entry) for entry in entries})


def _write(root: Path, records: dict[str, list[Any] | None]) -> Path:
    info = os.stat(root)
    data = {"format": FORMAT, "version": VERSION, "folder": [info.st_dev, info.st_ino], "files": sorted(records)}
    text = json.dumps({**data, "records": records}, indent=0) + "\n"
    return replace_atomic(root / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def note_written(path: Path) -> None:
    """Record a file deft-clean has just (re)written in a folder whose manifest lists it (a checkpoint saved
    again, a resumed run's weights): its own later writes never read as changes. Only that entry's record
    is updated; a damaged or foreign manifest is left alone."""
    folder = path.parent
    if path.name == MANIFEST or not os.path.isfile(folder / MANIFEST):
        return
    try:
        records = _load(folder)
    except (DataError, OSError):
        return
    if records is not None and path.name in records:
        _write(folder, {**records, path.name: _record(path)})


def _record(path: Path) -> list[Any] | None:
    """What ``path`` is now: ``["file", size, inode, ctime_ns]``, ``["link", target]``, or None (not there)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return ["link", os.readlink(path)]
    kind = "file" if stat.S_ISREG(info.st_mode) else "other"
    return [kind, info.st_size, info.st_ino, info.st_ctime_ns]


def read_manifest(folder: str | os.PathLike[str]) -> list[str] | None:
    """The entries of ``folder``'s manifest, or None when it has none (or one that is not a regular file).

    Raises:
        DataError: the manifest is damaged, lists a path that is not a plain relative path, or was written
            for another folder (copied in, or by a version that did not record its folder).
    """
    loaded = _load(Path(folder))
    return None if loaded is None else list(loaded)


def _load(folder: Path) -> dict[str, list[Any] | None] | None:
    """Entry -> its record (see :func:`write_manifest`) of ``folder``'s manifest; None without one."""
    path = folder / MANIFEST
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    if info.st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path} is {info.st_size} bytes, not a deft-clean manifest; remove the folder by hand")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{path} is damaged; remove the folder by hand or choose another") from None
    files = data.get("files") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise DataError(f"{path} is not a deft-clean manifest; remove the folder by hand or choose another")
    for entry in files:
        if not _plain(entry):
            raise DataError(
                f"{path} lists {entry[:200]!r}, which is not a plain path inside the folder; nothing removed"
            )
    here = os.stat(folder)
    records = data.get("records")
    if (
        data.get("version") != VERSION
        or data.get("folder") != [here.st_dev, here.st_ino]
        or not isinstance(records, dict)
        or set(records) != set(files)  # every entry recorded (null: listed before it was written)
        or not all(_valid_record(records[f]) for f in files)
    ):
        raise DataError(
            f"{path} was not written for this folder (copied in, or by an earlier deft-clean); deft-clean removes "
            "nothing it lists: remove the folder by hand or choose another"
        )
    return {f: records[f] for f in files}


def _valid_record(record: Any) -> bool:
    if record is None:
        return True
    if not isinstance(record, list) or not record:
        return False
    if record[0] == "link":
        return len(record) == 2 and isinstance(record[1], str)
    return len(record) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in record[1:])


def check_unchanged(folder: Path, entries: Iterable[str]) -> None:
    """Refuse (nothing removed) when a listed entry is no longer the file deft-clean wrote: a file edited or
    replaced since (a copy you edited, a link you replaced by a real file, a file turned into a folder).

    Raises:
        DataError: one line naming the first changed entry.
    """
    records = _load(folder) or {}
    for entry in entries:
        if entry not in records:
            continue
        recorded, now = records[entry], _record(folder / entry)
        if now is None or (recorded is None and now[0] in ("file", "link")) or now == recorded:
            continue
        if recorded is None:
            what = "is no longer a file or a link"
        elif now[0] != recorded[0]:
            what = f"was a {recorded[0]} and is now a {'folder' if _is_real_dir(folder / entry) else now[0]}"
        else:
            what = "was changed or replaced"
        raise DataError(
            f"{str(folder / entry)[:300]!r} {what} since deft-clean wrote it; --overwrite removes only "
            "its own files, so nothing was removed: move it out of the folder or choose another"
        )


def _plain(entry: str) -> bool:
    parts = PurePosixPath(entry).parts
    return (
        bool(parts)
        and not entry.startswith("/")
        and "\\" not in entry
        and "\0" not in entry
        and all(p not in ("", ".", "..") for p in parts)
    )


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def owned_entry(folder: Path, entry: str) -> Path | None:
    """``folder/entry`` when it is a regular file or a link reached through real folders only, else None."""
    parts = PurePosixPath(entry).parts
    current = folder
    for part in parts[:-1]:
        current = current / part
        if not _is_real_dir(current):
            return None  # missing, or a link or a file in the way: never followed
    target = current / parts[-1]
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return None
    return target if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else None


def remove_owned(folder: str | os.PathLike[str]) -> int:
    """Remove the files ``folder``'s manifest lists, any folder left empty by that, and the manifest; foreign
    files stay. Returns how many files were removed."""
    root = Path(folder)
    listed = read_manifest(root)
    if listed is None:
        return 0
    removed = remove_listed(root, listed)
    with contextlib.suppress(FileNotFoundError):
        (root / MANIFEST).unlink()
    return removed


def remove_listed(root: Path, entries: Iterable[str]) -> int:
    """Remove ``entries`` (validated manifest paths) below ``root``, then the folders they leave empty."""
    entries = list(entries)
    check_unchanged(root, entries)  # all of them first: a refusal removes nothing
    removed, parents = 0, set()
    for entry in entries:
        target = owned_entry(root, entry)
        if target is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            removed += 1
        parents.update(PurePosixPath(entry).parents)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if parent.parts and _is_real_dir(root / parent):
            with contextlib.suppress(OSError):
                (root / parent).rmdir()  # only when empty: a foreign file keeps its folder
    return removed


def check_parents(folder: Path, entries: Iterable[str], *, option: str = "out") -> None:
    """Refuse when a folder on the way to an entry is a link or a file: writing through it would land outside."""
    seen: set[PurePosixPath] = set()
    for entry in entries:
        for parent in PurePosixPath(entry).parents:
            if not parent.parts or parent in seen:
                continue
            seen.add(parent)
            path = folder / parent
            if os.path.lexists(path) and not _is_real_dir(path):
                raise UsageError(
                    f"{ref(option)} {folder}: {parent} is not a folder deft-clean made (a link or a file); "
                    "move it or choose another folder"
                )


def check_folder_owned(
    folder: str | os.PathLike[str], *, option: str = "out", overwrite: bool = False, names: Iterable[str] = ()
) -> list[str] | None:
    """Refuse to write into a non-empty folder that deft-clean did not write; returns its manifest's entries.

    A missing or empty folder passes (None). One with a manifest passes only with ``overwrite`` (its listed
    files will be replaced); ``names``, the paths this command writes there, may not be foreign files.

    Raises:
        UsageError: the folder holds files and no manifest (never suggests ``--overwrite``), or it holds an
            earlier output and ``overwrite`` is not given.
    """
    path = Path(folder)
    if not _is_real_dir(path):
        return None
    try:
        if not any(path.iterdir()):
            return None
    except OSError as exc:
        raise UsageError(f"{ref(option)} {folder}: cannot list the folder ({exc.strerror})") from None
    entries = read_manifest(path)
    if entries is None:
        raise UsageError(
            f"{ref(option)} {folder} is not empty and deft-clean did not write it (no {MANIFEST}); "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise UsageError(f"{ref(option)} {folder} holds an earlier output; pass {ref('overwrite', True)} to replace it")
    check_unchanged(path, entries)
    listed = set(entries)
    for name in names:
        if name not in listed and (os.path.lexists(path / name)):
            raise UsageError(
                f"{ref(option)} {folder}: {name} is not a file deft-clean wrote there; move it or choose another folder"
            )
    return entries


def check_file_owned(
    path: str | os.PathLike[str], *, option: str = "out", overwrite: bool = False, kind: str | None = None
) -> None:
    """Refuse to replace anything at ``path`` but a regular file with deft-clean's marker (and only with
    ``overwrite``): a device, a FIFO, a folder, a link or a foreign file stays as it is. With ``kind``
    (``"results"``, ``"predictions"``, ``"export"``, ``"report"``) only a file of that kind is replaced: a
    report never replaces the results or predictions it was asked to sit beside."""
    target = Path(path)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise UsageError(f"{ref(option)} {path} is a folder; pass a file path")
    if not stat.S_ISREG(mode):
        what = "a symlink" if stat.S_ISLNK(mode) else "not a regular file (a device, a FIFO or a socket)"
        raise UsageError(f"{ref(option)} {path} is {what}; deft-clean never replaces it, choose another path")
    found = written_kind(target)
    if found is None:
        raise UsageError(
            f"{ref(option)} {path} exists and is not a file deft-clean wrote; deft-clean never replaces it, "
            "choose another path"
        )
    if kind is not None and found != kind:
        raise UsageError(
            f"{ref(option)} {path} holds deft-clean {found}, not {kind}; deft-clean replaces a file only with "
            "one of the same kind, choose another path"
        )
    if not overwrite:
        raise UsageError(f"{ref(option)} {path} exists; pass {ref('overwrite', True)} to replace it")


def written_kind(path: Path) -> str | None:
    """What deft-clean wrote at regular file ``path`` (``"results"``, ``"predictions"``, ``"export"``,
    ``"report"``), by its marker; ``None`` for anything else (a link, a device, a foreign file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        head = handle.read(8192)
        if head.startswith(b"PAR1"):
            return _parquet_kind(handle)
    if head.lstrip().lower().startswith(b"<!doctype html"):
        return "report" if HTML_MARKER.encode() in head else None
    return "export" if head.split(b"\n", 1)[0].rstrip(b"\r") == EXPORT_CSV_HEADER.encode() else None


def _parquet_kind(handle: object) -> str | None:
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(handle).metadata or {}
    except Exception:  # noqa: BLE001 - a damaged or foreign file is simply not ours
        return None
    # an export table keeps its results' metadata beside its own key: the export key decides
    for key in (b"deft_clean_export", b"deft_clean_predict", b"deft_clean"):
        if key in metadata:
            return PARQUET_KINDS[key]
    return None
